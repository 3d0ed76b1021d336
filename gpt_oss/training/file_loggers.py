"""Loggers that write files in the run directory: TensorBoard event files and CSV tables.

Both carry the same scalars the trainer writes to metrics.jsonl, under W&B's names
("train/loss", "val/bpb", ...), and take up a resumed run where its checkpoint was written.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any

from gpt_oss.training.tracking import NullLogger


class TensorBoardLogger(NullLogger):
    """`logger=tensorboard`: event files in <run dir>/<save_dir>, through torch.utils.tensorboard
    (`tensorboard --logdir outputs/` to browse). Scalars, the loss plot, an expert-load heatmap
    per evaluation, the resolved config and the summary as text."""

    def __init__(self, save_dir: str = "tensorboard", flush_secs: int = 30):
        self.save_dir, self.flush_secs = save_dir, flush_secs
        self.writer = None

    def start(self, run_dir: Path, config: dict, run_id: str | None = None, step: int = 0) -> None:
        from torch.utils.tensorboard import SummaryWriter

        # purge_step: readers drop the events the first run wrote after the checkpoint (the
        # resumed run logs those steps again); the checkpoint's own step stays, as in metrics.jsonl
        self.writer = SummaryWriter(
            str(Path(run_dir) / self.save_dir),
            purge_step=step + 1 if step else None,
            flush_secs=self.flush_secs,
        )
        self.writer.add_text("config", _code_block(config), global_step=step)

    def log(self, metrics: dict[str, Any], step: int) -> None:
        for key, value in metrics.items():
            if isinstance(value, int | float):
                self.writer.add_scalar(key, value, global_step=step)

    def log_image(self, key: str, path: Path, step: int) -> None:
        import matplotlib.image

        pixels = matplotlib.image.imread(str(path))  # (H, W, channels) floats in [0, 1]
        self.writer.add_image(key, pixels[..., :3], global_step=step, dataformats="HWC")

    def log_expert_load(self, load: list[list[float]], step: int) -> None:
        from gpt_oss.studies.plots import expert_load_figure

        self.writer.add_figure(
            "expert_load", expert_load_figure(load), global_step=step
        )  # closes it

    def summary(self, values: dict[str, Any]) -> None:
        self.writer.add_text("summary", _code_block(values))

    def finish(self, exit_code: int = 0) -> None:
        if self.writer is not None:
            self.writer.close()  # flushes every pending event
            self.writer = None


class CSVLogger(NullLogger):
    """`logger=csv`: <run dir>/<filename> with a `step` column and one column per scalar (a row
    per log call, as Lightning's CSVLogger), and expert_load.csv with (step, layer, expert,
    load) rows. A new metric name rewrites the file once with the wider header."""

    def __init__(self, filename: str = "metrics.csv"):
        self.filename = filename
        self.path: Path | None = None
        self.columns: list[str] = []

    def start(self, run_dir: Path, config: dict, run_id: str | None = None, step: int = 0) -> None:
        self.path = Path(run_dir) / self.filename
        self.load_path = Path(run_dir) / "expert_load.csv"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for path in (self.path, self.load_path):
            if step and path.exists():  # resumed: the rows after the checkpoint are logged again
                _rewrite(path, _header(path), [r for r in _rows(path) if int(r["step"]) <= step])
        self.columns = _header(self.path)

    def log(self, metrics: dict[str, Any], step: int) -> None:
        row = {"step": step} | {k: v for k, v in metrics.items() if isinstance(v, int | float)}
        new = [key for key in row if key not in self.columns]
        if new:
            self.columns = self.columns + new if self.columns else list(row)
            _rewrite(self.path, self.columns, _rows(self.path))
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, self.columns).writerow(row)

    def log_expert_load(self, load: list[list[float]], step: int) -> None:
        columns = ["step", "layer", "expert", "load"]
        fresh = not self.load_path.exists()
        with open(self.load_path, "a", newline="") as f:
            writer = csv.writer(f)
            if fresh:
                writer.writerow(columns)
            for layer, shares in enumerate(load):
                writer.writerows(
                    [step, layer, expert, share] for expert, share in enumerate(shares)
                )


def read_csv_metrics(path: str | Path) -> list[dict[str, float]]:
    """The rows of a CSVLogger file as numbers (empty cells dropped; step as int)."""
    rows = []
    for row in _rows(Path(path)):
        values = {k: float(v) for k, v in row.items() if v not in ("", None)}
        values["step"] = int(values["step"])
        rows.append(values)
    return rows


def _header(path: Path) -> list[str]:
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return next(csv.reader(f), [])


def _rows(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _rewrite(path: Path, columns: list[str], rows: list[dict[str, Any]]) -> None:
    """Write header and rows to a temporary file, then replace: a reader never sees half."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, columns)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)


def _code_block(values: dict[str, Any]) -> str:
    """JSON in a Markdown code block: TensorBoard's text tab renders Markdown."""
    return "```\n" + json.dumps(values, indent=2, default=str) + "\n```"
