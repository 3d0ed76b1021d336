"""Our checkpoints: one torch file per snapshot, written atomically; and load_model for any
checkpoint a user may point at (ours, a run directory, or a Hugging Face directory)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from gpt_oss.model.config import ModelConfig
from gpt_oss.model.hf import CheckpointError, build_with_state, hf_vocabulary, import_hf
from gpt_oss.model.model import GptOss
from gpt_oss.model.tokenizer import VOCAB_SIZE
from gpt_oss.model.vocabulary import Vocabulary, VocabularyError, vocabulary_from_dict

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
    """Write model weights and config plus any training state (optimizer, step, ...).

    state["vocabulary"] (Vocabulary.to_dict(), plain data) is the map from o200k ids to the
    model's ids, which load_with_vocabulary gives back to generate and evaluate.
    """
    payload = {"format": FORMAT, "model_config": model.config.to_dict(), "model": model.state_dict(), **state}
    return atomic_save(payload, path)


def checkpoint_vocabulary(payload: dict[str, Any], where: str | Path) -> Vocabulary | None:
    """The vocabulary stored with a checkpoint: its map when it has one, else the full one for
    a 201088-id model; None for a model of raw ids (no map, another size: e.g. a test model).
    CheckpointError when the map is damaged or does not fit the model's vocab_size."""
    vocab_size = payload["model_config"].get("vocab_size")
    if payload.get("vocabulary") is None:
        return vocabulary_from_dict(None) if vocab_size == VOCAB_SIZE else None
    try:
        vocabulary = vocabulary_from_dict(payload["vocabulary"])
    except VocabularyError as error:
        raise CheckpointError(f"{where}: its vocabulary is unusable: {error}") from error
    if vocabulary.size != vocab_size:
        raise CheckpointError(
            f"{where}: its {vocabulary.kind} vocabulary has {vocabulary.size} ids but the model's "
            f"vocab_size is {vocab_size}"
        )
    return vocabulary


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


def load_vocabulary(path: str | Path) -> Vocabulary | None:
    """The vocabulary of what load_model(path) loads: how to turn text into its input ids and
    its output ids into text (`vocabulary.encode`, `vocabulary.decode`); None for a model of
    raw ids (no map stored and not o200k's 201088 ids)."""
    path = Path(path)
    if path.is_dir() and (path / "config.json").is_file():
        return hf_vocabulary(path)
    file = resolve_checkpoint(path)
    return checkpoint_vocabulary(read_checkpoint(file, map_location="meta"), file)


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
    path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None, **overrides
) -> tuple[GptOss, dict[str, Any]]:
    """load_model's model in eval mode, and the run config stored with it ({} if none)."""
    model, _, run_config = load_with_vocabulary(path, device, dtype, **overrides)
    return model, run_config


def load_with_vocabulary(
    path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None, **overrides
) -> tuple[GptOss, Vocabulary | None, dict[str, Any]]:
    """load_model's model in eval mode, its vocabulary (see load_vocabulary) and the run config
    stored with it ({} if none), from one read of the checkpoint.

    A Hugging Face directory loads onto the device (MXFP4 experts dequantized there tensor by
    tensor, gpt_oss.model.hf). Our checkpoints are read on the CPU, so their optimizer state never
    reaches the GPU, and only the weights move, cast to dtype when given.
    """
    path = Path(path)
    if path.is_dir() and (path / "config.json").is_file():
        model = import_hf(path, dtype=dtype or torch.float32, device=device, **overrides)
        return model.eval(), hf_vocabulary(path), {}
    file = resolve_checkpoint(path)
    payload = read_checkpoint(file, map_location="cpu")
    vocabulary = checkpoint_vocabulary(payload, file)
    config = ModelConfig.from_dict(payload["model_config"] | overrides)
    state = {
        k: v.to(device, dtype if dtype is not None and v.is_floating_point() else v.dtype)
        for k, v in payload["model"].items()
    }
    model = build_with_state(config, state, device).eval()
    return model, vocabulary, payload.get("run_config") or {}
