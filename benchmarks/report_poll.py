"""What a report costs the step: the same `fit` with Ray Train's default controller poll and with ours.

A worker's `ray.train.report` puts its result in a queue of one that the Train controller empties
when it polls the workers (RAY_TRAIN_HEALTH_CHECK_INTERVAL_S, 2 s by default): a run whose
`run.report_every` steps take less than the poll interval waits at every report. `fit` sets the
interval to 0.25 s unless it is set (runtime/rayinternals.py, TRAIN_DRIVER_ENV). Here the digits
model (jobs/digits.yaml, 1 worker, reporting every 2 steps as a GPU run reporting every 10 would
at ~5x the step rate) runs four times in one Ray, alternating Ray's default and ours (the machine
drifts); each run's rate is adversarial steps per second of wall time between its first and last
adversarial report, as the Train controller saw them arrive.
Last line: ours / Ray's default, the mean of each pair.

    .venv/bin/python benchmarks/report_poll.py [--steps 100] [--report-every 2] [--precision bf16]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ray.train import UserCallback  # noqa: E402

from simgan_ray.runtime.rayinternals import TRAIN_DRIVER_ENV  # noqa: E402
from simgan_ray.runtime.session import start_local_ray  # noqa: E402
from simgan_ray.sets.simulate import simulate  # noqa: E402
from simgan_ray.training.config import load_config  # noqa: E402
from simgan_ray.training.train import fit  # noqa: E402

POLL = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"


class ArrivalTimes(UserCallback):
    """Runs in the Train controller: (step, phase, wall time) of each report as it arrives, to `path`."""

    def __init__(self, path: str) -> None:
        self.path = path

    def after_report(self, run_context, metrics, checkpoint) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps([metrics[0]["step"], metrics[0]["phase"], time.time()]) + "\n")


def steps_per_s(path: str) -> tuple[float, int]:
    """Adversarial steps per second of wall time between the first and last adversarial report."""
    rows = [json.loads(line) for line in open(path)]
    adv = [(step, t) for step, phase, t in rows if phase == "adversarial"]
    (s0, t0), (s1, t1) = adv[0], adv[-1]
    return (s1 - s0) / (t1 - t0), len(adv)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--report-every", type=int, default=2)
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        start_local_ray(2)  # the worker's CPU plus one for Ray Data's decode tasks
        simulate(f"{tmp}/synthetic", 4000, 2000, seed=0)
        simulate(f"{tmp}/real", 4000, 2000, seed=1)
        rates: dict[str, list[float]] = {"default": [], "ours": []}
        # Ray Train's DEFAULT_HEALTH_CHECK_INTERVAL_S said explicitly, then ours; twice.
        for i, (name, poll) in enumerate([("default", "2.0"), ("ours", TRAIN_DRIVER_ENV[POLL])] * 2):
            os.environ[POLL] = poll
            cfg = load_config(ROOT / "jobs" / "digits.yaml", {
                "data.synthetic": f"{tmp}/synthetic", "data.real": f"{tmp}/real", "run.storage": f"{tmp}/runs",
                "run.name": f"{name}-{i}", "run.num_workers": 1, "schedule.pretrain_refiner_steps": 10,
                "schedule.pretrain_discriminator_steps": 10, "schedule.steps": args.steps,
                "run.report_every": args.report_every, "run.checkpoint_every": args.steps,
                "run.precision": args.precision, "run.portable_export": False,
            })
            arrivals = f"{tmp}/{name}-{i}.jsonl"
            fit(cfg, callbacks=[ArrivalTimes(arrivals)])
            rate, reports = steps_per_s(arrivals)
            rates[name].append(rate)
            print(f"{name}, the controller polling every {poll} s: {rate:.2f} adversarial steps/s over "
                  f"{reports} reports, a report every {args.report_every} steps of batch {cfg.batch_size}, "
                  f"{args.precision}", flush=True)
    print(f"ratio ours / Ray's default = {statistics.mean(rates['ours']) / statistics.mean(rates['default']):.2f}")


if __name__ == "__main__":
    main()
