"""A Ray Data execution callback that stops an idle streaming executor from spinning.

A training consumer keeps its input streams backpressured nearly all the time: a digits worker takes
~400 images/s, decoding makes ~20,000. Backpressured, Ray 2.60's scheduling loop has no task to
`ray.wait` on and spins: measured on a 2-core machine, the split coordinator of a training set
burned ~90% of a core (Prometheus gauge updates, resource budgets), CPU the training worker lost.
"""

from __future__ import annotations

import time

from ray.data._internal.execution.execution_callback import ExecutionCallback


class IdleBackoff(ExecutionCallback):
    """Sleeps the scheduling loop after a step that changed nothing (no task submitted or finished,
    no block queued or taken): 1, 2, 4, ... 64, 64, ... ms per idle step, none after any progress.
    At most 64 ms pass before the loop notices new work: consumers hold seconds of batches, and a
    loop with running tasks already blocks up to 100 ms in `ray.wait`."""

    MAX_SLEEP_S = 0.064

    def __init__(self) -> None:
        self.last: tuple | None = None
        self.sleep_s = 0.0

    @staticmethod
    def progress(executor) -> tuple:
        """Counters that move whenever the executor does anything (Ray 2.60 internals: Ray is pinned)."""
        return tuple(
            (op.metrics.num_tasks_submitted, op.metrics.num_tasks_finished,
             state.total_enqueued_input_blocks(), state.total_enqueued_output_blocks())
            for op, state in executor._topology.items()
        )

    def on_execution_step(self, executor) -> None:
        now = self.progress(executor)
        if now == self.last:
            self.sleep_s = min(max(2 * self.sleep_s, 0.001), self.MAX_SLEEP_S)
            time.sleep(self.sleep_s)
        else:
            self.sleep_s = 0.0
        self.last = now
