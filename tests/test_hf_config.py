"""Hugging Face config.json, both ways: every GptOss setting is read as transformers reads it
(its defaults for absent keys, YaRN's `truncate` included) or refused by name, never dropped;
what we write, transformers and config_from_hf read back as the same model. The reference is
transformers itself: its rope initialisation and its GptOssForCausalLM logits."""

from __future__ import annotations

import copy
import json
from dataclasses import fields
from pathlib import Path

import pytest
import torch

from gpt_oss.model.config import IMPLEMENTATION_FIELDS, ModelConfig
from gpt_oss.model.hf import (
    HF_DEFAULTS,
    CheckpointError,
    config_from_hf,
    export_hf,
    hf_config,
    import_hf,
)
from gpt_oss.model.model import yarn_inverse_frequencies

transformers = pytest.importorskip("transformers")
from transformers.models.gpt_oss.modeling_gpt_oss import GptOssRotaryEmbedding  # noqa: E402

pytestmark = pytest.mark.usefixtures("single_threaded")

IDS = torch.randint(0, 1000, (2, 40), generator=torch.Generator().manual_seed(0))
TRUNCATE = {"true": True, "false": False, "absent": None}
# Training-only fields that Hugging Face's config cannot hold; export leaves them out.
TRAINING_ONLY = {
    "qk_norm",
    "scale_embeddings",
    "balancing",
    "router_z_loss_coef",
    "expert_bias_rate",
}


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual - expected).norm() / expected.norm()).item()


def with_truncate(values: dict, truncate: bool | None) -> dict:
    """config.json values with rope_scaling's truncate set, or removed (None)."""
    values = copy.deepcopy(values)
    values["rope_scaling"].pop("truncate", None)
    if truncate is not None:
        values["rope_scaling"]["truncate"] = truncate
    return values


def transformers_rope(values: dict) -> tuple[torch.Tensor, float]:
    """transformers' own YaRN initialisation for these config.json values."""
    rotary = GptOssRotaryEmbedding(transformers.GptOssConfig(**copy.deepcopy(values)))
    return rotary.inv_freq, rotary.attention_scaling


@pytest.mark.parametrize("head_dim", [16, 64])
@pytest.mark.parametrize("truncate", TRUNCATE)
def test_imported_yarn_frequencies_equal_transformers(make_config, head_dim, truncate):
    values = with_truncate(hf_config(make_config(head_dim=head_dim)), TRUNCATE[truncate])
    expected, scale = transformers_rope(values)
    config = config_from_hf(values)
    assert config.rope_truncate is (TRUNCATE[truncate] is not False)  # absent: transformers rounds
    torch.testing.assert_close(yarn_inverse_frequencies(config), expected, rtol=1e-6, atol=0)
    assert config.yarn_attention_scale == pytest.approx(scale, rel=1e-12)


def test_truncation_moves_the_ramp_pairs_of_a_release_head(make_config):
    """head_dim 64: pairs 9-17 lie on YaRN's ramp. Values from transformers 5.24's yarn init."""
    untruncated = yarn_inverse_frequencies(make_config(head_dim=64))
    truncated = yarn_inverse_frequencies(make_config(head_dim=64, rope_truncate=True))
    assert untruncated[12].item() == pytest.approx(0.006795, abs=1e-6)
    assert truncated[12].item() == pytest.approx(0.007016, abs=1e-6)
    assert torch.equal(untruncated[:9], truncated[:9]) and torch.equal(
        untruncated[18:], truncated[18:]
    )


@pytest.mark.parametrize("truncate", TRUNCATE)
def test_imported_logits_equal_transformers_whatever_truncate_says(make_model, tmp_path, truncate):
    directory = export_hf(make_model(), tmp_path)
    values = with_truncate(json.loads((directory / "config.json").read_text()), TRUNCATE[truncate])
    (directory / "config.json").write_text(json.dumps(values))
    expected = transformers_logits(directory)
    with torch.no_grad():
        actual = import_hf(directory, attn_impl="eager", moe_impl="loop")(IDS)
    assert relative_error(actual, expected) < 1e-4


@pytest.mark.parametrize("truncate", [True, False])
def test_exported_truncate_is_what_transformers_runs(make_model, tmp_path, truncate):
    model = make_model(rope_truncate=truncate)
    directory = export_hf(model, tmp_path)
    written = json.loads((directory / "config.json").read_text())
    assert written["rope_scaling"]["truncate"] is truncate
    with torch.no_grad():
        assert relative_error(model(IDS), transformers_logits(directory)) < 1e-4


def test_truncate_changes_the_logits_so_the_checks_above_can_fail(make_model):
    with torch.no_grad():
        plain, truncated = make_model()(IDS), make_model(rope_truncate=True)(IDS)
    assert relative_error(truncated, plain) > 1e-3


def transformers_logits(directory: Path) -> torch.Tensor:
    model = transformers.GptOssForCausalLM.from_pretrained(
        directory, attn_implementation="eager", experts_implementation="eager", dtype=torch.float32
    )
    with torch.no_grad():
        return model.eval()(IDS).logits


def test_swiglu_alpha_and_every_exported_field_come_back(make_model, tmp_path):
    """swiglu_alpha was written but not read: the imported model used 1.702 instead."""
    model = make_model(swiglu_alpha=1.2)
    directory = export_hf(model, tmp_path)
    imported = import_hf(directory, attn_impl="eager", moe_impl="loop")
    assert imported.config.swiglu_alpha == 1.2
    with torch.no_grad():
        assert torch.equal(imported(IDS), model(IDS))
        assert relative_error(imported(IDS), transformers_logits(directory)) < 1e-4


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"rope_truncate": True},
        {"rope_scaling_factor": 1.0},  # plain RoPE: written as rope_type default
        {"rope_scaling_factor": 8.0, "rope_ntk_beta": 16.0, "rope_ntk_alpha": 2.0},
        {"initial_context_length": 1024, "rope_theta": 10000.0},
        {"tie_embeddings": True, "swiglu_alpha": 1.5, "swiglu_limit": 5.0},
        {"router_aux_loss_coef": 0.3, "initializer_range": 0.01, "rms_norm_eps": 1e-6},
        {"layer_types": ["full_attention", "full_attention"], "sliding_window": 7},
    ],
)
def test_export_then_import_gives_the_same_config(make_config, overrides):
    config = make_config(**overrides)
    values = json.loads(json.dumps(hf_config(config)))  # through JSON, as on disk
    back = config_from_hf(values, **{name: getattr(config, name) for name in IMPLEMENTATION_FIELDS})
    for field in fields(ModelConfig):
        if field.name in TRAINING_ONLY:
            continue
        if field.name == "initial_context_length" and config.rope_scaling_factor <= 1.0:
            continue  # unused without YaRN
        assert getattr(back, field.name) == getattr(config, field.name), field.name


def test_absent_keys_take_transformers_defaults():
    reference = transformers.GptOssConfig()
    for key, default in HF_DEFAULTS.items():
        if default is not None:
            assert getattr(reference, key) == default, key
    config = config_from_hf({})
    assert config.num_hidden_layers == reference.num_hidden_layers == 36
    assert config.num_experts == reference.num_local_experts == 128
    assert config.rope_scaling_factor == 32.0 and config.rope_truncate is False


def transformers_written_config() -> dict:
    """Every key transformers writes for a GptOss config, each away from its default where
    this model can follow it."""
    config = transformers.GptOssConfig(
        vocab_size=1000,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        num_local_experts=5,
        num_experts_per_tok=3,
        sliding_window=9,
        max_position_embeddings=2048,
        rms_norm_eps=1e-6,
        swiglu_alpha=1.5,
        swiglu_limit=6.0,
        initializer_range=0.03,
        router_aux_loss_coef=0.2,
        tie_word_embeddings=True,
        layer_types=["full_attention", "sliding_attention", "full_attention"],
        rope_parameters={
            "rope_type": "yarn",
            "factor": 8.0,
            "beta_fast": 16.0,
            "beta_slow": 2.0,
            "truncate": True,
            "original_max_position_embeddings": 256,
            "rope_theta": 5000.0,
        },
    )
    return json.loads(json.dumps(config.to_dict()))  # every key, defaults included


def test_a_config_transformers_writes_is_read_field_by_field():
    values = transformers_written_config()
    config = config_from_hf(values)
    expected = {
        "vocab_size": 1000,
        "hidden_size": 32,
        "intermediate_size": 48,
        "num_hidden_layers": 3,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 8,
        "num_experts": 5,
        "experts_per_token": 3,
        "sliding_window": 9,
        "max_position_embeddings": 2048,
        "rms_norm_eps": 1e-6,
        "swiglu_alpha": 1.5,
        "swiglu_limit": 6.0,
        "initializer_range": 0.03,
        "router_aux_loss_coef": 0.2,
        "tie_embeddings": True,
        "layer_types": ["full_attention", "sliding_attention", "full_attention"],
        "rope_scaling_factor": 8.0,
        "rope_ntk_beta": 16.0,
        "rope_ntk_alpha": 2.0,
        "rope_truncate": True,
        "initial_context_length": 256,
        "rope_theta": 5000.0,
    }
    assert {name: getattr(config, name) for name in expected} == expected
    inv_freq, _ = transformers_rope(values)
    torch.testing.assert_close(yarn_inverse_frequencies(config), inv_freq, rtol=1e-6, atol=0)


def changed(value):
    """A different value of the same JSON type."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int | float):
        return value * 2 + 1
    if isinstance(value, str):
        return value + "_other"
    if isinstance(value, list):
        return value[::-1] + value[:1]
    if isinstance(value, dict):
        return {**value, "added_key": 1}
    return 3  # None


def test_every_key_transformers_writes_is_honoured_or_refused_by_name():
    """Change any one key: the model read changes, or the key is refused by name; only keys
    with no effect on weights or logits (generation and output switches) may change nothing."""
    values = transformers_written_config()
    baseline = config_from_hf(values)
    no_effect = {
        "transformers_version",
        "dtype",
        "_name_or_path",
        "bos_token_id",
        "eos_token_id",
        "pad_token_id",
        "use_cache",
        "output_router_logits",
        "output_attentions",
        "output_hidden_states",
        "return_dict",
        "id2label",
        "label2id",
        "problem_type",
        "chunk_size_feed_forward",
        "hidden_act",
    }
    assert no_effect <= set(values)
    for key in sorted(set(values) - no_effect):
        edited = values | {key: changed(values[key])}
        try:
            config = config_from_hf(edited)
        except CheckpointError as error:
            assert key in str(error) or "layer_types" in str(error), (key, str(error))
            continue
        assert config != baseline, key


@pytest.mark.parametrize(
    "edit, named",
    [
        (lambda v: v.update(foo_bar=1), "foo_bar"),
        (lambda v: v.update(model_type="llama"), "model_type"),
        (lambda v: v.update(architectures=["LlamaForCausalLM"]), "architectures"),
        (lambda v: v.update(attention_bias=False), "attention_bias"),
        (lambda v: v.update(attention_dropout=0.1), "attention_dropout"),
        (lambda v: v.update(quantization_config={"quant_method": "bitsandbytes"}), "quant_method"),
        (lambda v: v.update(experts_per_token=1), "experts_per_token"),
        (lambda v: v.update(initial_context_length=8192), "initial_context_length"),
        (lambda v: v.update(sliding_window=None), "sliding_window"),
        (lambda v: v.update(rope_theta=10.0), "rope_theta"),
        (lambda v: v.update(partial_rotary_factor=0.5), "partial_rotary_factor"),
        (lambda v: v["rope_scaling"].update(rope_type="llama3"), "llama3"),
        (lambda v: v["rope_scaling"].update(attention_factor=2.0), "attention_factor"),
        (lambda v: v["rope_scaling"].update(mscale=1.0, mscale_all_dim=0.5), "mscale"),
        (lambda v: v["rope_scaling"].update(truncate="yes"), "truncate"),
        (lambda v: v["rope_scaling"].update(factor=0.5), "factor"),
        (lambda v: v["rope_scaling"].update(low_freq_factor=1.0), "low_freq_factor"),
        (lambda v: v.update(rope_parameters={"rope_type": "default"}), "rope_parameters"),
        (lambda v: v.update(num_hidden_layers=0), "num_hidden_layers"),
    ],
)
def test_settings_this_model_cannot_honour_are_refused_by_name(make_config, edit, named):
    values = json.loads(json.dumps(hf_config(make_config())))
    values["rope_theta"] = values["rope_scaling"]["rope_theta"] = 150000.0
    config_from_hf(values)  # the unedited values are fine
    edit(values)
    with pytest.raises(CheckpointError, match=named):
        config_from_hf(values)


def test_release_names_that_agree_with_transformers_are_accepted(make_config):
    values = hf_config(make_config()) | {"experts_per_token": 2, "initial_context_length": 4096}
    values["quantization_config"] = {"quant_method": "mxfp4", "modules_to_not_convert": []}
    assert config_from_hf(values) == config_from_hf(hf_config(make_config()))
