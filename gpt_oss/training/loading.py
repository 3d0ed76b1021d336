"""A model from any checkpoint a user may point at: one of ours (a .pt file or a run
directory) or a Hugging Face directory (release MXFP4 checkpoints included). The one module
that knows both formats; training/checkpoint.py and model/hf.py each know one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from gpt_oss.model.config import ModelConfig
from gpt_oss.model.hf import import_hf
from gpt_oss.model.model import GptOss
from gpt_oss.training.checkpoint import (
    CheckpointError,
    build_with_state,
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


def load_with_run_config(
    path: str | Path,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    **overrides,
) -> tuple[GptOss, dict[str, Any]]:
    """load_model's model in eval mode, and the run config stored with it ({} if none).

    A Hugging Face directory loads onto the device (MXFP4 experts dequantized there tensor by
    tensor, gpt_oss.model.hf). Our checkpoints are read on the CPU, so their optimizer state never
    reaches the GPU, and only the weights move, cast to dtype when given.
    """
    path = Path(path)
    if path.is_dir() and (path / "config.json").is_file():
        model = import_hf(path, dtype=dtype or torch.float32, device=device, **overrides)
        return model.eval(), {}
    payload = read_checkpoint(_checkpoint_file(path), map_location="cpu")
    config = ModelConfig.from_dict(payload["model_config"] | overrides)
    state = {
        k: v.to(device, dtype if dtype is not None and v.is_floating_point() else v.dtype)
        for k, v in payload["model"].items()
    }
    return build_with_state(config, state, device).eval(), payload.get("run_config") or {}


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
