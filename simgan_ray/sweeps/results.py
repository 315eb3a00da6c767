"""A sweep's results: its trials, ranked (by the probe, or by val error where the sweep was asked to
evaluate its finished trials), how well the probe's ranking agreed with val's, and the tables
written beside the trials (results.csv, results.md)."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from simgan_ray.storage.ownership import Output
from simgan_ray.sweeps.spec import TuneSpec


@dataclass
class Trial:
    """One trial of a sweep, as a row of results.csv."""

    trial: str  # Tune's trial id
    status: str  # "ok" (ran every step), "stopped by ASHA at step N", or "error: ..."
    run: str | None = None  # its (last) training run, under <sweep>/trials
    step: int | None = None  # the last step it reported
    # the ranking metric and probe_label_acc; with validation also val_error (refined, mean over seeds)
    # and val_reduction (its relative error reduction over raw synthetic)
    metrics: dict[str, float | None] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)  # its values of the searched fields

    def row(self) -> dict[str, Any]:
        return {"trial": self.trial, "run": self.run, "status": self.status, "step": self.step, **self.metrics,
                **self.params}


@dataclass
class SweepResult:
    """`run_sweep`'s result: the sweep's folder, every trial best first, the probe's own held-out
    error and, with validation, the rank correlation of the probe's metric and val error."""

    out: str
    trials: list[Trial]
    probe_heldout_error: float
    rank_correlation: float | None = None  # Spearman, over the trials that have both; None: fewer than 3

    @property
    def best(self) -> Trial:
        return self.trials[0]


def rank(trials: list[Trial], spec: TuneSpec, total: int) -> list[Trial]:
    """Trials best first by `spec.metric` (`spec.mode`), among those that ran all `total` steps
    (they have an export); then those the scheduler stopped early, marked so whatever their metric
    (a score at an early rung is no finished run's), then failed ones, in the order given."""
    for t in trials:
        if t.status == "ok" and t.step < total:
            t.status = f"stopped by {spec.scheduler.upper()} at step {t.step}"
    done = [t for t in trials if t.status == "ok" and t.metrics.get(spec.metric) is not None]
    sign = -1 if spec.mode == "max" else 1
    done.sort(key=lambda t: sign * t.metrics[spec.metric])
    return done + [t for t in trials if t not in done]


def by_val(trials: list[Trial]) -> list[Trial]:
    """The trials with a val error first, lowest first; the others after, in their order."""
    scored = sorted((t for t in trials if t.metrics.get("val_error") is not None), key=lambda t: t.metrics["val_error"])
    return scored + [t for t in trials if t not in scored]


def spearman(a: list[float], b: list[float]) -> float | None:
    """Spearman's rank correlation of two equally long lists (ties share their mean rank); None for
    fewer than 3 pairs or a list with no spread."""
    if len(a) < 3:
        return None

    def ranks(x: list[float]) -> np.ndarray:
        x = np.asarray(x, float)
        order = x.argsort(kind="stable")
        r = np.empty(len(x))
        r[order] = np.arange(len(x), dtype=float)
        for v in np.unique(x):  # ties: their mean rank
            r[x == v] = r[x == v].mean()
        return r

    ra, rb = ranks(a), ranks(b)
    if ra.std() == 0 or rb.std() == 0:
        return None
    return float(np.corrcoef(ra, rb)[0, 1])


def write_results(out: Output, trials: list[Trial], spec: TuneSpec, correlation: float | None) -> None:
    rows = [t.row() for t in trials]
    validated = any("val_error" in t.metrics for t in trials)
    columns = ["trial", "run", "status", "step", spec.metric, "probe_label_acc",
               *(["val_error", "val_reduction"] if validated else []), *spec.search]
    columns = list(dict.fromkeys(columns))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)

    def cell(v) -> str:
        return f"{v:.4g}" if isinstance(v, float) else str(v if v is not None else "")

    lines = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    lines += ["| " + " | ".join(cell(r.get(c)) for c in columns) + " |" for r in rows]
    if validated:
        said = "not defined (fewer than 3 trials with both, or no spread)" if correlation is None else \
            f"{correlation:+.2f}"
        sign = "" if spec.mode == "min" else " (the probe's metric is maximised: a good probe correlates negatively)"
        lines += ["", f"Rank correlation (Spearman) of {spec.metric} and val error over the finished trials: "
                      f"{said}{sign}. Ranked by {spec.rank_by}."]
    out.write({"results.csv": buf.getvalue().encode(), "results.md": ("\n".join(lines) + "\n").encode()})
