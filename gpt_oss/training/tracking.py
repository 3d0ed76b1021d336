"""Run tracking: metrics.jsonl on disk (always), the logger interface, several loggers at once
(LoggerGroup) and short run names. The loggers: gpt_oss.training.wandb_logger (Weights &
Biases) and gpt_oss.training.file_loggers (TensorBoard, CSV)."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class MetricsFile:
    """Append-only metrics.jsonl: one JSON object per logged step or evaluation."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, record: dict[str, Any]) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")

    def read(self) -> list[dict[str, Any]]:
        return read_metrics(self.path)

    def truncate_after(self, step: int) -> None:
        """Keep the records up to `step`: a resumed run re-logs what came after its checkpoint."""
        kept = [r for r in self.read() if r.get("step", 0) <= step]
        tmp = self.path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
        os.replace(tmp, self.path)


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """Records of a metrics.jsonl; a torn last line (killed mid-write) is skipped."""
    path = Path(path)
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


class NullLogger:
    """The logger interface, and logger=none: every method a no-op (metrics.jsonl is still
    written by the trainer). A logger never stops training: it reports its own failures."""

    run_id: str | None = None

    def start(self, run_dir: Path, config: dict, run_id: str | None = None, step: int = 0) -> None:
        """Open the run; `step` > 0 when resuming from a checkpoint written at that step."""

    def log(self, metrics: dict[str, Any], step: int) -> None:
        """Scalars by name ("train/loss", "val/bpb", ...) at a training step."""

    def log_image(self, key: str, path: Path, step: int) -> None:
        """A PNG the trainer wrote (the loss plot)."""

    def log_expert_load(self, load: list[list[float]], step: int) -> None:
        """Each expert's share of its layer's token assignments since the previous evaluation:
        (layers, experts), each row summing to 1."""

    def log_checkpoint(self, path: Path, name: str, step: int) -> None:
        """A checkpoint the trainer has just written; `name` is "last" or "best"."""

    def summary(self, values: dict[str, Any]) -> None:
        """End-of-run values (best and final losses, tokens seen, ...)."""

    def finish(self, exit_code: int = 0) -> None:
        """Close the run (exit_code != 0: it failed); what was logged is complete on disk when
        this returns. A second call does nothing."""


class LoggerGroup(NullLogger):
    """Several loggers as one (`logger=[wandb,tensorboard,csv]`): each call goes to every logger.

    A logger's failure is a warning (once per logger and method, a count at the end) and never
    stops the others or the training; the next call is tried again, so one transient failure
    does not silence a logger for the rest of the run.
    """

    def __init__(self, loggers: dict[str, Any] | None = None):
        self.loggers = dict(loggers or {})
        self.failures: dict[tuple[str, str], int] = {}

    @property
    def run_id(self) -> str | None:
        """The first run id a logger has (W&B's): checkpoints keep it so a resume continues it."""
        ids = (getattr(logger, "run_id", None) for logger in self.loggers.values())
        return next((run_id for run_id in ids if run_id), None)

    def add_tags(self, *tags: str) -> None:
        """Tags for the loggers that keep a list of them (W&B's run list)."""
        for logger in self.loggers.values():
            if isinstance(getattr(logger, "tags", None), list):
                logger.tags.extend(tags)

    def _each(self, method: str, *args: Any, **kwargs: Any) -> None:
        for name, logger in self.loggers.items():
            try:
                getattr(logger, method)(*args, **kwargs)
            except Exception as error:  # logging must never stop training
                key = (name, method)
                self.failures[key] = self.failures.get(key, 0) + 1
                if self.failures[key] == 1:
                    log.warning(
                        "logger %s: %s failed (%s: %s); training goes on",
                        name,
                        method,
                        type(error).__name__,
                        error,
                    )

    def start(self, run_dir: Path, config: dict, run_id: str | None = None, step: int = 0) -> None:
        self._each("start", run_dir, config, run_id=run_id, step=step)

    def log(self, metrics: dict[str, Any], step: int) -> None:
        self._each("log", metrics, step=step)

    def log_image(self, key: str, path: Path, step: int) -> None:
        self._each("log_image", key, path, step=step)

    def log_expert_load(self, load: list[list[float]], step: int) -> None:
        self._each("log_expert_load", load, step=step)

    def log_checkpoint(self, path: Path, name: str, step: int) -> None:
        self._each("log_checkpoint", path, name, step=step)

    def summary(self, values: dict[str, Any]) -> None:
        self._each("summary", values)

    def finish(self, exit_code: int = 0) -> None:
        self._each("finish", exit_code=exit_code)
        for (name, method), count in self.failures.items():
            if count > 1:
                log.warning("logger %s: %s failed %d times in this run", name, method, count)


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}: W&B compares flat keys side by side."""
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat |= flatten(value, f"{name}.")
        else:
            flat[name] = value
    return flat


def short_run_name(
    overrides: list[str], keys: set[str] | None = None, max_chars: int = 64
) -> str | None:
    """A run name a person reads: `model.num_experts=8` -> `num_experts=8`.

    overrides: Hydra overrides (`key=value`, `+key=value`); keys: the keys to name the run by
    (a sweep's swept keys), None for all. Each key is shortened to its last dotted part, or more
    parts where two would collide; items join with ","; past max_chars the rest is counted
    (`lr=0.001,+3 more`). None when nothing is left (W&B then picks a name).
    """
    pairs = []
    for override in overrides:
        key, sep, value = override.partition("=")
        key = key.lstrip("+~")
        if sep and (keys is None or key in keys):
            pairs.append((key, value))
    if not pairs:
        return None
    short = _short_keys([key for key, _ in pairs])
    items = [f"{short[key]}={value}" for key, value in pairs]
    name = ""
    for i, item in enumerate(items):
        rest = len(items) - i - 1
        candidate = f"{name},{item}" if name else item
        tail = f",+{rest} more" if rest else ""
        if len(candidate) + len(tail) > max_chars and name:
            return f"{name},+{len(items) - i} more"
        name = candidate
    return name[: max_chars - 1] + "~" if len(name) > max_chars else name


def _short_keys(keys: list[str]) -> dict[str, str]:
    """Each dotted key's shortest unique suffix: {"model.lr": "model.lr", "optimizer.lr": ...}."""
    parts = {key: 1 for key in keys}
    while True:
        short = {key: ".".join(key.split(".")[-n:]) for key, n in parts.items()}
        clashes = {key for key in keys if list(short.values()).count(short[key]) > 1}
        grow = {key for key in clashes if parts[key] < len(key.split("."))}
        if not grow:
            return short
        for key in grow:
            parts[key] += 1
