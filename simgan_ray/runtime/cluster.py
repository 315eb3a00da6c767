"""Running a command on a Ray cluster: find the cluster's Jobs API, submit, follow.

Without `--cluster`/`--address` every command runs on a local Ray in its own process (the embedded
default). With them, the CLI validates and resolves the command's config here, then submits the
same command as a Ray Job: entrypoint `python -m simgan_ray <command> ...`, a runtime env whose
working dir holds the resolved config files and whose `py_modules` carries this package (so the
cluster runs the code you submitted from), then follows the job's logs to its exit status.

Credentials never travel with a job: the cluster's nodes read s3:// data with their own (instance
role / service account / environment) credentials.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from simgan_ray.common.errors import SimganError, first_line
from simgan_ray.common.yamlfiles import read_yaml
from simgan_ray.storage import is_local, normalize

PACKAGE = Path(__file__).parents[1]  # simgan_ray/, shipped with every job (`py_modules`)

DEFAULT_DASHBOARD_PORT = 8265
_DASHBOARD_PORT = re.compile(r"--dashboard-port[= ](\d+)")


def _ray_schema() -> dict:
    import ray.autoscaler

    return json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())


def _schema_error(e) -> str:
    """A jsonschema ValidationError as `dotted.field: why`, on one line."""
    field = ".".join(str(p) for p in e.absolute_path) or "(top level)"
    return f"{field}: {' '.join(e.message.split())}"


def load_cluster(path: str | Path) -> dict:
    """A Ray cluster-launcher YAML, checked as `ray up` checks it (Ray's schema, then the launcher's
    own preparation and validation) plus what submitting needs (a head) -> the config as `ray up`
    resolves it (Ray's defaults filled in); a SimganError naming the file (and field) otherwise."""
    import jsonschema

    from simgan_ray.runtime.rayinternals import launcher_checks  # imports Ray: at use

    cfg = read_yaml(path, "cluster config")
    try:  # first on the file as written, so that an error names the user's field
        jsonschema.validate(cfg, _ray_schema())
    except jsonschema.ValidationError as e:
        raise SimganError(f"{path}: {_schema_error(e)}") from None
    provider = cfg["provider"]
    if provider["type"] == "local" and not provider.get("head_ip"):
        raise SimganError(f"{path}: provider.head_ip: a provider: local cluster needs its head's address")
    try:
        cfg = launcher_checks(cfg)
    except jsonschema.ValidationError as e:
        raise SimganError(f"{path}: {_schema_error(e)} (with Ray's defaults filled in)") from None
    except Exception as e:  # Ray's own refusal (ClickException, ValueError, ...), as `ray up` would stop on it
        raise SimganError(f"{path}: `ray up` would refuse it: {first_line(e)}") from None
    if not any("ray start" in c and "--head" in c for c in cfg["head_start_ray_commands"]):
        raise SimganError(f"{path}: head_start_ray_commands: no `ray start --head` command, so no head")
    return cfg


def dashboard_port(cfg: dict) -> int:
    """The head's dashboard (Jobs API) port: --dashboard-port of its `ray start --head`, or Ray's default."""
    for command in cfg["head_start_ray_commands"]:
        if "--head" in command and (m := _DASHBOARD_PORT.search(command)):
            return int(m.group(1))
    return DEFAULT_DASHBOARD_PORT


_JOBS_API = re.compile(r"^(https?|ray)://[^/\s]+")


def jobs_address(cluster: str | Path | None, address: str | None) -> str | None:
    """Where to submit, in the order Ray's own tools use: --address (http://host:port of the
    dashboard, or ray://host:port of a Ray Client server), else RAY_ADDRESS when it names such an
    API (the Ray Jobs CLI's convention; inside a Ray Job, RAY_ADDRESS is the cluster's host:port,
    which the job joins instead), else the head of --cluster, else None (run on a local Ray)."""
    if address:
        if not _JOBS_API.match(address):
            raise SimganError(f"--address {address!r}: expected http://HOST:PORT (dashboard) or ray://HOST:PORT")
        return address
    env = os.environ.get("RAY_ADDRESS", "")
    if _JOBS_API.match(env):
        if cluster is not None:
            print(f"note: RAY_ADDRESS={env} comes before --cluster {cluster}: submitting there", file=sys.stderr)
        return env
    if cluster is None:
        return None
    cfg = load_cluster(cluster)
    if cfg["provider"]["type"] == "local":
        host = cfg["provider"]["head_ip"]
    else:  # a cloud cluster: the launcher's SDK asks the provider where its head node is
        from ray.autoscaler.sdk import get_head_node_ip

        try:
            host = get_head_node_ip(str(cluster))
        except ImportError as e:  # Ray's message names the provider's SDK package
            extra = "; the aws extra has it: pip install 'simgan-ray[aws]'" if cfg["provider"]["type"] == "aws" else ""
            raise SimganError(f"{cluster}: {first_line(e).rstrip('.')}{extra}") from None
        except Exception as e:  # the provider's API: no such cluster, no credentials, no network
            raise SimganError(f"{cluster}: the launcher found no head ({first_line(e)}); is the cluster up "
                              "(`ray up`)? or pass --address http://HEAD:8265") from None
    return f"http://{host}:{dashboard_port(cfg)}"


@dataclass
class JobSpec:
    """A command to run on the cluster: argv after `simgan-ray`, and files its working dir holds."""

    argv: list[str]
    files: dict[str, str]  # name -> text (the resolved config files argv refers to)


def auth_headers() -> dict[str, str]:
    """The token a client of a Ray 2.60 cluster sends, found as Ray documents it
    (docs.ray.io, ray-security/token-auth): RAY_AUTH_MODE=disabled sends none; otherwise
    RAY_AUTH_TOKEN, else the file RAY_AUTH_TOKEN_PATH names (unreadable or empty: an error, as for
    Ray), else ~/.ray/auth_token. With RAY_AUTH_MODE=token a token must be found; unset, one is
    sent when found (as `ray start` / `ray.init` do in 2.60) and none otherwise."""
    mode = os.environ.get("RAY_AUTH_MODE", "").strip().lower()
    if mode not in ("", "token", "disabled"):
        raise SimganError(f"RAY_AUTH_MODE={mode!r}: Ray knows 'token' and 'disabled'")
    if mode == "disabled":
        return {}
    token = os.environ.get("RAY_AUTH_TOKEN", "").strip()
    if not token and (path := os.environ.get("RAY_AUTH_TOKEN_PATH")):
        try:
            token = Path(path).expanduser().read_text().strip()
        except OSError as e:
            raise SimganError(f"RAY_AUTH_TOKEN_PATH={path}: {e.strerror or first_line(e)}") from None
        if not token:
            raise SimganError(f"RAY_AUTH_TOKEN_PATH={path}: the file is empty")
    if not token:
        default = Path.home() / ".ray" / "auth_token"
        token = default.read_text().strip() if default.is_file() else ""
    if not token and mode == "token":
        raise SimganError("RAY_AUTH_MODE=token but no token: set RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH, or put the "
                          "cluster's token in ~/.ray/auth_token")
    return {"Authorization": f"Bearer {token}"} if token else {}


def _client(address: str):
    """A Jobs API client of the cluster at `address` (its constructor asks the cluster's version:
    it changes nothing there); a SimganError when nothing, or no cluster that takes our token, answers."""
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    headers = auth_headers()
    try:  # headers: a public argument, so no Ray-private call decides what is sent
        client = JobSubmissionClient(address, headers=headers)
    except AuthenticationError as e:  # 401: no token sent; 403: not this cluster's
        why = "refused the token sent" if headers else "wants an auth token"
        raise SimganError(f"{address}: the cluster {why} ({first_line(e).rstrip(':')}): set RAY_AUTH_TOKEN (or "
                          "RAY_AUTH_TOKEN_PATH) to the head's ~/.ray/auth_token (cluster/README.md, Auth)") from None
    except Exception as e:  # connection refused, wrong port, not a Ray dashboard
        raise SimganError(f"{address}: no Ray Jobs API there: {str(e).splitlines()[0]}") from None
    return client


def submit(address: str, job: JobSpec, wait: bool, echo) -> int:
    """Submit `job` to the cluster at `address`; with `wait`, print its logs as they come and
    return its exit status (0 succeeded, 1 failed or stopped). Without, return 0 once submitted."""
    from ray.job_submission import JobStatus

    entrypoint = shlex.join(["python", "-m", "simgan_ray", *job.argv])
    client = _client(address)
    with tempfile.TemporaryDirectory() as wd:
        for name, text in job.files.items():
            (Path(wd) / name).write_text(text)
        job_id = client.submit_job(
            entrypoint=entrypoint,
            submission_id=f"simgan-{job.argv[0]}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}",
            runtime_env={"working_dir": wd, "py_modules": [str(PACKAGE)]},
            metadata={"simgan_ray.command": job.argv[0]},
        )
    echo(f"submitted job {job_id} to {address}: {entrypoint}")
    if not wait:
        echo(f"follow it: ray job logs --follow {job_id} --address {address}; "
             f"stop it: ray job stop {job_id} --address {address}")
        print(job_id, flush=True)  # the result, alone on stdout: JOB=$(simgan-ray train --cluster c.yaml --no-wait)
        return 0

    async def follow() -> None:
        async for lines in client.tail_job_logs(job_id):
            sys.stdout.write(lines)
            sys.stdout.flush()

    try:
        asyncio.run(follow())
    except KeyboardInterrupt:
        echo(f"stopped following; job {job_id} goes on (ray job stop {job_id} --address {address} ends it)")
        return 130
    status = client.get_job_status(job_id)
    while not status.is_terminal():  # the log stream can end a moment before the status does
        time.sleep(0.5)
        status = client.get_job_status(job_id)
    if status == JobStatus.SUCCEEDED:
        echo(f"job {job_id} succeeded")
        return 0
    info = client.get_job_info(job_id)
    why = (info.message or "").strip().splitlines()
    echo(f"job {job_id} {status.value.lower()}" + (f": {why[-1]}" if why else ""))
    return info.driver_exit_code or 1


def plan_submission(cluster: str | Path | None, address: str | None, locations: dict[str, str | None],
                    echo) -> str | None:
    """A dry run's `submit_if_asked`, submitting nothing -> where the command would run, or None when
    it would run here: the cluster's Jobs API must answer (and take the token); each of
    `locations` (option or field -> value) that is a local path is noted: the cluster's nodes see
    their own disks, not this machine's."""
    target = jobs_address(cluster, address)
    if target is None:
        return None
    _client(target)
    for name, value in locations.items():
        if value and is_local(value):
            echo(f"note: {name} {value} is a local path: the cluster's nodes will not see this machine's files")
    return f"as a Ray Job on the cluster at {target}"


def submit_if_asked(cluster: str | Path | None, address: str | None, wait: bool, job, echo) -> None:
    """With --cluster/--address (or RAY_ADDRESS naming a Jobs API), submit job() (a JobSpec) there
    and exit with the job's status; otherwise return, and the command runs here."""
    target = jobs_address(cluster, address)
    if target is not None:
        # sys.exit, not typer.Exit: a 130 (Ctrl-C stopped following; the job goes on, as submit
        # said) must not read as this process's own work interrupted (cli.main).
        sys.exit(submit(target, job(), wait, echo))


# Options naming data locations: made absolute before a job leaves for a cluster, whose working
# directory differs from yours.
LOCATION_OPTIONS = {"out", "src", "synthetic", "refiner", "refined", "real_train", "real_test", "real_pool",
                    "reference"}


def command_argv(ctx, echo) -> list[str]:
    """A typer command's own options as given (cluster options left out), for its job on a cluster."""
    argv = [ctx.info_name]
    for param in ctx.command.params:
        value = ctx.params[param.name]
        if param.name in ("cluster", "address", "wait") or value is None:
            continue
        if param.is_flag:
            argv += [param.opts[0]] if value else param.secondary_opts[:1]
            continue
        for v in value if param.multiple else [value]:
            v = str(v)
            if param.name in LOCATION_OPTIONS:
                v = normalize(v)
                if is_local(v):
                    echo(f"note: {param.opts[0]} {v} is a local path: it must exist on the cluster's nodes")
            argv += [param.opts[0], v]
    return argv
