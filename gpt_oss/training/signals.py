"""Stopping a training run cleanly on a signal.

SIGTERM (what SLURM, Kubernetes and `timeout` send), SIGINT (Ctrl-C) and SIGUSR1 (SLURM's
warning before the time limit, `sbatch --signal=USR1@120`) do not interrupt the step in flight:
the handler only records the signal, the loop finishes the current step, every rank agrees to
stop after that same step, `last` is written and the process exits with status 128 + the
signal's number (143 SIGTERM, 130 SIGINT, 138 SIGUSR1). That is the status a shell reports for
a process the signal killed, so launchers read it as an interrupted job, never as a finished
one: torchrun restarts it (--max-restarts), a Kubernetes podFailurePolicy can match the code,
a SLURM batch script can `scontrol requeue` on it. A run stopped this way resumes exactly with
`trainer.resume=auto` in the same run directory.

A second SIGINT (or a SIGINT after another stop signal) exits at once, without saving: after
the first signal SIGINT gets the operating system's default action back, which acts even while
the process waits inside a long kernel or a collective. A SIGINT that the launching process
ignores (SIG_IGN, e.g. a background job of a script) stays ignored.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from types import FrameType, TracebackType

import torch

from gpt_oss.training.distributed import current_world, max_over_ranks_

log = logging.getLogger(__name__)

STOP_SIGNALS = tuple(
    getattr(signal, name) for name in ("SIGTERM", "SIGINT", "SIGUSR1") if hasattr(signal, name)
)


def exit_status(signal_name: str) -> int:
    """The process exit status for a run stopped by `signal_name` ("SIGTERM"): 128 + signum."""
    return 128 + int(signal.Signals[signal_name])


class StopRequest:
    """Within `with StopRequest() as stop:` the stop signals are recorded, not raised;
    `stop.agreed(device)` between steps says which one stops every rank (0: none)."""

    def __init__(self) -> None:
        self.signum = 0  # the first stop signal this process received
        self._previous: dict[int, signal.Handlers | int | object] = {}

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is not threading.main_thread():
            log.warning("training outside the main thread: signals cannot stop it cleanly")
            return self
        for signum in STOP_SIGNALS:
            if signum == signal.SIGINT and signal.getsignal(signum) == signal.SIG_IGN:
                continue  # ignored by whoever started us: leave it so
            self._previous[signum] = signal.signal(signum, self._record)
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _record(self, signum: int, frame: FrameType | None) -> None:
        first = not self.signum
        self.signum = self.signum or signum
        # From now on a (further) Ctrl-C terminates at once, even inside a kernel or collective.
        if signal.SIGINT in self._previous:
            signal.signal(signal.SIGINT, signal.SIG_DFL)
        if first:  # os.write: print() may be mid-write on the interrupted main thread
            name = signal.Signals(signum).name
            os.write(
                2,
                f"\n{name} received: stopping after the current step and writing the `last` "
                "checkpoint (Ctrl-C again exits at once, without saving)\n".encode(),
            )

    def agreed(self, device: torch.device) -> int:
        """The signal number that stops every rank after this step, 0 for none: the maximum
        over ranks, so one rank's signal stops them all at the same step. Collective when
        several processes train: call it at the same point of every step on every rank."""
        if current_world().size == 1:
            return self.signum
        flag = torch.tensor([self.signum], dtype=torch.int64, device=device)
        return int(max_over_ranks_(flag).item())
