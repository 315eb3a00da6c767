"""Plain-text progress lines for long work: readable in a terminal and in CI / job logs alike."""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager


class Progress:
    def __init__(self, total: int, what: str, every_s: float = 2.0) -> None:
        self.total, self.what, self.every_s = total, what, every_s
        self.done = 0
        self.start = self.last = time.monotonic()

    def update(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if now - self.last >= self.every_s or self.done >= self.total:
            self.last = now
            elapsed = now - self.start
            rate = self.done / elapsed if elapsed > 0 else 0.0
            eta = (self.total - self.done) / rate if rate > 0 else float("nan")
            print(
                f"{self.what}: {self.done}/{self.total} ({100 * self.done / max(self.total, 1):.0f}%)"
                f" {rate:.1f}/s, {elapsed:.0f}s elapsed, eta {eta:.0f}s",
                file=sys.stderr,
                flush=True,
            )


@contextmanager
def progress(total: int, what: str):
    yield Progress(total, what)
