"""Weights from anywhere a user may point: one of our checkpoints, a run directory (one process
or sharded), a sharded checkpoint directory, or a Hugging Face directory; and
`trainer.init_from`, which starts a new run from such weights (fine-tuning).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from gpt_oss.model.config import ModelConfig
from gpt_oss.model.hf import CheckpointError, build_with_state, import_hf
from gpt_oss.model.model import GptOss
from gpt_oss.training.checkpoint import read_checkpoint, resolve_checkpoint


@dataclass
class Weights:
    """A model (CPU, eval mode) and what its checkpoint says about it."""

    model: GptOss
    source: Path  # the checkpoint file or directory read
    state: dict[str, Any]  # step, tokens_seen, run_config, ... of our checkpoints; {} otherwise
    run_dir: Path | None  # the run directory it belongs to, when it is one of our runs


def load_weights(path: str | Path) -> Weights:
    """The weights at `path`: one of our .pt files, a run directory (checkpoints/best, else last;
    single-process or sharded), a sharded checkpoint directory, or a Hugging Face directory.
    Raises CheckpointError naming the path when it holds none of these."""
    from gpt_oss.training.distributed import consolidate

    path = Path(path)
    if not path.exists():
        raise CheckpointError(
            f"{path} does not exist: give a run directory, a checkpoint or a Hugging Face directory"
        )
    if sharded := _sharded(path):
        model, state = consolidate(sharded)
        return Weights(model, sharded, state, _run_dir_of(sharded))
    if (path / "config.json").is_file() and not (path / "checkpoints").is_dir():
        return Weights(import_hf(path).eval(), path, {}, None)
    checkpoint = resolve_checkpoint(path)
    payload = read_checkpoint(checkpoint)
    config = ModelConfig.from_dict(payload["model_config"])
    model = build_with_state(config, dict(payload["model"]), "cpu").eval()
    state = {k: v for k, v in payload.items() if k not in ("model", "optimizer")}
    return Weights(model, checkpoint, state, _run_dir_of(checkpoint))


def _sharded(path: Path) -> Path | None:
    """A sharded checkpoint at path, or a run directory's best/ (else last/) when the run has no
    single-file checkpoint (consolidate writes one beside the shards)."""
    from gpt_oss.training.distributed import sharded_checkpoint

    if found := sharded_checkpoint(path):
        return found
    folder = path / "checkpoints"
    if any((folder / name).is_file() for name in ("best.pt", "last.pt")):
        return None
    return sharded_checkpoint(folder / "best") or sharded_checkpoint(folder / "last")


def _run_dir_of(checkpoint: Path) -> Path | None:
    """.../<run>/checkpoints/<checkpoint> -> <run>; None for a checkpoint outside a run."""
    run_dir = checkpoint.parent.parent
    in_run = checkpoint.parent.name == "checkpoints" and (run_dir / "metrics.jsonl").is_file()
    return run_dir if in_run else None


# ------------------------------------------------------------------ trainer.init_from
def load_init_weights(config: ModelConfig, source: str) -> Weights:
    """trainer.init_from's weights, checked to fit a model of `config`: a ConfigError names
    every parameter whose shape differs, with both shapes, before any data or training work."""
    from gpt_oss.model.config import ConfigError

    try:
        weights = load_weights(source)
    except CheckpointError as error:
        raise ConfigError(f"trainer.init_from={source!r}: {error}") from error
    with torch.device("meta"):
        ours = GptOss(config).state_dict()
    theirs = weights.model.state_dict()
    problems = [
        f"{name}: {tuple(ours[name].shape)} in this model, {tuple(theirs[name].shape)} there"
        for name in ours
        if name in theirs and ours[name].shape != theirs[name].shape
    ]
    problems += [f"{name}: only in this model" for name in ours if name not in theirs]
    problems += [f"{name}: only there" for name in theirs if name not in ours]
    if problems:
        there = weights.model.config.to_dict()
        differ = {k: (v, there.get(k)) for k, v in config.to_dict().items() if v != there.get(k)}
        raise ConfigError(
            f"trainer.init_from={source!r} does not fit the model: {'; '.join(problems[:6])}"
            + (f" (+{len(problems) - 6} more)" if len(problems) > 6 else "")
            + f". Config fields that differ (this model, there): {differ}"
        )
    return weights


@torch.no_grad()
def initialize_from(model: GptOss, weights: Weights) -> dict[str, Any]:
    """Copy load_init_weights's weights into `model` (its own dtype and device); returns what
    the run records about its start: the source checkpoint, and its step and tokens seen."""
    model.load_state_dict(weights.model.state_dict(), strict=True)
    return {
        "checkpoint": str(weights.source),
        "step": weights.state.get("step"),
        "tokens_seen": weights.state.get("tokens_seen"),
    }
