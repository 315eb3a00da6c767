"""What `evaluate` measured, as a typed record (report.json is it, as JSON) and as markdown
(report.md). Errors are fractions for classification and the task's error measure for regression."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

import numpy as np


@dataclass
class Spread:
    """One error over the seeds: their mean, sample sd (0.0 with one seed) and each seed's value."""

    mean: float
    sd: float
    runs: list[float]

    @classmethod
    def of(cls, values: list[float]) -> Spread:
        arr = np.array(values)
        return cls(float(arr.mean()), float(arr.std(ddof=1)) if len(arr) > 1 else 0.0, list(values))


def reduction(errors: dict[str, Spread]) -> float:
    """(raw - refined) / raw of the mean errors of one test set or group ({source: Spread})."""
    raw, refined = errors["synthetic"].mean, errors["refined"].mean
    return (raw - refined) / raw if raw > 0 else 0.0


@dataclass
class ReportedOn:
    kind: str  # the test set's manifest kind: "val" while choosing, "test" for the one final measurement
    final: bool


@dataclass
class EvalReport:
    """`run_evaluation`'s result. Per-source maps are keyed "synthetic", "refined" (and "real" for errors)."""

    inputs: dict[str, str | None]  # synthetic, refined_from (an export or a refined set), real_train/test/pool
    reported_on: ReportedOn
    recipe: dict  # the classifier recipe: seeds, train_images, test_images, epochs, batch_size, lr, label_key
    counts: dict[str, int]  # images read per set
    test_error: dict[str, Spread]  # the headline error per training source
    relative_error_reduction: float  # (raw - refined) / raw of the mean errors
    two_sample_accuracy: dict[str, float]  # held-out accuracy telling the images from real (0.5: alike)
    frechet_distance: dict[str, float]  # to the real test set, in the real-trained classifier's features
    label_preservation: dict[str, float]  # the real-trained model's accuracy (regression: error) on them
    classifier_seconds: float
    task: str  # "classification" or "regression"
    # regression only: the measure the headline uses, and every measure per source
    error_measure: str | None = None
    test_errors: dict[str, dict[str, Spread]] = field(default_factory=dict)
    # with groups: the test images in each group, and each group's headline error per training source
    groups: dict[str, int] = field(default_factory=dict)
    group_error: dict[str, dict[str, Spread]] = field(default_factory=dict)

    def reduction(self, group: str | None = None) -> float:
        """`reduction` over the whole test set or one group."""
        return reduction(self.test_error if group is None else self.group_error[group])

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> EvalReport:
        d = json.loads(text)
        spreads = {k: Spread(**v) for k, v in d.pop("test_error").items()}
        def nested(key: str) -> dict:
            return {k: {m: Spread(**s) for m, s in v.items()} for k, v in d.pop(key, {}).items()}

        return cls(**d | {"reported_on": ReportedOn(**d["reported_on"]), "test_error": spreads,
                          "test_errors": nested("test_errors"), "group_error": nested("group_error")})


def markdown(r: EvalReport) -> str:
    e = r.test_error
    regression = r.task == "regression"
    measure = r.error_measure or "error"
    unit = " deg" if measure == "angle_deg" else ""
    seeds = r.recipe["seeds"]

    def err(d: Spread) -> str:  # one seed has no spread to show
        if regression:
            return f"{d.mean:.3f}{unit}" + (f" +- {d.sd:.3f}" if seeds > 1 else "")
        return f"{100 * d.mean:.2f}%" + (f" +- {100 * d.sd:.2f}" if seeds > 1 else "")

    def kept(v: float) -> str:
        return f"{v:.3f}{unit}" if regression else f"{100 * v:.1f}%"

    kind = r.reported_on.kind
    spread = " (mean +- sd)" if seeds > 1 else ""
    what = f"{kind} {measure}{spread}" if regression else f"{kind} error{spread}"
    preserved = f"real-trained model's {measure} on it" if regression else "real-trained classifier accuracy on it"
    paper = "paper, gaze: 11.2 -> 7.8 deg, 30.4%" if regression else "paper, gaze: 22.3%"
    task_note = f"; regression of {r.recipe['label_key']!r}" if regression else ""
    two, fd, lp = r.two_sample_accuracy, r.frechet_distance, r.label_preservation
    return "\n".join([
        "# SimGAN evaluation",
        "",
        f"Errors on `{r.inputs['real_test']}` (kind {kind!r}, {r.counts['real_test']} "
        f"images{'; the final, test-set measurement' if r.reported_on.final else ''}); "
        f"{seeds} seed{'s' if seeds > 1 else ''} per row; {r.recipe['epochs']} epochs on "
        f"{r.counts['synthetic']} images"
        f"{task_note}.",
        "",
        f"| {'model' if regression else 'classifier'} trained on | {what} | two-sample accuracy vs real | "
        f"Frechet distance to real | {preserved} |",
        "| --- | --- | --- | --- | --- |",
        f"| (a) raw synthetic | {err(e['synthetic'])} | {100 * two['synthetic']:.1f}% | "
        f"{fd['synthetic']:.2f} | {kept(lp['synthetic'])} |",
        f"| (b) refined synthetic | {err(e['refined'])} | {100 * two['refined']:.1f}% | "
        f"{fd['refined']:.2f} | {kept(lp['refined'])} |",
        f"| (c) real (ceiling) | {err(e['real'])} | | | |",
        "",
        f"**Relative error reduction, refined vs raw synthetic: {100 * r.relative_error_reduction:.1f}%** "
        f"({paper}).",
        "",
        *_group_table(r, err),
    ])


def _group_table(r: EvalReport, err) -> list[str]:
    """The errors per group of test images, when the evaluation was asked for groups."""
    if not r.group_error:
        return []
    lines = ["## By group of test images", "",
             "| group | images | (a) raw synthetic | (b) refined synthetic | (c) real | reduction |",
             "| --- | --- | --- | --- | --- | --- |"]
    for g, e in r.group_error.items():
        lines.append(f"| {g} | {r.groups[g]} | {err(e['synthetic'])} | {err(e['refined'])} | {err(e['real'])} | "
                     f"{100 * r.reduction(g):.1f}% |")
    return [*lines, ""]
