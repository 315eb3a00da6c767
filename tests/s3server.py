"""A real S3 API server on loopback for tests and benchmarks: moto_server on a free port,
started as a child process and stopped by its PID."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from simgan_ray.runtime.session import free_port

# Fake credentials for the local server; set before any Ray worker starts so that workers
# inherit them. Instance-metadata lookups are disabled so that nothing waits on a network call.
FAKE_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "simgan-test-key",
    "AWS_SECRET_ACCESS_KEY": "simgan-test-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}


def use_fake_credentials() -> None:
    for key, value in FAKE_CREDENTIALS.items():
        os.environ.setdefault(key, value)


class MotoServer:
    def __init__(self, require_auth: bool = False) -> None:
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        env = dict(os.environ)
        if require_auth:
            env["INITIAL_NO_AUTH_ACTION_COUNT"] = "0"  # every request must carry known IAM keys
        binary = Path(sys.executable).with_name("moto_server")
        self.proc = subprocess.Popen(
            [str(binary), "-H", "127.0.0.1", "-p", str(self.port)],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(self.endpoint, timeout=1)
                break
            except OSError as e:
                if getattr(e, "code", None):  # an HTTP error status: the server is up
                    break
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"moto_server did not start on port {self.port}") from e
                time.sleep(0.2)

    def make_bucket(self, name: str) -> str:
        import pyarrow.fs as pafs

        fs = pafs.S3FileSystem(endpoint_override=f"127.0.0.1:{self.port}", scheme="http",
                               region="us-east-1", allow_bucket_creation=True)
        fs.create_dir(name)
        return f"s3://{name}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
