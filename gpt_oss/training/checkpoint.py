"""Our checkpoints: one torch file per snapshot, written atomically; and load_model for any
checkpoint a user may point at (ours, a run directory, or a Hugging Face directory)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from gpt_oss.model.config import ModelConfig
from gpt_oss.model.hf import CheckpointError, build_with_state, import_hf
from gpt_oss.model.model import GptOss

FORMAT = "gpt-oss-lab/1"


def atomic_save(payload: Any, path: str | Path) -> Path:
    """torch.save to a temporary file beside `path`, fsync, then rename over it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def save_checkpoint(path: str | Path, model: GptOss, **state: Any) -> Path:
    """Write model weights and config plus any training state (optimizer, step, ...)."""
    payload = {"format": FORMAT, "model_config": model.config.to_dict(), "model": model.state_dict(), **state}
    return atomic_save(payload, path)


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load and check one of our checkpoint files; errors name the file and what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as error:  # a truncated or foreign file: say which file
        raise CheckpointError(f"checkpoint {path} is unreadable or corrupt: {error}") from error
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a gpt-oss-lab checkpoint (expected format {FORMAT})")
    return payload


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint file from a file, a run directory or its checkpoints/ folder."""
    path = Path(path)
    if path.is_file():
        return path
    for folder in (path / "checkpoints", path):
        for name in ("best.pt", "last.pt"):
            if (folder / name).is_file():
                return folder / name
    raise CheckpointError(
        f"no checkpoint at {path}: expected a .pt file, a run directory with checkpoints/best.pt "
        "or checkpoints/last.pt, or a Hugging Face directory with config.json"
    )


def load_model(
    path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None, **overrides
) -> GptOss:
    """A model from one of our checkpoints (file or run dir) or a Hugging Face directory.

    overrides replace config fields that do not change the weights (attn_impl, moe_impl, ...).
    """
    return load_with_run_config(path, device, dtype, **overrides)[0]


def load_with_run_config(
    path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None, **overrides
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
    payload = read_checkpoint(resolve_checkpoint(path), map_location="cpu")
    config = ModelConfig.from_dict(payload["model_config"] | overrides)
    state = {
        k: v.to(device, dtype if dtype is not None and v.is_floating_point() else v.dtype)
        for k, v in payload["model"].items()
    }
    return build_with_state(config, state, device).eval(), payload.get("run_config") or {}
