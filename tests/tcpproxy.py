"""A TCP proxy on a free loopback port that can take its upstream offline: an S3 outage on demand.

Stopping moto itself would lose its (in-memory) buckets; cutting the proxy drops every open
connection and refuses new ones, which is what a client sees when an S3 endpoint goes away.
"""

from __future__ import annotations

import socket
import threading

from simgan_ray.runtime.session import free_port


class TcpProxy:
    def __init__(self, upstream_port: int) -> None:
        self.upstream = ("127.0.0.1", upstream_port)
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.online = threading.Event()
        self.online.set()
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._server = socket.create_server(("127.0.0.1", self.port))
        self._stopped = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stopped:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            if not self.online.is_set():
                client.close()  # the endpoint is down: connection reset
                continue
            try:
                upstream = socket.create_connection(self.upstream)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns |= {client, upstream}
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while chunk := src.recv(65536):
                dst.sendall(chunk)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                self._close(s)

    def _close(self, s: socket.socket) -> None:
        with self._lock:
            self._conns.discard(s)
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        s.close()

    def cut(self) -> None:
        """Go offline: drop every open connection, refuse new ones until `restore`."""
        self.online.clear()
        with self._lock:
            conns = list(self._conns)
        for s in conns:
            self._close(s)

    def restore(self) -> None:
        self.online.set()

    def stop(self) -> None:
        self._stopped = True
        self.cut()
        self._server.close()
