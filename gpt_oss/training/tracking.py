"""Run tracking: metrics.jsonl on disk (always) and Weights & Biases (optional, never fatal)."""

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
    """logger=none: nothing leaves the machine; metrics.jsonl is still written by the trainer."""

    run_id: str | None = None

    def start(self, run_dir: Path, config: dict, run_id: str | None = None) -> None:
        pass

    def log(self, metrics: dict[str, Any], step: int) -> None:
        pass

    def log_image(self, key: str, path: Path, step: int) -> None:
        pass

    def summary(self, values: dict[str, Any]) -> None:
        pass

    def finish(self) -> None:
        pass


def wandb_logged_in() -> bool:
    """True when an API key is configured (env or netrc), so online mode cannot prompt."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        import netrc

        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


class WandbLogger(NullLogger):
    """W&B: online when logged in, else offline; any W&B failure disables it with a warning."""

    def __init__(self, project: str = "gpt-oss-lab", entity: str | None = None, mode: str = "auto",
                 group: str | None = None, name: str | None = None, tags: list[str] | None = None,
                 init_timeout: float = 30.0):
        if mode not in ("auto", "online", "offline", "disabled"):
            raise ValueError(f"logger.mode={mode!r} is invalid: valid are auto, online, offline, disabled")
        self.project, self.entity, self.mode = project, entity, mode
        self.group, self.name, self.tags = group, name, list(tags or [])
        self.init_timeout = init_timeout
        self.run = None
        self.run_id = None

    def resolved_mode(self) -> str:
        if self.mode != "auto":
            return self.mode
        return "online" if wandb_logged_in() else "offline"

    def start(self, run_dir: Path, config: dict, run_id: str | None = None) -> None:
        os.environ.setdefault("WANDB_SILENT", "true")
        try:
            import wandb

            self.run = wandb.init(
                project=self.project, entity=self.entity, group=self.group, name=self.name,
                tags=self.tags, config=flatten(config), dir=str(run_dir), id=run_id,
                resume="allow" if run_id else None, mode=self.resolved_mode(),
                settings=wandb.Settings(init_timeout=self.init_timeout, console="off"),
            )
            self.run_id = self.run.id
        except Exception as error:  # W&B must never stop training
            self._disable("init", error)

    def _disable(self, what: str, error: Exception) -> None:
        log.warning("W&B %s failed (%s: %s); continuing without W&B", what, type(error).__name__, error)
        self.run = None

    def log(self, metrics: dict[str, Any], step: int) -> None:
        if self.run is None:
            return
        try:
            self.run.log(metrics, step=step)
        except Exception as error:
            self._disable("log", error)

    def log_image(self, key: str, path: Path, step: int) -> None:
        if self.run is None:
            return
        try:
            import wandb

            self.run.log({key: wandb.Image(str(path))}, step=step)
        except Exception as error:
            self._disable("log_image", error)

    def summary(self, values: dict[str, Any]) -> None:
        if self.run is None:
            return
        try:
            self.run.summary.update(values)
        except Exception as error:
            self._disable("summary", error)

    def finish(self) -> None:
        if self.run is None:
            return
        try:
            self.run.finish()
        except Exception as error:
            self._disable("finish", error)


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
