"""Hugging Face format: export to a directory GptOssForCausalLM loads, import such a directory
(release MXFP4 checkpoints included) back. The only key change is the "model." prefix."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from gpt_oss.model.config import ConfigError, ModelConfig
from gpt_oss.model.model import GptOss
from gpt_oss.model.tokenizer import ENDOFTEXT_ID, VOCAB_SIZE
from gpt_oss.model.vocabulary import (
    FullVocabulary,
    Vocabulary,
    VocabularyError,
    vocabulary_from_dict,
)
from gpt_oss.training.checkpoint import CheckpointError, build_with_state

FP4_VALUES = (
    0.0,
    0.5,
    1.0,
    1.5,
    2.0,
    3.0,
    4.0,
    6.0,
    -0.0,
    -0.5,
    -1.0,
    -1.5,
    -2.0,
    -3.0,
    -4.0,
    -6.0,
)
SHARD_BYTES = 4 * 2**30
# Beside config.json in an export of a compact-vocabulary model: Vocabulary.to_dict(), the
# o200k ids the model's ids stand for (README: "Tokenizing for a compact export").
VOCABULARY_FILE = "compact_vocabulary.json"

# Our field -> Hugging Face GptOssConfig field, where the names differ.
_HF_NAMES = {
    "num_experts": "num_local_experts",
    "experts_per_token": "num_experts_per_tok",
    "tie_embeddings": "tie_word_embeddings",
}
_SHARED_FIELDS = (
    "vocab_size hidden_size intermediate_size num_hidden_layers num_attention_heads "
    "num_key_value_heads head_dim sliding_window layer_types max_position_embeddings "
    "rms_norm_eps swiglu_limit swiglu_alpha initializer_range router_aux_loss_coef"
).split()
# transformers' GptOssConfig defaults, which it uses for a key a config.json leaves out (they
# are not ours: 36 layers and 128 experts is gpt-oss-120b). None: derived, as transformers does.
HF_DEFAULTS = {
    "vocab_size": 201088,
    "hidden_size": 2880,
    "intermediate_size": 2880,
    "num_hidden_layers": 36,
    "num_attention_heads": 64,
    "num_key_value_heads": 8,
    "head_dim": 64,
    "num_local_experts": 128,
    "num_experts_per_tok": 4,
    "sliding_window": 128,
    "layer_types": None,
    "max_position_embeddings": 131072,
    "rms_norm_eps": 1e-5,
    "swiglu_limit": 7.0,
    "swiglu_alpha": 1.702,
    "initializer_range": 0.02,
    "router_aux_loss_coef": 0.001,
    "tie_word_embeddings": False,
}
HF_ROPE_DEFAULTS = {  # no rope_parameters (nor rope_scaling) at all: the release's YaRN
    "rope_type": "yarn",
    "factor": 32.0,
    "beta_fast": 32.0,
    "beta_slow": 1.0,
    "truncate": False,
    "original_max_position_embeddings": 4096,
}
# Keys that change neither the weights nor the logits (in transformers' GptOss either):
# generation, output and bookkeeping switches, and the stored dtype (import_hf takes a dtype).
_NO_EFFECT_KEYS = frozenset(
    "transformers_version torch_dtype dtype _name_or_path bos_token_id eos_token_id pad_token_id "
    "use_cache output_router_logits output_attentions output_hidden_states return_dict "
    "id2label label2id problem_type tokenizer_class chunk_size_feed_forward hidden_act".split()
)
# Keys whose one value is what this model implements; another value is refused.
_REQUIRED_VALUES = {
    "model_type": "gpt_oss",
    "attention_bias": True,  # q, k, v and o projections all have biases
    "attention_dropout": 0.0,  # no dropout anywhere
    "is_encoder_decoder": False,
    "partial_rotary_factor": 1.0,  # RoPE rotates the whole head
}
_ROPE_NAMES = {  # our field -> its name in config.json's rope dict (error messages)
    "rope_scaling_factor": "factor",
    "rope_ntk_beta": "beta_fast",
    "rope_ntk_alpha": "beta_slow",
    "initial_context_length": "original_max_position_embeddings",
}
_ARCHITECTURES = ("GptOssForCausalLM", "GptOssModel")
_QUANTIZATIONS = ("mxfp4",)  # read_hf_state_dict dequantizes *_blocks / *_scales


def hf_config(config: ModelConfig, vocabulary: Vocabulary | None = None) -> dict:
    """config.json for transformers' GptOssForCausalLM (config_from_hf reads it back equal):
    vocab_size is the model's, compact or full; eos_token_id is <|endoftext|>'s id in it."""
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
        "rope_theta": config.rope_theta,
        "rope_scaling": _hf_rope(config),
    }
    if vocabulary is not None:  # our models see <|endoftext|> before every document
        out |= dict.fromkeys(
            ("bos_token_id", "eos_token_id", "pad_token_id"), vocabulary.endoftext_id
        )
    elif config.vocab_size > ENDOFTEXT_ID:
        out |= dict.fromkeys(("bos_token_id", "eos_token_id", "pad_token_id"), ENDOFTEXT_ID)
    return out


def _hf_rope(config: ModelConfig) -> dict:
    if config.rope_scaling_factor <= 1.0:  # yarn_inverse_frequencies: plain RoPE
        return {"rope_type": "default"}
    return {
        "rope_type": "yarn",
        "factor": config.rope_scaling_factor,
        "beta_fast": config.rope_ntk_beta,
        "beta_slow": config.rope_ntk_alpha,
        "truncate": config.rope_truncate,
        "original_max_position_embeddings": config.initial_context_length,
    }


def config_from_hf(values: dict, **overrides) -> ModelConfig:
    """ModelConfig from a Hugging Face (or release) config.json dict, read as transformers reads
    it (its defaults for absent keys). Every key is honoured or refused: CheckpointError names
    a key whose value this model cannot reproduce, and any key it does not know."""
    unread = dict(values)
    _check_fixed_keys(unread)
    ours = {name: unread.pop(name, HF_DEFAULTS.get(name)) for name in _SHARED_FIELDS}
    ours |= {o: unread.pop(h, HF_DEFAULTS[h]) for o, h in _HF_NAMES.items()}
    if ours["num_key_value_heads"] is None:  # transformers: multi-head attention
        ours["num_key_value_heads"] = ours["num_attention_heads"]
    if ours["head_dim"] is None:
        ours["head_dim"] = ours["hidden_size"] // ours["num_attention_heads"]
    ours |= _rope_fields(unread, ours["max_position_embeddings"])
    _check_release_names(unread, ours)
    if ours["sliding_window"] is None:  # transformers: no window at all
        if "sliding_attention" in (ours["layer_types"] or ["sliding_attention"]):
            raise CheckpointError(
                "config.json has sliding_window=null with sliding_attention layers; this model "
                "needs an integer window (or every layer full_attention)"
            )
        del ours["sliding_window"]
    unknown = sorted(set(unread) - _NO_EFFECT_KEYS)
    if unknown:
        raise CheckpointError(
            f"config.json keys {unknown} are not Hugging Face GptOss settings this model can "
            "honour; remove them or convert the model first"
        )
    try:
        return ModelConfig(**(ours | overrides))
    except (ConfigError, TypeError) as error:
        message = str(error)
        for ours_name, hf_name in (_HF_NAMES | _ROPE_NAMES).items():
            message = message.replace(f"model.{ours_name}=", f"{hf_name} (model.{ours_name})=")
        raise CheckpointError(f"config.json describes an invalid model: {message}") from error


def _check_fixed_keys(unread: dict) -> None:
    """Pop the keys with one valid value (or a few), refusing any other value by name."""
    for key, valid in _REQUIRED_VALUES.items():
        value = unread.pop(key, valid)
        same_kind = isinstance(value, bool) == isinstance(valid, bool)  # 1 is not True here
        if value != valid or not same_kind:
            raise CheckpointError(f"config.json {key}={value!r} is not supported: use {valid!r}")
    architectures = unread.pop("architectures", None) or []
    if not isinstance(architectures, list) or any(a not in _ARCHITECTURES for a in architectures):
        raise CheckpointError(
            f"config.json architectures={architectures} is not supported: use {_ARCHITECTURES}"
        )
    quantization = unread.pop("quantization_config", None) or {"quant_method": "mxfp4"}
    method = quantization.get("quant_method")
    if method not in _QUANTIZATIONS:
        raise CheckpointError(
            f"config.json quantization_config.quant_method={method!r} is not supported: valid are "
            f"{_QUANTIZATIONS} (or no quantization)"
        )


def _check_release_names(unread: dict, ours: dict) -> None:
    """The release's own names (read by openai/gpt-oss, ignored by transformers) must agree."""
    release = {
        "experts_per_token": ours["experts_per_token"],
        "initial_context_length": ours.get("initial_context_length"),
    }
    for key, read in release.items():
        value = unread.pop(key, read)
        if read is not None and value != read:
            raise CheckpointError(
                f"config.json {key}={value!r} disagrees with what transformers reads ({read!r})"
            )


def _rope_fields(unread: dict, max_positions: int) -> dict:
    """Our rope_* fields from rope_parameters (transformers 5) or rope_scaling (before)."""
    rope, legacy = unread.pop("rope_parameters", None), unread.pop("rope_scaling", None)
    if rope is not None and legacy is not None and rope != legacy:
        raise CheckpointError(
            f"config.json has both rope_parameters={rope} and rope_scaling={legacy}: keep one"
        )
    source = "rope_parameters" if rope is not None else "rope_scaling"
    if rope is None and legacy is None:
        rope = HF_ROPE_DEFAULTS
    rope = dict(rope if rope is not None else legacy)  # {}: plain RoPE, as in transformers
    kind = _one_value(rope, rope, "rope_type", None, alias="type") or "default"
    ours = {"rope_theta": _one_value(rope, unread, "rope_theta", 150000.0)}
    if _one_value(rope, unread, "partial_rotary_factor", 1.0) != 1.0:
        raise CheckpointError("config.json partial_rotary_factor must be 1.0 (RoPE on whole heads)")
    if kind == "yarn":
        ours |= _yarn_fields(rope, unread, max_positions)
    elif kind == "default":
        ours["rope_scaling_factor"] = 1.0  # plain RoPE
    else:
        raise CheckpointError(
            f"config.json rope_type={kind!r} is not supported: valid are 'yarn' and 'default'"
        )
    if rope:
        raise CheckpointError(
            f"config.json {source} keys {sorted(rope)} are not supported with rope_type={kind!r}"
        )
    return ours


def _one_value(rope: dict, unread: dict, key: str, default: Any, alias: str | None = None) -> Any:
    """Pop a setting given in the rope dict or under another name (transformers takes either);
    two different values are refused."""
    inside, outside = rope.pop(key, None), unread.pop(alias or key, None)
    if inside is not None and outside is not None and inside != outside:
        raise CheckpointError(
            f"config.json gives {alias or key}={outside!r} and rope {key}={inside!r}: keep one"
        )
    value = inside if inside is not None else outside
    return default if value is None else value


def _yarn_fields(rope: dict, unread: dict, max_positions: int) -> dict:
    """YaRN as transformers computes it (_compute_yarn_parameters): its defaults included."""
    original = _one_value(rope, unread, "original_max_position_embeddings", max_positions)
    factor = rope.pop("factor", None)
    factor = max_positions / original if factor is None else factor
    if not factor >= 1.0:
        raise CheckpointError(f"config.json rope factor={factor!r} is invalid: YaRN needs >= 1")
    truncate = rope.pop("truncate", True)  # absent: transformers rounds the ramp's ends
    if not isinstance(truncate, bool):
        raise CheckpointError(f"config.json rope truncate={truncate!r} is invalid: true or false")
    fields = {
        "rope_scaling_factor": float(factor),
        "rope_ntk_beta": rope.pop("beta_fast", None) or 32.0,  # transformers: `or 32`
        "rope_ntk_alpha": rope.pop("beta_slow", None) or 1.0,
        "initial_context_length": original,
        "rope_truncate": truncate,
    }
    _check_attention_factor(rope, factor)
    return fields


def _check_attention_factor(rope: dict, factor: float) -> None:
    """YaRN's cos/sin scale must be the one this model applies, 0.1 * ln(factor) + 1."""
    given = rope.pop("attention_factor", None)
    mscale, mscale_all_dim = rope.pop("mscale", None), rope.pop("mscale_all_dim", None)

    def get_mscale(scale: float, m: float = 1.0) -> float:
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    if given is None and mscale and mscale_all_dim:
        given = get_mscale(factor, mscale) / get_mscale(factor, mscale_all_dim)
    given = get_mscale(factor) if given is None else given
    if not math.isclose(given, get_mscale(factor), rel_tol=1e-9):
        raise CheckpointError(
            f"config.json rope attention_factor (or mscale/mscale_all_dim) gives {given}; this "
            f"model scales YaRN's cos and sin by 0.1 * ln(factor) + 1 = {get_mscale(factor)}"
        )


def export_hf(
    model: GptOss,
    directory: str | Path,
    dtype: torch.dtype | None = None,
    max_shard_size: int | str | None = None,
    vocabulary: Vocabulary | None = None,
) -> Path:
    """Write config.json and safetensors weights that GptOssForCausalLM.from_pretrained loads:
    model.safetensors, or shards of at most max_shard_size (bytes or "5GB"; default SHARD_BYTES)
    with model.safetensors.index.json, written by huggingface_hub's own sharding writer.

    vocabulary: the model's (see checkpoint.load_vocabulary); a compact one is written beside
    config.json as compact_vocabulary.json, which import_hf and load_model read back.
    """
    from huggingface_hub import save_torch_state_dict

    directory = Path(directory)
    if vocabulary is not None and vocabulary.size != model.config.vocab_size:
        raise CheckpointError(
            f"the {vocabulary.kind} vocabulary has {vocabulary.size} ids but the model's "
            f"vocab_size is {model.config.vocab_size}"
        )
    if any(b.mlp.router.selection_bias.any() for b in model.layers):
        raise CheckpointError(
            "this model routes with a learned selection bias (balancing=bias), which Hugging "
            "Face GptOss cannot represent; export would change its outputs"
        )
    config = hf_config(model.config, vocabulary)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for name, tensor in model.state_dict().items():
        if name.endswith("selection_bias") or (
            name == "lm_head.weight" and model.config.tie_embeddings
        ):
            continue
        key = name if name.startswith("lm_head.") else f"model.{name}"
        tensors[key] = tensor.detach().to(dtype or tensor.dtype).contiguous().cpu()
    config["torch_dtype"] = str(dtype or model.lm_head.weight.dtype).removeprefix("torch.")
    save_torch_state_dict(tensors, directory, max_shard_size=max_shard_size or SHARD_BYTES)
    vocabulary_path = directory / VOCABULARY_FILE
    if vocabulary is not None and vocabulary.kind == "compact":
        vocabulary_path.write_text(json.dumps(vocabulary.to_dict()))
    else:
        vocabulary_path.unlink(missing_ok=True)  # a stale map must not outlive its model
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    return directory


def hf_vocabulary(directory: str | Path) -> Vocabulary | None:
    """The vocabulary of a Hugging Face directory: compact_vocabulary.json when there is one
    (our export of a compact model), else the full o200k_harmony one for a 201088-id model
    (release weights); None for a model of raw ids. CheckpointError when the map is damaged
    or does not fit config.json's vocab_size."""
    directory = Path(directory)
    vocab_size = json.loads((directory / "config.json").read_text()).get("vocab_size")
    path = directory / VOCABULARY_FILE
    if not path.is_file():
        return FullVocabulary() if vocab_size == VOCAB_SIZE else None
    try:
        vocabulary = vocabulary_from_dict(json.loads(path.read_text()))
    except (VocabularyError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{path} is unusable: {error}") from error
    if vocabulary.size != vocab_size:
        raise CheckpointError(
            f"{path} holds {vocabulary.size} ids but config.json says vocab_size={vocab_size}"
        )
    return vocabulary


def dequantize_mxfp4(
    blocks: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype = torch.bfloat16
) -> torch.Tensor:
    """MXFP4 -> dense. blocks (..., G, 16) uint8, two fp4 codes a byte, low nibble first;
    scales (..., G) uint8 E8M0 exponents (2^(s - 127)), one per 32 values. Returns (..., G * 32)."""
    if blocks.shape[:-1] != scales.shape:
        raise CheckpointError(
            f"MXFP4 blocks {tuple(blocks.shape)} do not match scales {tuple(scales.shape)}"
        )
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
        raise CheckpointError(
            f"{index} is not a safetensors index (a weight_map): {error}"
        ) from error
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


def read_hf_state_dict(
    directory: Path, dtype: torch.dtype, device: str | torch.device = "cpu"
) -> dict[str, torch.Tensor]:
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
            state[name] = tensor.to(
                device=device, dtype=dtype if tensor.is_floating_point() else tensor.dtype
            )
    return state


def _read(path: Path, key: str) -> torch.Tensor:
    with _open_shard(path) as f:
        try:
            return f.get_tensor(key)
        except SafetensorError as error:
            raise CheckpointError(
                f"{path} is truncated or corrupt: tensor {key}: {error}"
            ) from error


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
    blocks: torch.Tensor,
    scales: torch.Tensor,
    dtype: torch.dtype,
    device,
    experts_per_chunk: int = 4,
) -> torch.Tensor:
    """(E, rows, G, 16) codes -> dense (E, G * 32, rows) in our layout, a few experts at a time
    (the dequantization temporaries take 16 bytes per value)."""
    if blocks.shape[:-1] != scales.shape:
        raise CheckpointError(
            f"MXFP4 blocks {tuple(blocks.shape)} do not match scales {tuple(scales.shape)}"
        )
    experts, rows, groups = scales.shape
    out = torch.empty(experts, groups * 32, rows, dtype=dtype, device=device)
    for start in range(0, experts, experts_per_chunk):
        chunk = slice(start, start + experts_per_chunk)
        dense = dequantize_mxfp4(
            blocks[chunk].to(device), scales[chunk].to(device), dtype
        )  # (e, rows, cols)
        out[chunk] = dense.transpose(1, 2)
    return out


def import_hf(
    directory: str | Path,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    **overrides,
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
