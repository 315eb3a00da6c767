"""Plain-text progress lines for long work, on stderr: readable in a terminal and in CI / job logs alike."""

from __future__ import annotations

import json
import sys
import threading
import time
from contextlib import contextmanager

from simgan_ray import storage
from simgan_ray.common.errors import SimganError


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


# The numbers a training progress line shows, in this order (all of them are in metrics.jsonl and TensorBoard).
KEY_METRICS = ("loss_r_adv", "loss_r_reg", "loss_d", "d_acc_real", "d_acc_refined", "probe_fd", "probe_label_acc",
               "rollbacks")


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else \
        f"{seconds // 60}:{seconds % 60:02d}"


def report_line(m: dict, total: int, elapsed: float, per_step: float | None) -> str:
    """One report as a progress line: step/total, phase, elapsed, ETA (from `per_step` seconds per
    step, once known), images/s and the key metrics."""
    eta = f"ETA {_clock(per_step * (total - m['step']))}" if per_step is not None else "ETA -"
    numbers = " ".join(f"{k}={m[k]:.4g}" for k in KEY_METRICS if k in m)
    done = f"step {m['step']}/{total} {100 * m['step'] / max(total, 1):.0f}%"
    speed = f"{m.get('images_per_s', 0):.0f} images/s"
    return f"{done} {m['phase']} | {_clock(elapsed)} elapsed, {eta} | {speed} | {numbers}"


def read_reports(run_uri: str, s3) -> list[dict]:
    """A training run's reports so far, oldest first, from its live record `<run>/metrics.jsonl`
    (training.tracking writes it whole at every report); [] before the first."""
    log = storage.join(run_uri, "metrics.jsonl")
    if not storage.exists(log, s3):
        return []
    return [json.loads(line) for line in storage.read_bytes(log, s3).decode().splitlines() if line]


class ReportFollower:
    """Prints a training run's reports to stderr as they land in its live record (`<run>/metrics.jsonl`,
    local or object storage, read every `every_s` seconds in a thread while the run goes): one
    `report_line` each, counting only the reports of this attempt for the ETA (a resumed run's
    earlier reports are not printed again), and a note when the collapse guard rolls the run back."""

    def __init__(self, run_uri: str, total: int, s3, every_s: float = 2.0) -> None:
        self.run_uri, self.total, self.s3, self.every_s = run_uri, total, s3, every_s
        self.start = time.monotonic()
        self.last_step: int | None = None
        self.first: tuple[int, float] | None = None  # (step, time) of this attempt's first report
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="report-follower", daemon=True)

    def __enter__(self) -> ReportFollower:
        earlier = self._read()  # a resumed run's reports so far: not printed again
        self.last_step = earlier[-1]["step"] if earlier else None
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()
        self.poll()  # the last reports, written before the run returned

    def _read(self) -> list[dict]:
        try:
            return read_reports(self.run_uri, self.s3)
        except (OSError, ValueError, SimganError):  # caught mid-write or storage blinked: the next poll reads it
            return []

    def poll(self) -> None:
        reports = self._read()
        if not reports:
            return
        if self.last_step is not None and reports[-1]["step"] < self.last_step:
            print(f"rolled back to step {reports[-1]['step']} (the collapse guard)", file=sys.stderr, flush=True)
            self.last_step, self.first = reports[-1]["step"], None
        for m in reports:
            if self.last_step is not None and m["step"] <= self.last_step:
                continue
            now = time.monotonic()
            if self.first is None:
                self.first = (m["step"], now)
            done = m["step"] - self.first[0]
            per_step = (now - self.first[1]) / done if done > 0 else None
            print(report_line(m, self.total, now - self.start, per_step), file=sys.stderr, flush=True)
            self.last_step = m["step"]

    def _run(self) -> None:
        while not self.stop.wait(self.every_s):
            self.poll()
