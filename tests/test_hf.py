"""Hugging Face format: our logits equal transformers' GptOssForCausalLM (eager attention,
float32) for every attention and expert implementation; export and import round-trip; release
MXFP4 checkpoints dequantize exactly; bad directories fail with a CheckpointError that names
the problem."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from gpt_oss.model.hf import config_from_hf, export_hf, import_hf
from gpt_oss.training.checkpoint import CheckpointError, save_checkpoint
from gpt_oss.training.loading import load_model

transformers = pytest.importorskip("transformers")

pytestmark = [
    pytest.mark.usefixtures("single_threaded"),
    # FlexAttention runs unfused (uncompiled) on the CPU; its warning says so on every call.
    pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile"),
]

TIME = 150  # longer than every window below, the release's 128 included
IDS = torch.randint(0, 1000, (2, TIME), generator=torch.Generator().manual_seed(0))

SHAPES = {
    "alternating_gqa2_top2": {},
    "head_dim64_3_layers_gqa4_top1_all_sliding": {
        "head_dim": 64,
        "num_attention_heads": 4,
        "num_key_value_heads": 1,
        "num_hidden_layers": 3,
        "experts_per_token": 1,
        "layer_types": ["sliding_attention"] * 3,
    },
    "mha_top3_of_3_all_full": {
        "num_attention_heads": 2,
        "num_key_value_heads": 2,
        "num_experts": 3,
        "experts_per_token": 3,
        "layer_types": ["full_attention"] * 2,
    },
    "custom_pattern_window24_gqa4": {
        "num_hidden_layers": 4,
        "num_attention_heads": 8,
        "num_key_value_heads": 2,
        "sliding_window": 24,
        "layer_types": [
            "full_attention",
            "sliding_attention",
            "sliding_attention",
            "full_attention",
        ],
    },
}


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual - expected).norm() / expected.norm()).item()


def load_transformers(directory: Path):
    """transformers' plain paths: eager attention, eager experts, float32; every weight loaded."""
    model, info = transformers.GptOssForCausalLM.from_pretrained(
        directory,
        attn_implementation="eager",
        experts_implementation="eager",
        dtype=torch.float32,
        output_loading_info=True,
    )
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    return model.eval()


@torch.no_grad()
def transformers_logits(directory: Path, ids: torch.Tensor = IDS) -> torch.Tensor:
    return load_transformers(directory)(ids).logits


@torch.no_grad()
def our_logits(model, ids: torch.Tensor = IDS) -> torch.Tensor:
    return model(ids)


@pytest.fixture(scope="module")
def reference(make_model, tmp_path_factory):
    """shape name -> (exported directory, transformers' logits), each computed once."""
    cache: dict[str, tuple[Path, torch.Tensor]] = {}

    def get(shape: str) -> tuple[Path, torch.Tensor]:
        if shape not in cache:
            directory = export_hf(make_model(**SHAPES[shape]), tmp_path_factory.mktemp(shape))
            cache[shape] = directory, transformers_logits(directory)
        return cache[shape]

    return get


# --- parity -------------------------------------------------------------------------------


@pytest.mark.parametrize("moe_impl", ["loop", "grouped"])
@pytest.mark.parametrize("attn_impl", ["eager", "sdpa", "flex"])
@pytest.mark.parametrize("shape", SHAPES)
def test_logits_match_transformers(reference, make_model, shape, attn_impl, moe_impl):
    _, expected = reference(shape)
    model = make_model(**SHAPES[shape], attn_impl=attn_impl, moe_impl=moe_impl)
    assert relative_error(our_logits(model), expected) < 1e-4


def test_parity_check_is_sensitive_to_sinks_and_biases(reference, make_model):
    """The comparison above would catch a model that ignored sinks or expert biases."""
    _, expected = reference("alternating_gqa2_top2")
    for parameter in ("self_attn.sinks", "mlp.experts.down_proj_bias", "mlp.router.bias"):
        model = make_model()
        with torch.no_grad():
            model.get_parameter(f"layers.0.{parameter}").zero_()
        assert relative_error(our_logits(model), expected) > 1e-3, parameter


def test_exported_directory_holds_the_random_biases_and_sinks(reference):
    directory, _ = reference("alternating_gqa2_top2")
    tensors = load_file(directory / "model.safetensors")
    for name in (
        "self_attn.sinks",
        "self_attn.q_proj.bias",
        "mlp.router.bias",
        "mlp.experts.gate_up_proj_bias",
    ):
        assert tensors[f"model.layers.1.{name}"].abs().min() > 0, name
    config = json.loads((directory / "config.json").read_text())
    assert config["num_local_experts"] == 4 and config["num_experts_per_tok"] == 2
    assert (
        config["rope_scaling"]["rope_type"] == "yarn"
        and config["rope_scaling"]["truncate"] is False
    )


# --- export / import ----------------------------------------------------------------------


@pytest.mark.parametrize("shape", ["alternating_gqa2_top2", "custom_pattern_window24_gqa4"])
def test_import_of_an_export_gives_identical_logits(reference, make_model, shape):
    directory, _ = reference(shape)
    imported = import_hf(directory, attn_impl="eager", moe_impl="loop")
    assert imported.config.layer_types == make_model(**SHAPES[shape]).config.layer_types
    assert torch.equal(our_logits(imported), our_logits(make_model(**SHAPES[shape])))


def test_tied_embeddings_export_and_import(make_model, tmp_path):
    model = make_model(tie_embeddings=True)
    directory = export_hf(model, tmp_path)
    assert "lm_head.weight" not in load_file(directory / "model.safetensors")
    assert relative_error(our_logits(model), transformers_logits(directory)) < 1e-4
    imported = import_hf(directory, attn_impl="eager", moe_impl="loop")
    assert imported.lm_head.weight is imported.embed_tokens.weight
    assert torch.equal(our_logits(imported), our_logits(model))


def test_bf16_export_imports_as_the_rounded_weights(make_model, tmp_path):
    model = make_model()
    directory = export_hf(model, tmp_path, dtype=torch.bfloat16)
    assert json.loads((directory / "config.json").read_text())["torch_dtype"] == "bfloat16"
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.bfloat16().float())
    assert torch.equal(
        our_logits(import_hf(directory, attn_impl="eager", moe_impl="loop")), our_logits(model)
    )


def test_sharded_export_loads_in_transformers_and_back(make_model, tmp_path, monkeypatch):
    monkeypatch.setattr("gpt_oss.model.hf.SHARD_BYTES", 64 * 1024)
    model = make_model()
    directory = export_hf(model, tmp_path)
    assert len(list(directory.glob("model-*-of-*.safetensors"))) > 1
    assert (directory / "model.safetensors.index.json").exists()
    assert relative_error(our_logits(model), transformers_logits(directory)) < 1e-4
    assert torch.equal(
        our_logits(import_hf(directory, attn_impl="eager", moe_impl="loop")), our_logits(model)
    )


def test_export_refuses_what_transformers_cannot_represent(make_model, tmp_path):
    with pytest.raises(CheckpointError, match="qk_norm"):
        export_hf(make_model(qk_norm=True), tmp_path)
    model = make_model(balancing="bias")
    model.update_selection_bias(torch.tensor([[5, 0, 2, 1], [1, 1, 1, 5]]))
    with pytest.raises(CheckpointError, match="selection bias"):
        export_hf(model, tmp_path)


def test_load_model_gives_the_same_logits_from_hf_dir_and_our_checkpoint(
    reference, make_model, tmp_path
):
    directory, _ = reference("alternating_gqa2_top2")
    path = save_checkpoint(tmp_path / "model.pt", make_model(), step=7)
    from_hf = load_model(directory, attn_impl="eager", moe_impl="loop")
    from_ours = load_model(path)
    assert torch.equal(our_logits(from_hf), our_logits(from_ours))
    assert torch.equal(our_logits(from_ours), our_logits(make_model()))
    fast = load_model(path, attn_impl="sdpa", moe_impl="grouped")
    assert fast.config.attn_impl == "sdpa"
    assert relative_error(our_logits(fast), our_logits(from_ours)) < 1e-5


# --- MXFP4 release checkpoints ------------------------------------------------------------


def e2m1_value(code: int) -> float:
    """An fp4 (E2M1) code: sign bit, 2 exponent bits (bias 1), 1 mantissa bit."""
    sign = -1.0 if code & 0b1000 else 1.0
    exponent, mantissa = (code >> 1) & 0b11, code & 0b1
    if exponent == 0:  # subnormal: 0 or 0.5
        return sign * 0.5 * mantissa
    return sign * 2.0 ** (exponent - 1) * (1.0 + 0.5 * mantissa)


FP4_TABLE = np.array([e2m1_value(code) for code in range(16)])


def quantize_mxfp4(dense: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(..., C) -> blocks (..., C/32, 16) uint8 (low nibble first), E8M0 scales (..., C/32)."""
    groups = dense.reshape(*dense.shape[:-1], -1, 32)
    largest = np.abs(groups).max(axis=-1)
    exponent = np.ceil(np.log2(np.maximum(largest, 1e-30) / 6.0)).clip(-127, 127)  # largest -> <= 6
    scaled = groups / 2.0 ** exponent[..., None]
    codes = np.abs(scaled[..., None] - FP4_TABLE).argmin(axis=-1).astype(np.uint8)  # nearest value
    blocks = codes[..., 0::2] | (codes[..., 1::2] << 4)
    return np.ascontiguousarray(blocks), np.ascontiguousarray(exponent + 127, dtype=np.uint8)


def dequantize_mxfp4_vectorized(blocks: np.ndarray, scales: np.ndarray) -> np.ndarray:
    codes = np.stack([blocks & 0x0F, blocks >> 4], axis=-1).reshape(*blocks.shape[:-1], 32)
    values = FP4_TABLE[codes] * 2.0 ** (scales.astype(np.float64) - 127)[..., None]
    return values.reshape(*scales.shape[:-1], -1)


def dequantize_one(
    blocks: np.ndarray, scales: np.ndarray, row: tuple[int, ...], column: int
) -> float:
    """One value, written out: its byte, its nibble, its group's scale."""
    byte = int(blocks[(*row, column // 32, (column % 32) // 2)])
    code = byte & 0x0F if column % 2 == 0 else byte >> 4
    return e2m1_value(code) * 2.0 ** (int(scales[(*row, column // 32)]) - 127)


MXFP4_SHAPE = {"hidden_size": 64, "intermediate_size": 32, "sliding_window": 16}  # multiples of 32


def release_config(config) -> dict:
    """config.json as the gpt-oss release writes it (quantization_config included)."""
    return {
        "architectures": ["GptOssForCausalLM"],
        "model_type": "gpt_oss",
        "attention_bias": True,
        "attention_dropout": 0.0,
        "eos_token_id": 200002,
        "pad_token_id": 199999,
        "experts_per_token": config.experts_per_token,
        "num_experts_per_tok": config.experts_per_token,
        "num_local_experts": config.num_experts,
        "head_dim": config.head_dim,
        "hidden_act": "silu",
        "hidden_size": config.hidden_size,
        "initial_context_length": 4096,
        "initializer_range": 0.02,
        "intermediate_size": config.intermediate_size,
        "layer_types": config.layer_types,
        "max_position_embeddings": 131072,
        "num_attention_heads": config.num_attention_heads,
        "num_hidden_layers": config.num_hidden_layers,
        "num_key_value_heads": config.num_key_value_heads,
        "output_router_logits": False,
        "quantization_config": {
            "modules_to_not_convert": [
                "model.layers.*.self_attn",
                "model.layers.*.mlp.router",
                "model.embed_tokens",
                "lm_head",
            ],
            "quant_method": "mxfp4",
        },
        "rms_norm_eps": 1e-05,
        "rope_scaling": {
            "beta_fast": 32.0,
            "beta_slow": 1.0,
            "factor": 32.0,
            "original_max_position_embeddings": 4096,
            "rope_type": "yarn",
            "truncate": False,
        },
        "rope_theta": 150000,
        "router_aux_loss_coef": 0.9,
        "sliding_window": config.sliding_window,
        "swiglu_limit": 7.0,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "use_cache": True,
        "vocab_size": config.vocab_size,
    }


@pytest.fixture(scope="module")
def release(make_model, tmp_path_factory):
    """A release-style MXFP4 directory, the MXFP4 arrays, and a dense float32 HF directory of
    exactly the weights the MXFP4 codes stand for."""
    model = make_model(**MXFP4_SHAPE)
    tensors, quantized = {}, {}
    with torch.no_grad():
        for p in model.parameters():  # the release stores everything else in bf16
            p.copy_(p.bfloat16().float())
        for i, block in enumerate(model.layers):
            experts = block.mlp.experts
            for name in ("gate_up_proj", "down_proj"):
                dense = getattr(experts, name)  # ours (E, in, out); the release (E, out, in)
                blocks, scales = quantize_mxfp4(dense.transpose(1, 2).double().numpy())
                quantized[i, name] = blocks, scales
                tensors[f"model.layers.{i}.mlp.experts.{name}_blocks"] = torch.from_numpy(blocks)
                tensors[f"model.layers.{i}.mlp.experts.{name}_scales"] = torch.from_numpy(scales)
                exact = torch.from_numpy(dequantize_mxfp4_vectorized(blocks, scales)).float()
                assert relative_error(exact.transpose(1, 2), dense) < 0.2  # a sane quantizer
                dense.copy_(exact.transpose(1, 2))
    for name, tensor in model.state_dict().items():
        if not name.endswith(("experts.gate_up_proj", "experts.down_proj", "selection_bias")):
            key = name if name.startswith("lm_head") else f"model.{name}"
            tensors[key] = tensor.bfloat16()
    directory = tmp_path_factory.mktemp("release")
    save_file(tensors, directory / "model.safetensors", metadata={"format": "pt"})
    (directory / "config.json").write_text(json.dumps(release_config(model.config)))
    dense_directory = export_hf(model, tmp_path_factory.mktemp("dense"))
    return directory, quantized, dense_directory


def test_mxfp4_import_matches_a_value_by_value_dequantization(release):
    directory, quantized, _ = release
    model = import_hf(directory)
    for (layer, name), (blocks, scales) in quantized.items():
        ours = getattr(model.layers[layer].mlp.experts, name)  # (E, in, out)
        expected_shape = {"gate_up_proj": (4, 64, 64), "down_proj": (4, 32, 64)}[name]
        assert tuple(ours.shape) == expected_shape
        expert = 1
        for out_feature in range(3):
            for in_feature in range(ours.shape[1]):
                value = dequantize_one(blocks, scales, (expert, out_feature), in_feature)
                assert ours[expert, in_feature, out_feature].item() == value, (
                    layer,
                    name,
                    in_feature,
                )
        whole = (
            torch.from_numpy(dequantize_mxfp4_vectorized(blocks, scales)).float().transpose(1, 2)
        )
        assert torch.equal(ours, whole)


def test_mxfp4_import_logits_match_transformers_on_the_dense_equivalent(release):
    directory, _, dense_directory = release
    ids = IDS[:, :40]
    expected = transformers_logits(dense_directory, ids)
    for impls in (
        {"attn_impl": "eager", "moe_impl": "loop"},
        {"attn_impl": "sdpa", "moe_impl": "grouped"},
    ):
        assert relative_error(our_logits(import_hf(directory, **impls), ids), expected) < 1e-4


def test_mxfp4_import_in_bf16_rounds_the_same_values(release):
    directory, quantized, _ = release
    model = import_hf(directory, dtype=torch.bfloat16)
    blocks, scales = quantized[0, "down_proj"]
    whole = torch.from_numpy(dequantize_mxfp4_vectorized(blocks, scales)).float().transpose(1, 2)
    assert model.layers[0].mlp.experts.down_proj.dtype == torch.bfloat16
    assert torch.equal(model.layers[0].mlp.experts.down_proj.float(), whole)  # fp4 * 2^k is exact


# --- bad inputs ---------------------------------------------------------------------------


def edited_copy(directory: Path, tmp_path: Path, edit_tensors=None, edit_config=None) -> Path:
    copy = Path(shutil.copytree(directory, tmp_path / "copy"))
    if edit_tensors is not None:
        tensors = load_file(copy / "model.safetensors")
        edit_tensors(tensors)
        save_file(tensors, copy / "model.safetensors")
    if edit_config is not None:
        config = json.loads((copy / "config.json").read_text())
        edit_config(config)
        (copy / "config.json").write_text(json.dumps(config))
    return copy


def test_directory_without_config_json_is_rejected(release, tmp_path):
    copy = edited_copy(release[0], tmp_path)
    (copy / "config.json").unlink()
    with pytest.raises(CheckpointError, match="no config.json"):
        import_hf(copy)


def test_directory_without_safetensors_is_rejected(release, tmp_path):
    copy = edited_copy(release[0], tmp_path)
    (copy / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"no \*\.safetensors"):
        import_hf(copy)


def test_mismatched_blocks_and_scales_are_rejected(release, tmp_path):
    key = "model.layers.1.mlp.experts.down_proj_scales"
    copy = edited_copy(
        release[0], tmp_path, edit_tensors=lambda t: t.update({key: t[key][..., :-1]})
    )
    with pytest.raises(
        CheckpointError, match=r"MXFP4 blocks \(4, 64, 1, 16\) do not match scales \(4, 64, 0\)"
    ):
        import_hf(copy)


def test_blocks_without_scales_are_rejected(release, tmp_path):
    key = "model.layers.0.mlp.experts.gate_up_proj_scales"
    copy = edited_copy(release[0], tmp_path, edit_tensors=lambda t: t.pop(key))
    with pytest.raises(
        CheckpointError, match="gate_up_proj_blocks has no matching .*gate_up_proj_scales"
    ):
        import_hf(copy)


def test_weights_of_the_wrong_shape_for_the_config_are_rejected(release, tmp_path):
    copy = edited_copy(release[0], tmp_path, edit_config=lambda c: c.update(intermediate_size=64))
    with pytest.raises(CheckpointError, match="do not fit the config(.|\n)*gate_up_proj"):
        import_hf(copy)


def test_a_missing_weight_is_rejected_by_name(release, tmp_path):
    copy = edited_copy(
        release[0], tmp_path, edit_tensors=lambda t: t.pop("model.layers.1.self_attn.sinks")
    )
    with pytest.raises(CheckpointError, match="layers.1.self_attn.sinks"):
        import_hf(copy)


@pytest.mark.parametrize(
    "rope, factor",
    [
        ({"rope_type": "yarn", "factor": 32.0, "rope_theta": 150000}, 32.0),
        ({"rope_type": "default", "rope_theta": 10000}, 1.0),  # plain RoPE, not YaRN
        ({}, 1.0),
    ],
)
def test_imported_rope_scaling_is_yarn_only_when_the_config_says_so(rope, factor):
    values = {
        "vocab_size": 1000,
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "rope_parameters": rope,
    }
    config = config_from_hf(values)
    assert config.rope_scaling_factor == factor
    assert config.rope_theta == rope.get("rope_theta", config.rope_theta)
