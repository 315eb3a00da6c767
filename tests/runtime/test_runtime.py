"""The embedded default's local Ray: what it listens on, and that its HTTP APIs want the token."""

import socket
import struct
import urllib.error
import urllib.request
from pathlib import Path

import pytest


def listening_addresses(port: int) -> set[str]:
    """The local addresses with a TCP socket listening on `port` (Linux /proc/net/tcp and tcp6)."""
    found = set()
    for table, family in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
        path = Path("/proc/net") / table
        for line in path.read_text().splitlines()[1:] if path.exists() else []:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                raw = bytes.fromhex(address)  # the kernel writes each 32-bit word in host order
                raw = b"".join(struct.pack("=I", int.from_bytes(raw[i:i + 4], "big")) for i in range(0, len(raw), 4))
                found.add(socket.inet_ntop(family, raw))
    return found


def test_local_ray_serves_its_http_apis_on_loopback_only_and_wants_the_token(ray_session):
    # start_local_ray hands the dashboard's address to every worker (Train's placement-group cleaner).
    url = ray_session.get_runtime_context().runtime_env["env_vars"]["RAY_API_SERVER_ADDRESS"]
    port = int(url.rsplit(":", 1)[1])
    assert listening_addresses(port) == {"127.0.0.1"}  # the dashboard, Jobs and State APIs: loopback only
    with pytest.raises(urllib.error.HTTPError) as refused:  # no token sent
        urllib.request.urlopen(f"{url}/api/jobs/", timeout=10)
    assert refused.value.code == 401


def test_a_dry_run_counts_the_gpus_as_ray_would(monkeypatch):
    from simgan_ray.runtime.session import _local_gpus

    for visible, count in (("0,1", 2), ("3", 1), ("", 0), ("NoDevFiles", 0)):
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
        assert _local_gpus() == count, visible
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert _local_gpus() == len([p for p in Path("/dev").glob("nvidia*") if p.name[6:].isdigit()])
