"""Debugging aids the conf/debug/ configs switch on: overfitting a few batches and profiling
training steps. Each is a trainer setting, off by default (TrainerConfig.overfit_batches,
TrainerConfig.profile_steps)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch.profiler import ProfilerActivity

log = logging.getLogger(__name__)


class RepeatedBatches:
    """trainer.overfit_batches=N: the first N batches of a loader, over and over (Lightning's
    overfit_batches). A model that cannot drive their loss towards zero has a bug."""

    def __init__(self, loader: Any, count: int):
        self.loader, self.count = loader, count
        self.start = loader.state_dict()  # where the repeated batches begin (resume re-reads them)
        self.batches: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.index = 0

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Batch index % count of the loader's first `count` (inputs, targets) batches."""
        position = self.index % self.count
        while len(self.batches) <= position:
            self.batches.append(self.loader.next_batch())
        self.index += 1
        return self.batches[position]

    def state_dict(self) -> dict[str, Any]:
        return {"repeated": self.count, "index": self.index, "loader": self.start}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue a run that repeated the same number of batches."""
        if state.get("repeated") != self.count:
            raise ValueError(
                f"the checkpoint repeated {state.get('repeated')} batches, this run "
                f"trainer.overfit_batches={self.count}: resume with the same value"
            )
        self.loader.load_state_dict(state["loader"])
        self.start, self.batches, self.index = state["loader"], [], state["index"]


class StepProfiler:
    """trainer.profile_steps=N: torch.profiler over the first N training steps of this process,
    then <folder>/trace.json (Perfetto, chrome://tracing) and <folder>/operators.txt (the top
    operators by self time, also logged). N = 0: does nothing."""

    def __init__(self, steps: int, folder: Path, device: torch.device):
        self.steps, self.folder, self.done = steps, Path(folder), 0
        self.cuda = device.type == "cuda"
        self.profiler: torch.profiler.profile | None = None
        if steps > 0:
            activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self.cuda else [])
            self.profiler = torch.profiler.profile(activities=activities, record_shapes=True)
            self.profiler.start()

    def step(self) -> None:
        """Call after each training step; the trace is written after the N-th."""
        if self.profiler is None:
            return
        self.profiler.step()
        self.done += 1
        if self.done >= self.steps:
            self.close()

    def close(self) -> None:
        """Stop and write what was traced (also when the run ends before N steps)."""
        if self.profiler is None:
            return
        profiler, self.profiler = self.profiler, None
        profiler.stop()
        self.folder.mkdir(parents=True, exist_ok=True)
        profiler.export_chrome_trace(str(self.folder / "trace.json"))
        sort = "self_cuda_time_total" if self.cuda else "self_cpu_time_total"
        table = profiler.key_averages().table(sort_by=sort, row_limit=25)
        (self.folder / "operators.txt").write_text(table)
        log.info("profiled %d training steps into %s\n%s", self.done, self.folder, table)
