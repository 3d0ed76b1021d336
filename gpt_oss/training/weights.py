"""Weights from anywhere a user may point: one of our checkpoints, a run directory (one process
or sharded), a sharded checkpoint directory, or a Hugging Face directory; and
`trainer.init_from`, which starts a new run from such weights (fine-tuning).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from gpt_oss.model.config import ConfigError, ModelConfig
from gpt_oss.model.hf import config_from_hf, hf_vocabulary, import_hf
from gpt_oss.model.model import GptOss
from gpt_oss.model.vocabulary import Vocabulary
from gpt_oss.training.checkpoint import (
    CheckpointError,
    build_with_state,
    checkpoint_vocabulary,
    find_checkpoint,
    no_checkpoint_message,
    read_checkpoint,
)

NAMES = ("best", "last")  # a run directory exports (or starts from) its best, else its last


@dataclass
class Weights:
    """A model (CPU, eval mode) and what its checkpoint says about it."""

    model: GptOss
    source: Path  # the checkpoint file or directory read
    state: dict[str, Any]  # step, tokens_seen, run_config, ... of our checkpoints; {} otherwise
    run_dir: Path | None  # the run directory it belongs to, when it is one of our runs
    vocabulary: Vocabulary | None  # its map from o200k ids; None for a model of raw ids


def load_weights(path: str | Path) -> Weights:
    """The weights at `path`: one of our .pt files, a run directory (checkpoints/best, else last;
    single-process or sharded), a sharded checkpoint directory, or a Hugging Face directory.
    Raises CheckpointError naming the path when it holds none of these."""
    from gpt_oss.training.checkpoint_sharded import consolidate

    path = _existing(path)
    if sharded := _sharded(path):
        model, state = consolidate(sharded)
        vocabulary = checkpoint_vocabulary(state, sharded)
        return Weights(model, sharded, state, _run_dir_of(sharded), vocabulary)
    if _is_hf_dir(path):
        return Weights(import_hf(path).eval(), path, {}, None, hf_vocabulary(path))
    checkpoint = _checkpoint_file(path)
    payload = read_checkpoint(checkpoint)
    config = ModelConfig.from_dict(payload["model_config"])
    model = build_with_state(config, dict(payload["model"]), "cpu").eval()
    state = {k: v for k, v in payload.items() if k not in ("model", "optimizer")}
    vocabulary = checkpoint_vocabulary(payload, checkpoint)
    return Weights(model, checkpoint, state, _run_dir_of(checkpoint), vocabulary)


def weights_config(path: str | Path) -> ModelConfig:
    """The model config of load_weights(path) without its tensors (a Hugging Face config.json,
    a sharded checkpoint's training state, or one of our files read onto the meta device)."""
    from gpt_oss.training.checkpoint_sharded import read_trainer_state

    path = _existing(path)
    if sharded := _sharded(path):
        return ModelConfig.from_dict(read_trainer_state(sharded, verify=False)["model_config"])
    if _is_hf_dir(path):
        return config_from_hf(json.loads((path / "config.json").read_text()))
    payload = read_checkpoint(_checkpoint_file(path), verify=False)  # memory-mapped: no copy
    return ModelConfig.from_dict(payload["model_config"])


def _existing(path: str | Path) -> Path:
    path = Path(path)
    if not path.exists():
        raise CheckpointError(
            f"{path} does not exist: give a run directory, a checkpoint or a Hugging Face directory"
        )
    return path


def _is_hf_dir(path: Path) -> bool:
    return (path / "config.json").is_file() and not (path / "checkpoints").is_dir()


def _sharded(path: Path) -> Path | None:
    """A sharded checkpoint at path, or a run directory's best/ (else last/) when the run has no
    single-file checkpoint (consolidate writes one beside the shards)."""
    if find_checkpoint(path, NAMES, sharded=False):
        return None
    return find_checkpoint(path, NAMES, sharded=True)


def _checkpoint_file(path: Path) -> Path:
    if found := find_checkpoint(path, NAMES, sharded=False):
        return found
    raise CheckpointError(
        no_checkpoint_message(path, NAMES, sharded=False)
        + ", a sharded checkpoint, or a Hugging Face directory with config.json"
    )


def _run_dir_of(checkpoint: Path) -> Path | None:
    """.../<run>/checkpoints/<checkpoint> -> <run>; None for a checkpoint outside a run."""
    run_dir = checkpoint.parent.parent
    in_run = checkpoint.parent.name == "checkpoints" and (run_dir / "metrics.jsonl").is_file()
    return run_dir if in_run else None


# ------------------------------------------------------------------ trainer.init_from
def check_init_from(config: ModelConfig, source: str) -> None:
    """Refuse, before any data is read, init_from weights whose shapes differ from a model of
    `config`: a ConfigError names every such parameter with both shapes. A vocab_size of None
    (it follows the data) is checked once the data is prepared (load_init_weights)."""
    try:
        theirs = weights_config(source)
    except CheckpointError as error:
        raise ConfigError(f"trainer.init_from={source!r}: {error}") from error
    if config.vocab_size is None:
        config = dataclasses.replace(config, vocab_size=theirs.vocab_size)
    _check_shapes(config, theirs, source)


def load_init_weights(config: ModelConfig, source: str, vocabulary: Vocabulary | None) -> Weights:
    """trainer.init_from's weights for a model of `config` whose data has `vocabulary`: the
    shapes must agree (ConfigError naming both), and so must the vocabularies, or the same ids
    would mean other tokens (ConfigError naming both maps)."""
    try:
        weights = load_weights(source)
    except CheckpointError as error:
        raise ConfigError(f"trainer.init_from={source!r}: {error}") from error
    _check_shapes(config, weights.model.config, source)
    if (
        vocabulary is not None
        and weights.vocabulary is not None
        and weights.vocabulary != vocabulary
    ):
        raise ConfigError(
            f"trainer.init_from={source!r} was trained with the vocabulary {weights.vocabulary!r}, "
            f"this run's data gives {vocabulary!r}: the same ids would mean other tokens "
            "(train on data that gives the same vocabulary, or both with data.vocabulary=full)"
        )
    return weights


def _check_shapes(config: ModelConfig, theirs: ModelConfig, source: str) -> None:
    with torch.device("meta"):
        ours_state, theirs_state = GptOss(config).state_dict(), GptOss(theirs).state_dict()
    problems = [
        f"{name}: {tuple(ours_state[name].shape)} in this model, "
        f"{tuple(theirs_state[name].shape)} there"
        for name in ours_state
        if name in theirs_state and ours_state[name].shape != theirs_state[name].shape
    ]
    problems += [f"{name}: only in this model" for name in ours_state if name not in theirs_state]
    problems += [f"{name}: only there" for name in theirs_state if name not in ours_state]
    if problems:
        there = theirs.to_dict()
        differ = {k: (v, there.get(k)) for k, v in config.to_dict().items() if v != there.get(k)}
        raise ConfigError(
            f"trainer.init_from={source!r} does not fit the model: {'; '.join(problems[:6])}"
            + (f" (+{len(problems) - 6} more)" if len(problems) > 6 else "")
            + f". Config fields that differ (this model, there): {differ}"
        )


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
