"""A model from any checkpoint a user may point at: one of ours (a .pt file or a run
directory) or a Hugging Face directory (release MXFP4 checkpoints included). The one module
that knows both formats; training/checkpoint.py and model/hf.py each know one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from gpt_oss.model.config import ModelConfig
from gpt_oss.model.hf import hf_vocabulary, import_hf
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


def load_model(
    path: str | Path,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    **overrides,
) -> GptOss:
    """A model in eval mode from one of our checkpoints (file or run dir, best.pt before
    last.pt) or a Hugging Face directory; CheckpointError naming the path otherwise.

    overrides replace config fields that do not change the weights (attn_impl, moe_impl, ...).
    """
    return load_with_run_config(path, device, dtype, **overrides)[0]


def load_vocabulary(path: str | Path) -> Vocabulary | None:
    """The vocabulary of what load_model(path) loads: how to turn text into its input ids and
    its output ids into text (`vocabulary.encode`, `vocabulary.decode`); None for a model of
    raw ids (no map stored and not o200k's 201088 ids). Reads no tensors."""
    path = Path(path)
    if path.is_dir() and (path / "config.json").is_file():
        return hf_vocabulary(path)
    file = _checkpoint_file(path)
    return checkpoint_vocabulary(read_checkpoint(file, map_location="meta", verify=False), file)


def load_text_vocabulary(path: str | Path) -> Vocabulary:
    """load_vocabulary(path), read without the weights; CheckpointError for a model of raw ids,
    which has no way to read text."""
    vocabulary = load_vocabulary(path)
    if vocabulary is None:
        raise CheckpointError(
            f"{path} stores no vocabulary and is not a 201088-id o200k_harmony model: its ids "
            "cannot be read as text"
        )
    return vocabulary


def load_with_run_config(
    path: str | Path,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    **overrides,
) -> tuple[GptOss, dict[str, Any]]:
    """load_model's model in eval mode, and the run config stored with it ({} if none)."""
    model, _, run_config = load_with_vocabulary(path, device, dtype, **overrides)
    return model, run_config


def load_with_vocabulary(
    path: str | Path,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    **overrides,
) -> tuple[GptOss, Vocabulary | None, dict[str, Any]]:
    """load_model's model in eval mode, its vocabulary (see load_vocabulary) and the run config
    stored with it ({} if none), from one read of the checkpoint.

    A Hugging Face directory loads onto the device (MXFP4 experts dequantized there tensor by
    tensor, gpt_oss.model.hf). Our checkpoints are read on the CPU, so their optimizer state
    never reaches the GPU, and only the weights move, cast to dtype when given.
    """
    path = Path(path)
    if path.is_dir() and (path / "config.json").is_file():
        model = import_hf(path, dtype=dtype or torch.float32, device=device, **overrides)
        return model.eval(), hf_vocabulary(path), {}
    file = _checkpoint_file(path)
    payload = read_checkpoint(file, map_location="cpu")
    vocabulary = checkpoint_vocabulary(payload, file)
    config = ModelConfig.from_dict(payload["model_config"] | overrides)
    state = {
        k: v.to(device, dtype if dtype is not None and v.is_floating_point() else v.dtype)
        for k, v in payload["model"].items()
    }
    model = build_with_state(config, state, device).eval()
    return model, vocabulary, payload.get("run_config") or {}


def _checkpoint_file(path: Path) -> Path:
    if found := find_checkpoint(path, ("best", "last"), sharded=False):
        return found
    if sharded := find_checkpoint(path, ("best", "last"), sharded=True):
        raise CheckpointError(
            f"{sharded} is a sharded checkpoint (trainer.parallel=ddp or fsdp): write it as one "
            f"file first with `python -m gpt_oss.consolidate {path}`"
        )
    raise CheckpointError(
        no_checkpoint_message(path, ("best", "last"), sharded=False)
        + ", or a Hugging Face directory with config.json"
    )
