"""What a CPU run will cost, said before it starts, and a sign of life while its first step runs.

A CPU step can take minutes (mini at 16 x 512 with o200k's full head: 188 s and 9.9 GB for
step 1, measured, with nothing printed): the run prints its estimated step time, total time
and peak memory first, and while step 1 runs a Heartbeat reports the seconds so far against
that estimate.

The step time is measured, not derived from FLOPs: metrics.cpu_step_estimate (FLOPs at a
1024^3 matmul's rate) said 0.11 s for a model=small step that took 2.3 s, because on a CPU the
small matmuls and the element-wise work (the softmax over the vocabulary, norms, routing) cost
more than the large-matmul rate suggests. So the model runs forward and backward on one
sequence of random tokens (no optimizer step, gradients dropped, global RNG untouched) and the
step is that time the batch's number of sequences. Memory is cpu_step_estimate's.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from gpt_oss.model.config import ModelConfig
from gpt_oss.training.metrics import cpu_step_estimate

log = logging.getLogger(__name__)

SLOW_STEP_S = 10.0  # above this estimated step time the preview is a warning with advice
HEARTBEAT_S = 10.0  # seconds between reports while the first step runs


@dataclass
class CpuPreview:
    """The estimate for one run: seconds per optimizer step, peak bytes, steps to go."""

    step_s: float
    peak_bytes: float
    steps: int

    @property
    def slow(self) -> bool:
        return self.step_s > SLOW_STEP_S

    def message(self, threads: int) -> str:
        plural = "s" if threads != 1 else ""
        text = (
            f"CPU run ({threads} thread{plural}): about {self.step_s:.2g} s per step, "
            f"{self.steps} steps ~ {_duration(self.step_s * self.steps)}, "
            f"peak memory ~ {self.peak_bytes / 2**30:.1f} GiB (estimated)"
        )
        if self.slow:
            text += (
                "; this shape is meant for a GPU: for a CPU run try the README's CPU command "
                "(model=small trainer=cpu) or a smaller trainer.batch_size / trainer.seq_len"
            )
        return text


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


PROBE_BUDGET_S = 2.0  # repeat the one-sequence probe (best of up to 3) while under this


def sequence_seconds(run_sequence: Callable[[], None]) -> float:
    """Seconds for one call of run_sequence (forward and backward of one sequence): the best
    of up to 3 calls while their total stays under PROBE_BUDGET_S (a slow model: one call)."""
    times: list[float] = []
    while len(times) < 3 and sum(times) < PROBE_BUDGET_S:
        began = time.perf_counter()
        run_sequence()
        times.append(time.perf_counter() - began)
    return min(times)


def preview_cpu_run(
    config: ModelConfig,
    batch_size: int,
    seq_len: int,
    steps: int,
    dtype: torch.dtype | None,
    run_sequence: Callable[[], None],
    threads: int | None = None,
) -> CpuPreview:
    """Measure (sequence_seconds) and log the cost of `steps` steps of batch_size sequences of
    seq_len tokens, with peak memory from cpu_step_estimate; a warning, with advice, when one
    step takes longer than SLOW_STEP_S."""
    log.info("timing one sequence of %d tokens to estimate the step time...", seq_len)
    step_s = batch_size * sequence_seconds(run_sequence)
    _, peak = cpu_step_estimate(config, batch_size, seq_len, dtype or torch.float32)
    preview = CpuPreview(step_s, peak, steps)
    threads = torch.get_num_threads() if threads is None else threads
    (log.warning if preview.slow else log.info)(preview.message(threads))
    return preview


class Heartbeat:
    """Calls report(seconds_so_far) every `interval` seconds from a daemon thread until the
    block ends; use as `with Heartbeat(report, interval): first_step()`."""

    def __init__(self, report: Callable[[float], None], interval: float = HEARTBEAT_S) -> None:
        self.report, self.interval = report, interval
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="first-step-heartbeat", daemon=True)

    def _beat(self) -> None:
        started = time.perf_counter()
        while not self._done.wait(self.interval):
            self.report(time.perf_counter() - started)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._done.set()
        self._thread.join()


def first_step_report(bar, estimate_s: float | None) -> Callable[[float], None]:
    """A Heartbeat report: on the tqdm bar when it is shown, else in the log."""
    expected = f" of ~{estimate_s:.0f} s estimated" if estimate_s else ""

    def report(seconds: float) -> None:
        text = f"step 1 running: {seconds:.0f} s{expected}"
        if getattr(bar, "disable", True):
            log.info(text)
        else:
            bar.set_postfix_str(text, refresh=True)

    return report
