"""The model as a spec: config validation, each math piece against a written-out formula,
sliding windows, the variants, the training loss, expert-bias balancing, the KV cache, left
padding, and the parameter counts `python -m gpt_oss.info` prints."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir

from gpt_oss.info import model_config
from gpt_oss.model.attention import attention_eager, attention_mask
from gpt_oss.model.config import ConfigError, ModelConfig
from gpt_oss.model.losses import load_balancing_loss, router_z_loss
from gpt_oss.model.model import GptOss, KVCache, RMSNorm, apply_rotary, yarn_inverse_frequencies
from gpt_oss.model.moe import Router, Routing, clamped_swiglu
from gpt_oss.model.precision import DTYPES, autocast_dtype, cpu_has_native_bf16, resolve_precision
from gpt_oss.model.size import meta_parameter_count, parameter_counts

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"

pytestmark = [
    pytest.mark.usefixtures("single_threaded"),
    # FlexAttention runs unfused (uncompiled) on the CPU; its warning says so on every call.
    pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile"),
]


def random_ids(batch: int, time: int, seed: int = 0, vocab: int = 1000) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, time), generator=torch.Generator().manual_seed(seed))


# --- configuration ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "field,overrides",
    [
        ("experts_per_token", {"num_experts": 4, "experts_per_token": 5}),
        ("num_attention_heads", {"num_attention_heads": 6, "num_key_value_heads": 4}),
        ("layer_types", {"layer_types": ["full_attention"] * 3}),
        ("layer_types[1]", {"layer_types": ["full_attention", "local_attention"]}),
        ("hidden_size", {"hidden_size": 0}),
        ("intermediate_size", {"intermediate_size": -32}),
        ("num_experts", {"num_experts": 0}),
        ("num_hidden_layers", {"num_hidden_layers": 0}),
        ("head_dim", {"head_dim": 15}),
        ("vocab_size", {"vocab_size": 0}),
        ("sliding_window", {"sliding_window": 0}),
        ("sliding_window", {"sliding_window": -128}),
        ("hidden_size", {"hidden_size": 32.0}),
        ("attn_impl", {"attn_impl": "flash"}),
        ("moe_impl", {"moe_impl": "megablocks"}),
        ("balancing", {"balancing": "loss"}),
        ("rope_theta", {"rope_theta": 0.0}),
        ("loss_chunk_tokens", {"loss_chunk_tokens": -1}),
    ],
)
def test_invalid_config_raises_naming_the_field(make_config, field, overrides):
    with pytest.raises(ConfigError, match=re.escape(f"model.{field}")):
        make_config(**overrides)


def test_config_error_says_what_is_valid(make_config):
    with pytest.raises(ConfigError, match="local_attention.*valid types.*sliding_attention"):
        make_config(layer_types=["full_attention", "local_attention"])
    with pytest.raises(ConfigError, match=r"\[1, num_experts=4\]"):
        make_config(experts_per_token=5)


def test_model_revalidates_a_config_changed_after_construction(make_config):
    config = make_config()
    config.experts_per_token = 9
    with pytest.raises(ConfigError, match="experts_per_token"):
        GptOss(config)


def test_from_dict_rejects_unknown_keys_by_name():
    with pytest.raises(ConfigError, match="num_expert_typo"):
        ModelConfig.from_dict({"num_expert_typo": 3})


@pytest.mark.parametrize("device, training", [("cuda", "bf16"), ("cpu", "fp32")])
def test_one_precision_resolver_serves_training_generation_and_the_bench(device, training):
    device = torch.device(device)  # a CUDA device object needs no GPU to exist
    assert resolve_precision("auto", device, "trainer.precision") == training
    assert resolve_precision("auto", device, "dtype") == training  # generate and evaluate
    native = "bf16" if device.type == "cuda" or cpu_has_native_bf16() else "fp32"
    assert resolve_precision("auto", device, "bench.precision", native_cpu_bf16=True) == native
    for name in DTYPES:
        assert resolve_precision(name, device) == name
    assert autocast_dtype("fp32") is None and autocast_dtype("bf16") == torch.bfloat16
    assert DTYPES[resolve_precision("fp16", device)] == torch.float16


def test_an_unknown_precision_names_its_option_and_the_valid_names():
    message = "dtype='fp8' is invalid: valid are ['auto', 'bf16', 'fp16', 'fp32']"
    with pytest.raises(ConfigError, match=re.escape(message)):
        resolve_precision("fp8", torch.device("cpu"), "dtype")


def test_default_layer_pattern_is_even_sliding_odd_full(make_config):
    assert make_config(num_hidden_layers=3).layer_types == [
        "sliding_attention",
        "full_attention",
        "sliding_attention",
    ]


# --- forward ------------------------------------------------------------------------------


def test_forward_maps_batch_time_ids_to_batch_time_vocab_logits(make_model):
    model = make_model()
    ids = random_ids(3, 7)
    logits = model(ids)
    assert logits.shape == (3, 7, 1000)
    assert logits.dtype == torch.float32 and torch.isfinite(logits).all()
    last = model(ids, last_only=True)
    assert last.shape == (3, 1, 1000)
    torch.testing.assert_close(last, logits[:, -1:])


# --- each math piece against a written-out formula ----------------------------------------


def test_rmsnorm_matches_formula():
    x = torch.randn(4, 5, 24, dtype=torch.float64) * 3
    norm = RMSNorm(24, eps=1e-5)
    with torch.no_grad():
        norm.weight.copy_(torch.linspace(0.5, 1.5, 24))
    expected = x * norm.weight.double() / torch.sqrt((x**2).mean(-1, keepdim=True) + 1e-5)
    torch.testing.assert_close(norm(x), expected, rtol=1e-6, atol=1e-6)  # computed in float32


def test_rmsnorm_computes_in_float32_and_returns_the_input_dtype():
    x = torch.randn(8, 24).to(torch.bfloat16)
    norm = RMSNorm(24, eps=1e-5)
    out = norm(x)
    assert out.dtype == torch.bfloat16
    x32 = x.float()
    expected = (x32 / torch.sqrt(x32.pow(2).mean(-1, keepdim=True) + 1e-5)).to(torch.bfloat16)
    assert torch.equal(out, expected)


def reference_yarn_inverse_frequencies(
    head_dim: int, theta: float, factor: float, context: int, beta_fast: float, beta_slow: float
) -> list[float]:
    """The openai reference's YaRN (NTK by parts), one pair at a time in float64."""
    half = head_dim / 2
    low = half * math.log(context / (beta_fast * 2 * math.pi)) / math.log(theta)
    high = half * math.log(context / (beta_slow * 2 * math.pi)) / math.log(theta)
    assert 0 < low < high < half - 1
    out = []
    for pair in range(head_dim // 2):
        extrapolation = 1.0 / theta ** (2 * pair / head_dim)
        interpolation = extrapolation / factor
        ramp = min(max((pair - low) / (high - low), 0.0), 1.0)  # 0: fast pair, 1: slow pair
        out.append(interpolation * ramp + extrapolation * (1.0 - ramp))
    return out


@pytest.mark.parametrize("head_dim", [16, 64])
def test_yarn_inverse_frequencies_match_the_reference_formula(make_config, head_dim):
    config = make_config(head_dim=head_dim)
    expected = reference_yarn_inverse_frequencies(head_dim, 150000.0, 32.0, 4096, 32.0, 1.0)
    actual = yarn_inverse_frequencies(config)
    torch.testing.assert_close(
        actual.double(), torch.tensor(expected, dtype=torch.float64), rtol=2e-6, atol=0
    )
    assert actual[0] == 1.0  # the fastest pair is extrapolated (unchanged)
    assert math.isclose(actual[-1], 1 / (32 * 150000 ** ((head_dim - 2) / head_dim)), rel_tol=1e-6)


def test_without_yarn_scaling_the_frequencies_are_plain_rope(make_config):
    config = make_config(rope_scaling_factor=1.0)
    expected = [1.0 / 150000.0 ** (2 * i / 16) for i in range(8)]
    torch.testing.assert_close(
        yarn_inverse_frequencies(config).double(), torch.tensor(expected, dtype=torch.float64)
    )
    assert config.yarn_attention_scale == 1.0


def test_rotary_tables_are_cos_and_sin_times_yarn_scale(make_model):
    model = make_model()
    scale = 0.1 * math.log(32) + 1
    assert math.isclose(model.config.yarn_attention_scale, scale)
    positions = torch.tensor([[0, 1, 127, 128, 4095]])
    cos, sin = model.rotary(positions, torch.float32)
    frequencies = reference_yarn_inverse_frequencies(16, 150000.0, 32.0, 4096, 32.0, 1.0)
    for t, position in enumerate(positions[0].tolist()):
        for i, frequency in enumerate(frequencies):
            assert math.isclose(cos[0, t, i], math.cos(position * frequency) * scale, abs_tol=1e-3)
            assert math.isclose(sin[0, t, i], math.sin(position * frequency) * scale, abs_tol=1e-3)


def test_apply_rotary_rotates_half_split_pairs():
    x = torch.randn(1, 2, 3, 8, dtype=torch.float64)
    angles = torch.rand(1, 3, 4, dtype=torch.float64) * 6
    out = apply_rotary(x, angles.cos(), angles.sin())
    for head in range(2):
        for t in range(3):
            for i in range(4):  # pair i is (x[i], x[i + D/2])
                a, b, theta = x[0, head, t, i], x[0, head, t, i + 4], angles[0, t, i]
                assert torch.isclose(out[0, head, t, i], a * theta.cos() - b * theta.sin())
                assert torch.isclose(out[0, head, t, i + 4], b * theta.cos() + a * theta.sin())


def test_rotary_scores_depend_only_on_relative_position(make_model):
    model = make_model(dtype=torch.float64)
    q, k = (
        torch.randn(1, 1, 1, 16, dtype=torch.float64),
        torch.randn(1, 1, 1, 16, dtype=torch.float64),
    )

    def score(query_position: int, key_position: int) -> torch.Tensor:
        cos, sin = model.rotary(torch.tensor([[query_position, key_position]]), torch.float64)
        return (
            apply_rotary(q, cos[:, :1], sin[:, :1]) * apply_rotary(k, cos[:, 1:], sin[:, 1:])
        ).sum()

    torch.testing.assert_close(score(10, 3), score(1010, 1003), rtol=1e-5, atol=1e-6)
    assert not torch.isclose(score(10, 3), score(10, 4))


def test_clamped_swiglu_matches_scalar_formula():
    gate_up = torch.linspace(-10, 10, 2 * 41, dtype=torch.float64)[torch.randperm(82)].view(1, 82)
    out = clamped_swiglu(gate_up, alpha=1.702, limit=7.0)
    assert out.shape == (1, 41)
    for i in range(41):
        gate = min(gate_up[0, 2 * i].item(), 7.0)  # gate: even columns, clamped above only
        linear = min(max(gate_up[0, 2 * i + 1].item(), -7.0), 7.0)  # linear: odd columns
        glu = gate / (1 + math.exp(-1.702 * gate))
        assert math.isclose(out[0, i].item(), (linear + 1) * glu, rel_tol=1e-12, abs_tol=1e-12)


def test_clamped_swiglu_gradients_are_correct_and_zero_beyond_the_clamps():
    gate_up = torch.tensor([[-3.0, 0.5, 2.0, -1.0, 9.0, 8.0, 1.5, -9.0]], dtype=torch.float64)
    assert torch.autograd.gradcheck(
        lambda t: clamped_swiglu(t, 1.702, 7.0), gate_up.requires_grad_()
    )
    (grad,) = torch.autograd.grad(clamped_swiglu(gate_up, 1.702, 7.0).sum(), gate_up)
    assert grad[0, 4] == 0 and grad[0, 5] == 0 and grad[0, 7] == 0  # gate 9, linear 8 and -9


def test_router_takes_top_k_of_raw_logits_then_softmax_over_those_k(make_config):
    router = Router(make_config(num_experts=6, experts_per_token=3)).double()
    with torch.no_grad():
        router.weight.copy_(torch.randn(6, 32))
        router.bias.copy_(torch.randn(6))
    x = torch.randn(10, 32, dtype=torch.float64)
    routing = router(x)
    for token in range(10):
        logits = [
            sum(x[token, j].item() * router.weight[e, j].item() for j in range(32))
            + router.bias[e].item()
            for e in range(6)
        ]
        top = sorted(range(6), key=lambda e: -logits[e])[:3]
        normaliser = sum(math.exp(logits[e]) for e in top)
        assert routing.experts[token].tolist() == top
        for slot, e in enumerate(top):
            assert math.isclose(
                routing.weights[token, slot].item(), math.exp(logits[e]) / normaliser, rel_tol=1e-9
            )


def test_selection_bias_changes_which_experts_but_not_how_they_are_weighted(make_config):
    router = Router(make_config(num_experts=4, experts_per_token=2))
    with torch.no_grad():
        router.weight.copy_(torch.randn(4, 32))
        router.selection_bias.copy_(torch.tensor([0.0, 0.0, 0.0, 100.0]))
    routing = router(torch.randn(16, 32))
    assert (routing.experts == 3).any(dim=-1).all()  # the biased expert is always chosen
    chosen_logits = routing.logits.gather(-1, routing.experts)
    torch.testing.assert_close(routing.weights, torch.softmax(chosen_logits, dim=-1))


def reference_sink_attention(q, k, v, sinks, mask, scale):
    """Sink-free softmax attention scaled by sigmoid(lse - sink), the FlexAttention form."""
    groups = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    scores = (q @ k.transpose(-1, -2) * scale).masked_fill(~mask, float("-inf"))  # (B, H, T, S)
    lse = torch.logsumexp(scores, dim=-1, keepdim=True)
    out = torch.softmax(scores, dim=-1) @ v
    return out * torch.sigmoid(lse - sinks.view(1, -1, 1, 1))


@pytest.mark.parametrize("window", [None, 4])
def test_eager_attention_with_sinks_equals_sink_free_attention_times_sigmoid(window):
    q = torch.randn(2, 4, 10, 8, dtype=torch.float64)
    k, v = (
        torch.randn(2, 2, 10, 8, dtype=torch.float64),
        torch.randn(2, 2, 10, 8, dtype=torch.float64),
    )
    sinks = torch.tensor([-2.0, 0.0, 1.0, 4.0], dtype=torch.float64)
    index = torch.arange(10)
    mask = attention_mask(index, index, window)
    out = attention_eager(q, k, v, sinks, mask, 8**-0.5)
    torch.testing.assert_close(
        out, reference_sink_attention(q, k, v, sinks, mask, 8**-0.5), rtol=1e-12, atol=1e-12
    )
    no_sink = attention_eager(
        q, k, v, torch.full((4,), float("-inf"), dtype=torch.float64), mask, 8**-0.5
    )
    plain = F.scaled_dot_product_attention(
        q, k.repeat_interleave(2, 1), v.repeat_interleave(2, 1), attn_mask=mask, scale=8**-0.5
    )
    # a sink of -inf absorbs nothing: plain softmax attention
    torch.testing.assert_close(no_sink, plain, rtol=1e-12, atol=1e-12)
    assert out.norm() < no_sink.norm()  # a finite sink takes probability mass away


def test_attention_mask_window_includes_the_query_and_the_127_keys_before_it():
    index = torch.arange(300)
    mask = attention_mask(index, index, 128)[0, 0]
    q = 250
    assert mask[q, q] and mask[q, q - 127]
    assert not mask[q, q - 128] and not mask[q, q + 1]
    assert mask.sum(dim=-1).max() == 128


@pytest.mark.parametrize("attn_impl", ["eager", "sdpa", "flex"])
@pytest.mark.parametrize("layers", [1, 2])
def test_sliding_window_query_sees_key_q_minus_127_but_not_q_minus_128(
    make_model, attn_impl, layers
):
    """Perturb one token; with L sliding layers a query's reach is L * 127 positions back."""
    model = make_model(
        num_hidden_layers=layers, layer_types=["sliding_attention"] * layers, attn_impl=attn_impl
    )
    ids = random_ids(1, 300)
    query, reach = 299, 127 * layers
    with torch.no_grad():
        base = model(ids)[0, query]
        for position, affects in ((query - reach, True), (query - reach - 1, False)):
            perturbed = ids.clone()
            perturbed[0, position] = (ids[0, position] + 1) % 1000
            change = (model(perturbed)[0, query] - base).abs().max()
            if affects:
                assert change > 0, f"token {position} should reach query {query}"
            else:
                assert change == 0, f"token {position} is outside query {query}'s reach"


def test_full_attention_layer_sees_beyond_the_window(make_model):
    model = make_model(num_hidden_layers=1, layer_types=["full_attention"])
    ids = random_ids(1, 300)
    perturbed = ids.clone()
    perturbed[0, 0] = (ids[0, 0] + 1) % 1000
    with torch.no_grad():
        assert (model(perturbed)[0, 299] - model(ids)[0, 299]).abs().max() > 1e-4


def test_sliding_window_gradient_reaches_exactly_the_window(make_model):
    model = make_model(num_hidden_layers=1, layer_types=["sliding_attention"], attn_impl="sdpa")
    embeddings = []

    def keep_gradient(module, args, out: torch.Tensor) -> None:
        out.retain_grad()
        embeddings.append(out)

    model.embed_tokens.register_forward_hook(keep_gradient)
    model(random_ids(1, 200))[0, 180].sum().backward()
    reached = embeddings[0].grad[0].abs().sum(dim=-1) > 0  # which positions position 180 used
    assert reached.nonzero().flatten().tolist() == list(range(180 - 127, 181))


# --- variants -----------------------------------------------------------------------------


def test_qk_norm_adds_norms_that_make_attention_invariant_to_query_key_scale(make_model):
    base, normed = make_model(), make_model(qk_norm=True)
    assert (
        sum(p.numel() for p in normed.parameters()) - sum(p.numel() for p in base.parameters())
        == 2 * 2 * 16
    )
    ids = random_ids(2, 20)

    def logits_with_qk_scaled(qk_norm: bool, factor: float) -> torch.Tensor:
        model = make_model(qk_norm=qk_norm)
        with torch.no_grad():
            for block in model.layers:
                for proj in (block.self_attn.q_proj, block.self_attn.k_proj):
                    proj.weight *= factor
                    proj.bias *= factor
            return model(ids)

    torch.testing.assert_close(
        logits_with_qk_scaled(qk_norm=True, factor=10.0),
        logits_with_qk_scaled(qk_norm=True, factor=1.0),
        rtol=1e-4,
        atol=1e-4,
    )
    assert not torch.allclose(
        logits_with_qk_scaled(qk_norm=False, factor=10.0),
        logits_with_qk_scaled(qk_norm=False, factor=1.0),
        atol=1e-2,
    )
    normed.load_state_dict(base.state_dict(), strict=False)  # same weights, norms added
    with torch.no_grad():
        assert not torch.allclose(normed(ids), base(ids), atol=1e-2)


def test_tie_embeddings_shares_one_table(make_model):
    base, tied = make_model(), make_model(tie_embeddings=True)
    assert tied.lm_head.weight is tied.embed_tokens.weight
    assert (
        sum(p.numel() for p in base.parameters()) - sum(p.numel() for p in tied.parameters())
        == 1000 * 32
    )
    tied.double()
    assert tied.lm_head.weight is tied.embed_tokens.weight
    ids = random_ids(1, 12)
    tied.loss(ids[:, :-1], ids[:, 1:]).loss.backward()
    grad = tied.embed_tokens.weight.grad
    assert grad is not None and (grad[ids[0, :-1]].abs().sum(-1) > 0).all()


def test_hidden_dropout_acts_only_while_training(make_model):
    plain, dropped = make_model(), make_model(hidden_dropout=0.3)  # same seed: same weights
    ids = random_ids(2, 10)
    with torch.no_grad():
        torch.testing.assert_close(dropped(ids), plain(ids))  # eval mode: dropout is identity
        dropped.train()
        torch.manual_seed(1)
        first = dropped(ids)
        assert not torch.allclose(first, plain(ids), atol=1e-3)  # embeddings and both branches
        torch.manual_seed(1)
        torch.testing.assert_close(dropped(ids), first)  # the global RNG decides the masks
        dropped.eval()
        torch.testing.assert_close(dropped(ids), plain(ids))


def test_scale_embeddings_multiplies_embeddings_by_sqrt_hidden_size(make_model):
    scaled, reference = make_model(scale_embeddings=True), make_model()
    with torch.no_grad():
        reference.embed_tokens.weight *= math.sqrt(32)
        ids = random_ids(2, 10)
        torch.testing.assert_close(scaled(ids), reference(ids), rtol=1e-5, atol=1e-5)
        assert not torch.allclose(scaled(ids), make_model()(ids), atol=1e-2)


# --- training loss and balancing ----------------------------------------------------------


@pytest.mark.parametrize("balancing", ["aux_loss", "bias", "none"])
def test_loss_parts_are_finite_and_combine_as_configured(make_model, balancing):
    model = make_model(balancing=balancing, num_hidden_layers=3)
    ids = random_ids(2, 17)
    out = model.loss(ids[:, :-1], ids[:, 1:])
    for part in (out.loss, out.ce, out.aux_loss, out.z_loss):
        assert part.shape == () and torch.isfinite(part)
    logits = model(ids[:, :-1])
    torch.testing.assert_close(
        out.ce, F.cross_entropy(logits.reshape(-1, 1000), ids[:, 1:].reshape(-1))
    )
    expected = out.ce + 0.001 * out.z_loss + (0.01 * out.aux_loss if balancing == "aux_loss" else 0)
    torch.testing.assert_close(out.loss.detach(), expected)
    assert out.expert_counts.shape == (3, 4)
    assert out.expert_counts.sum(dim=1).tolist() == [2 * 16 * 2] * 3  # tokens * experts_per_token
    out.loss.backward()
    assert model.layers[0].mlp.router.weight.grad.abs().sum() > 0


def test_loss_ignores_targets_of_minus_100(make_model):
    model = make_model()
    ids = random_ids(1, 11)
    targets = ids[:, 1:].clone()
    targets[0, :4] = -100
    out = model.loss(ids[:, :-1], targets)
    logits = model(ids[:, :-1])[0, 4:]
    torch.testing.assert_close(out.ce, F.cross_entropy(logits, targets[0, 4:]))


def test_load_balancing_loss_is_one_when_balanced_and_num_experts_when_collapsed():
    balanced = Routing(
        torch.zeros(8, 4), torch.tensor([[0, 1], [2, 3]] * 4), torch.full((8, 2), 0.5)
    )
    assert math.isclose(load_balancing_loss(balanced, 4).item(), 1.0, rel_tol=1e-6)
    collapsed_logits = torch.tensor([[50.0, 0.0, 0.0, 0.0]]).expand(8, 4)
    collapsed = Routing(collapsed_logits, torch.zeros(8, 1, dtype=torch.long), torch.ones(8, 1))
    assert math.isclose(load_balancing_loss(collapsed, 4).item(), 4.0, rel_tol=1e-6)


def test_router_z_loss_is_mean_squared_logsumexp():
    logits = torch.tensor([[0.0, 0.0, 0.0, 0.0], [1.0, 2.0, 3.0, 4.0]])
    routing = Routing(logits, torch.zeros(2, 1, dtype=torch.long), torch.ones(2, 1))
    expected = (math.log(4) ** 2 + math.log(sum(math.exp(v) for v in (1, 2, 3, 4))) ** 2) / 2
    assert math.isclose(router_z_loss(routing).item(), expected, rel_tol=1e-6)


def test_update_selection_bias_moves_bias_toward_under_loaded_experts(make_model):
    model = make_model(balancing="bias", expert_bias_rate=0.1)
    counts = torch.tensor([[10, 0, 5, 5], [2, 2, 2, 14]])
    model.update_selection_bias(counts)
    torch.testing.assert_close(
        model.layers[0].mlp.router.selection_bias, torch.tensor([-0.1, 0.1, 0.0, 0.0])
    )
    torch.testing.assert_close(
        model.layers[1].mlp.router.selection_bias, torch.tensor([0.1, 0.1, 0.1, -0.1])
    )


def test_update_selection_bias_is_a_no_op_without_bias_balancing(make_model):
    model = make_model(balancing="aux_loss")
    model.update_selection_bias(torch.tensor([[10, 0, 5, 5], [2, 2, 2, 14]]))
    assert all(block.mlp.router.selection_bias.abs().sum() == 0 for block in model.layers)


def test_bias_balancing_evens_out_a_skewed_router(make_model):
    model = make_model(balancing="bias", expert_bias_rate=0.05, num_hidden_layers=1)
    with torch.no_grad():
        model.layers[0].mlp.router.bias.copy_(torch.tensor([4.0, 2.0, 0.0, -2.0]))
    ids = random_ids(1, 65)

    def spread() -> int:
        with torch.no_grad():
            counts = model.loss(ids[:, :-1], ids[:, 1:]).expert_counts
        model.update_selection_bias(counts)
        return (counts.max() - counts.min()).item()

    before = spread()
    for _ in range(80):
        after = spread()
    assert before >= 50 and after <= before / 3


# --- KV cache and left padding ------------------------------------------------------------


@pytest.mark.parametrize("attn_impl", ["eager", "sdpa", "flex"])
@pytest.mark.parametrize("prefill,step", [(5, 1), (21, 1), (3, 4)])
def test_incremental_decoding_with_kv_cache_equals_full_forward(
    make_model, attn_impl, prefill, step
):
    """Window 16 over 40 tokens: the sliding layer's cache is trimmed several times."""
    model = make_model(sliding_window=16, num_hidden_layers=3, attn_impl=attn_impl)
    ids = random_ids(2, 40)
    with torch.no_grad():
        full = model(ids)
        cache = KVCache.empty(model.config)
        pieces = [model(ids[:, :prefill], cache=cache)]
        for start in range(prefill, 40, step):
            pieces.append(model(ids[:, start : start + step], cache=cache))
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, rtol=1e-5, atol=1e-5)
    assert cache.length == 40
    assert cache.layers[0].keys.shape[2] == 15  # sliding: the window less the next query
    assert cache.layers[1].keys.shape[2] == 40  # full: everything


def test_left_padded_batch_matches_each_sequence_alone(make_model):
    model = make_model(sliding_window=16, num_hidden_layers=3, attn_impl="sdpa")
    lengths = [25, 12, 1]
    sequences = [random_ids(1, n, seed=n)[0] for n in lengths]
    ids = torch.zeros(3, 25, dtype=torch.long)
    key_valid = torch.zeros(3, 25, dtype=torch.bool)
    for row, sequence in enumerate(sequences):
        ids[row, 25 - len(sequence) :] = sequence
        key_valid[row, 25 - len(sequence) :] = True
    with torch.no_grad():
        batched = model(ids, key_valid=key_valid)
        for row, sequence in enumerate(sequences):
            alone = model(sequence[None])
            torch.testing.assert_close(
                batched[row, 25 - len(sequence) :], alone[0], rtol=1e-5, atol=1e-5
            )


def test_left_padded_prefill_then_cached_decoding_matches_each_sequence_alone(make_model):
    model = make_model(sliding_window=8, num_hidden_layers=2, attn_impl="eager")
    full = [random_ids(1, 30, seed=1)[0], random_ids(1, 19, seed=2)[0]]  # 10 more tokens each
    prompts = [full[0][:20], full[1][:9]]
    ids = torch.zeros(2, 20, dtype=torch.long)
    key_valid = torch.zeros(2, 20, dtype=torch.bool)
    for row, prompt in enumerate(prompts):
        ids[row, 20 - len(prompt) :], key_valid[row, 20 - len(prompt) :] = prompt, True
    with torch.no_grad():
        cache = KVCache.empty(model.config)
        model(ids, cache=cache, key_valid=key_valid)
        decoded = [
            model(torch.stack([full[0][20 + i], full[1][9 + i]])[:, None], cache=cache)
            for i in range(10)
        ]
        decoded = torch.cat(decoded, dim=1)  # (2, 10, V)
        for row, sequence in enumerate(full):
            alone = model(sequence[None])[0, -10:]
            torch.testing.assert_close(decoded[row], alone, rtol=1e-5, atol=1e-5)


# --- parameter counts (python -m gpt_oss.info) --------------------------------------------


@pytest.mark.parametrize(
    "model_name,total,active",
    [("full", 20.9e9, 3.6e9), ("gpt_oss_120b", 116.8e9, 5.1e9)],
)
def test_info_counts_match_the_published_figures(model_name, total, active):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        cfg = compose(config_name="info", overrides=[f"model={model_name}"])
    config = model_config(cfg.model)
    counts = parameter_counts(config)
    assert abs(counts["total"] - total) < 0.05e9
    assert abs(counts["active"] - active) < 0.05e9
    assert counts["embedding"] == counts["unembedding"] == 201088 * 2880


@pytest.mark.parametrize(
    "overrides",
    [{}, {"tie_embeddings": True}, {"qk_norm": True}, {"num_experts": 3, "experts_per_token": 3}],
)
def test_parameter_counts_equal_the_built_model(make_model, overrides):
    model = make_model(**overrides)
    counts = parameter_counts(model.config)
    assert counts["total"] == sum(p.numel() for p in model.parameters())
    assert counts["total"] == meta_parameter_count(model.config)
    experts = model.layers[0].mlp.experts
    per_expert = sum(p[0].numel() for p in experts.parameters())
    unused = model.config.num_experts - model.config.experts_per_token
    input_table = 0 if model.config.tie_embeddings else 1000 * 32
    assert counts["active"] == counts["total"] - input_table - 2 * unused * per_expert
