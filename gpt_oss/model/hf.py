"""Hugging Face format: export to a directory GptOssForCausalLM loads, import such a directory
(release MXFP4 checkpoints included) back. The only key change is the "model." prefix."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from gpt_oss.model.config import ModelConfig
from gpt_oss.model.model import GptOss
from gpt_oss.model.tokenizer import ENDOFTEXT_ID
from gpt_oss.training.checkpoint import CheckpointError, build_with_state

FP4_VALUES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0)
SHARD_BYTES = 4 * 2**30

# Our field -> Hugging Face GptOssConfig field, where the names differ.
_HF_NAMES = {"num_experts": "num_local_experts", "experts_per_token": "num_experts_per_tok"}
_SHARED_FIELDS = (
    "vocab_size hidden_size intermediate_size num_hidden_layers num_attention_heads "
    "num_key_value_heads head_dim sliding_window layer_types max_position_embeddings "
    "rope_theta rms_norm_eps swiglu_limit initializer_range"
).split()


def hf_config(config: ModelConfig) -> dict:
    """config.json for transformers' GptOssForCausalLM."""
    if config.qk_norm or config.scale_embeddings:
        raise CheckpointError(
            "Hugging Face GptOss has no qk_norm or scale_embeddings: export needs both false "
            f"(got qk_norm={config.qk_norm}, scale_embeddings={config.scale_embeddings})"
        )
    out = {name: getattr(config, name) for name in _SHARED_FIELDS}
    out |= {hf: getattr(config, ours) for ours, hf in _HF_NAMES.items()}
    out |= {
        "architectures": ["GptOssForCausalLM"],
        "model_type": "gpt_oss",
        "attention_bias": True,
        "swiglu_alpha": config.swiglu_alpha,
        "tie_word_embeddings": config.tie_embeddings,
        "router_aux_loss_coef": config.router_aux_loss_coef,
        "rope_scaling": {
            "rope_type": "yarn",
            "factor": config.rope_scaling_factor,
            "beta_fast": config.rope_ntk_beta,
            "beta_slow": config.rope_ntk_alpha,
            "truncate": False,
            "original_max_position_embeddings": config.initial_context_length,
        },
    }
    if config.vocab_size > ENDOFTEXT_ID:
        out["eos_token_id"] = ENDOFTEXT_ID
    return out


def config_from_hf(values: dict, **overrides) -> ModelConfig:
    """ModelConfig from a Hugging Face (or release) config.json dict."""
    ours = {name: values[name] for name in _SHARED_FIELDS if name in values}
    ours |= {o: values[h] for o, h in _HF_NAMES.items() if h in values}
    rope = values.get("rope_parameters") or values.get("rope_scaling") or {}
    if "rope_theta" in rope:
        ours["rope_theta"] = rope["rope_theta"]
    if rope.get("rope_type", "yarn") == "yarn" and rope:
        ours["rope_scaling_factor"] = rope.get("factor", 32.0)
        ours["rope_ntk_beta"] = rope.get("beta_fast", 32.0)
        ours["rope_ntk_alpha"] = rope.get("beta_slow", 1.0)
        ours["initial_context_length"] = rope.get("original_max_position_embeddings", 4096)
    else:  # no rope scaling, or a kind other than YaRN: plain RoPE
        ours["rope_scaling_factor"] = 1.0
    ours["tie_embeddings"] = bool(values.get("tie_word_embeddings", False))
    return ModelConfig(**(ours | overrides))


def export_hf(model: GptOss, directory: str | Path, dtype: torch.dtype | None = None) -> Path:
    """Write config.json and safetensors shards that GptOssForCausalLM.from_pretrained loads."""
    directory = Path(directory)
    if any(b.mlp.router.selection_bias.any() for b in model.layers):
        raise CheckpointError(
            "this model routes with a learned selection bias (balancing=bias), which Hugging "
            "Face GptOss cannot represent; export would change its outputs"
        )
    config = hf_config(model.config)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for name, tensor in model.state_dict().items():
        if name.endswith("selection_bias") or (name == "lm_head.weight" and model.config.tie_embeddings):
            continue
        key = name if name.startswith("lm_head.") else f"model.{name}"
        tensors[key] = tensor.detach().to(dtype or tensor.dtype).contiguous().cpu()
    config["torch_dtype"] = str(dtype or model.lm_head.weight.dtype).removeprefix("torch.")
    _write_shards(tensors, directory)
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    return directory


def _write_shards(tensors: dict[str, torch.Tensor], directory: Path) -> None:
    shards, current, size = [], {}, 0
    for key, tensor in tensors.items():
        nbytes = tensor.numel() * tensor.element_size()
        if current and size + nbytes > SHARD_BYTES:
            shards.append(current)
            current, size = {}, 0
        current[key], size = tensor, size + nbytes
    shards.append(current)
    if len(shards) == 1:
        save_file(shards[0], directory / "model.safetensors", metadata={"format": "pt"})
        return
    weight_map = {}
    for i, shard in enumerate(shards):
        name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, directory / name, metadata={"format": "pt"})
        weight_map |= dict.fromkeys(shard, name)
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))


def dequantize_mxfp4(blocks: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """MXFP4 -> dense. blocks (..., G, 16) uint8, two fp4 codes a byte, low nibble first;
    scales (..., G) uint8 E8M0 exponents (2^(s - 127)), one per 32 values. Returns (..., G * 32)."""
    if blocks.shape[:-1] != scales.shape:
        raise CheckpointError(f"MXFP4 blocks {tuple(blocks.shape)} do not match scales {tuple(scales.shape)}")
    table = torch.tensor(FP4_VALUES, dtype=torch.float32, device=blocks.device)
    blocks = blocks.to(torch.uint8)
    codes = torch.stack([blocks & 0x0F, blocks >> 4], dim=-1).long()  # (..., G, 16, 2)
    values = table[codes].flatten(-2)  # (..., G, 32)
    values = torch.ldexp(values, scales.to(torch.int32).unsqueeze(-1) - 127)
    return values.flatten(-2).to(dtype)  # (..., G * 32)


def _safetensor_files(directory: Path) -> list[Path]:
    """The shards of a directory: those its index names (inside the directory only), else all."""
    index = directory / "model.safetensors.index.json"
    if not index.exists():
        files = sorted(directory.glob("*.safetensors"))
        if not files:
            raise CheckpointError(f"{directory} holds no *.safetensors files")
        return files
    try:
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as error:
        raise CheckpointError(f"{index} is not a safetensors index (a weight_map): {error}") from error
    return [_shard_inside(directory, index, name) for name in names]


def _shard_inside(directory: Path, index: Path, name: object) -> Path:
    """directory/name, refused unless it is a file inside `directory` (no "..", absolute path
    or link out)."""
    root = directory.resolve()
    path = (directory / str(name)).resolve()
    if not isinstance(name, str) or path.parent != root or Path(name).is_absolute():
        raise CheckpointError(
            f"{index} names {name!r}, which is not a file inside {directory}: refused "
            "(an index may only name shards beside it)"
        )
    if not path.is_file():
        raise CheckpointError(f"{index} names {name!r}, which does not exist in {directory}")
    return path


def read_hf_state_dict(directory: Path, dtype: torch.dtype, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """All tensors of a Hugging Face GptOss directory under our names, MXFP4 dequantized.

    Tensors are read one at a time (safetensors memory-maps the shards) and go straight to
    `device` in `dtype`, so host memory holds about one tensor, not the whole checkpoint
    (13 GB for gpt-oss-20b); experts dequantize a few at a time to bound the temporaries.
    """
    files = {}
    for path in _safetensor_files(directory):
        with _open_shard(path) as f:
            files |= dict.fromkeys(f.keys(), path)
    state = {}
    for key in files:
        name = key.removeprefix("model.")
        if name.endswith("_scales"):
            continue
        if name.endswith("_blocks"):
            scales_key = key.removesuffix("_blocks") + "_scales"
            if scales_key not in files:
                raise CheckpointError(f"{key} has no matching {scales_key}")
            blocks, scales = _read(files[key], key), _read(files[scales_key], scales_key)
            state[name.removesuffix("_blocks")] = _dequantize_experts(blocks, scales, dtype, device)
        else:
            tensor = _read(files[key], key)
            state[name] = tensor.to(device=device, dtype=dtype if tensor.is_floating_point() else tensor.dtype)
    return state


def _read(path: Path, key: str) -> torch.Tensor:
    with _open_shard(path) as f:
        try:
            return f.get_tensor(key)
        except SafetensorError as error:
            raise CheckpointError(f"{path} is truncated or corrupt: tensor {key}: {error}") from error


@contextmanager
def _open_shard(path: Path) -> Iterator[Any]:
    """safe_open, with a truncated or foreign file reported as a CheckpointError naming it."""
    try:
        handle = safe_open(str(path), framework="pt", device="cpu")
    except (SafetensorError, OSError) as error:
        raise CheckpointError(
            f"{path} is not a readable safetensors file (truncated or corrupt?): {error}"
        ) from error
    with handle as f:
        yield f


def _dequantize_experts(
    blocks: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype, device, experts_per_chunk: int = 4
) -> torch.Tensor:
    """(E, rows, G, 16) codes -> dense (E, G * 32, rows) in our layout, a few experts at a time
    (the dequantization temporaries take 16 bytes per value)."""
    if blocks.shape[:-1] != scales.shape:
        raise CheckpointError(f"MXFP4 blocks {tuple(blocks.shape)} do not match scales {tuple(scales.shape)}")
    experts, rows, groups = scales.shape
    out = torch.empty(experts, groups * 32, rows, dtype=dtype, device=device)
    for start in range(0, experts, experts_per_chunk):
        chunk = slice(start, start + experts_per_chunk)
        dense = dequantize_mxfp4(blocks[chunk].to(device), scales[chunk].to(device), dtype)  # (e, rows, cols)
        out[chunk] = dense.transpose(1, 2)
    return out


def import_hf(
    directory: str | Path, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu", **overrides
) -> GptOss:
    """A GptOss with the weights of a Hugging Face directory (dense or MXFP4 experts)."""
    directory = Path(directory)
    config_path = directory / "config.json"
    if not config_path.exists():
        raise CheckpointError(f"{directory} is not a Hugging Face model directory: no config.json")
    config = config_from_hf(json.loads(config_path.read_text()), **overrides)
    state = read_hf_state_dict(directory, dtype, device)
    if config.tie_embeddings:
        state.setdefault("lm_head.weight", state["embed_tokens.weight"])
    return build_with_state(config, state, device)
