"""Machines on loopback for `ray up`: one SSH server per loopback address (127.0.0.1, 127.0.0.2, ...),
each in its own PID namespace with its own home, standing in for separate machines.

Why a PID namespace each: the launcher runs `ray stop` on its nodes (before every `ray start`, and
in `ray down`), which stops every Ray process it can see. In its own namespace a node's `ray stop`
sees that node's processes only: not the test session's Ray, nor (on the worker) the head's.
Stopping a machine kills the namespace's first process (its sshd), and with it, by the kernel,
everything the machine started: nothing of a test outlives it.

Ray's launcher has no SSH port setting (its `auth` section has none, and the head's copy of the
config drops `ssh_proxy_command`), so machines listen on port 22 of their address or, as here, on a
free port named by an `ssh` on PATH (`bin/ssh`: ssh -p PORT), as a user's ~/.ssh/config would.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from simgan_ray.runtime.session import free_port

SSHD = "/usr/sbin/sshd"  # an absolute path: sshd re-executes itself


def pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def cmdline(pid: int) -> str:
    """A process's command line, "" once it is gone."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def missing() -> str | None:
    """Why machines cannot be made here (a missing program, no root for PID namespaces), or None."""
    for program, package in ((SSHD, "openssh-server"), ("ssh", "openssh-client"), ("ssh-keygen", "openssh-client"),
                             ("rsync", "rsync"), ("unshare", "util-linux"), ("mount", "mount")):
        if not shutil.which(program):
            return f"no {program} (Debian package {package}; .ci/run installs it)"
    if os.geteuid() != 0:
        return "PID namespaces (unshare --pid) and an sshd that logs users in need root"
    return None


class Machines:
    """`names`: {name: loopback address}. Under `root` (short: Ray's socket paths live under it):
    keys, each machine's home `root/<name>` (HOME of its SSH sessions) and sshd log, and `bin/ssh`.
    `env`: the environment `ray up` / `ray down` run with (`bin/` first on PATH)."""

    def __init__(self, names: dict[str, str], root: Path, home_env: dict[str, str]) -> None:
        self.root = root
        self.port = free_port()
        self.procs: dict[str, subprocess.Popen] = {}
        self.namespaces: dict[str, str] = {}
        self.key = root / "client_key"
        self.homes = {name: root / name for name in names}
        ssh = shutil.which("ssh")
        (root / "bin").mkdir()
        (root / "bin" / "ssh").write_text(f'#!/bin/sh\nexec {ssh} -p {self.port} "$@"\n')
        (root / "bin" / "ssh").chmod(0o755)
        self.env = {**os.environ, "PATH": f"{root / 'bin'}{os.pathsep}{os.environ['PATH']}"}
        for key in (root / "host_key", self.key):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
        (root / "authorized_keys").write_text(self.key.with_suffix(".pub").read_text())
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation dir (its service makes it)
        try:
            for name, address in names.items():
                self._start(name, address, home_env)
        except BaseException:
            self.stop()
            raise

    def _start(self, name: str, address: str, home_env: dict[str, str]) -> None:
        home = self.homes[name]
        home.mkdir()
        # The machine's own environment, as its ~/.bashrc would set it (the launcher sources it first).
        exports = {"PATH": f"{self.root / 'bin'}:$PATH", "RAY_TMPDIR": str(home / "tmp"), **home_env}
        (home / ".bashrc").write_text("".join(f"export {k}={v}\n" for k, v in exports.items()))
        # This user's home on the machine: /etc/passwd of its mount namespace says so, for sshd (HOME,
        # the working directory) and for ssh (which expands `-i ~/ray_bootstrap_key.pem` from it).
        passwd = self.root / f"passwd-{name}"
        entries = [line.split(":") for line in Path("/etc/passwd").read_text().splitlines()]
        for entry in entries:
            if entry[2] == str(os.getuid()):
                entry[5] = str(home)
        passwd.write_text("".join(":".join(entry) + "\n" for entry in entries))
        config = self.root / f"sshd-{name}.conf"
        config.write_text("\n".join([
            f"ListenAddress {address}:{self.port}", f"HostKey {self.root / 'host_key'}",
            f"AuthorizedKeysFile {self.root / 'authorized_keys'}", "PidFile none", "UsePAM no",
            "StrictModes no",  # the keys live under /tmp
            "PermitRootLogin prohibit-password", "PasswordAuthentication no", "KbdInteractiveAuthentication no", ""]))
        log = open(self.root / f"sshd-{name}.log", "ab")
        # --kill-child: when unshare dies, so does sshd, the namespace's first process, and with it the namespace.
        proc = subprocess.Popen(["unshare", "--pid", "--fork", "--mount-proc", "--kill-child", "sh", "-c",
                                 'mount --bind "$0" /etc/passwd && exec "$@"', passwd, SSHD, "-D", "-e", "-f", config],
                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.procs[name] = proc
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection((address, self.port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"sshd for {name} did not start; see {self.root}/sshd-{name}.log") from None
                time.sleep(0.1)
        self.namespaces[name] = os.readlink(f"/proc/{proc.pid}/ns/pid_for_children")

    def processes(self, name: str) -> list[str]:
        """The command lines of the processes running on machine `name` now."""
        found = []
        for pid in pids():
            try:
                if os.readlink(f"/proc/{pid}/ns/pid") == self.namespaces[name]:
                    found.append(cmdline(pid))
            except OSError:  # gone meanwhile
                pass
        return found

    def stop(self) -> None:
        """Kill every machine's namespace (unshare, then by --kill-child its sshd, then the kernel the rest)."""
        for name, proc in self.procs.items():
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            deadline = time.monotonic() + 10
            while name in self.namespaces and self.processes(name) and time.monotonic() < deadline:
                time.sleep(0.1)

    def __enter__(self) -> Machines:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
