"""Each fast path equals its plain path in float32 on the CPU, forward values and gradients:
SDPA and FlexAttention vs eager attention, grouped vs looped experts, chunked vs whole-logits
cross-entropy, and the whole model's loss and parameter gradients."""

from __future__ import annotations

import pytest
import torch

from gpt_oss.model import losses, moe
from gpt_oss.model.attention import attention_eager, attention_flex, attention_mask, attention_sdpa
from gpt_oss.model.config import ModelConfig
from gpt_oss.model.losses import IGNORE_INDEX, defers_weight_grad, linear_cross_entropy
from gpt_oss.model.moe import Experts, Routing

pytestmark = [
    pytest.mark.usefixtures("single_threaded"),
    # FlexAttention runs unfused (uncompiled) on the CPU; its warning says so on every call.
    pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile"),
]

SCALE = 0.25  # 1/sqrt(head_dim) for head_dim 16


def assert_close(
    actual: torch.Tensor,
    expected: torch.Tensor,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    name: str = "",
) -> None:
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol, msg=lambda m: f"{name}: {m}")


def attention_inputs(q_heads: int, kv_heads: int, time: int, seed: int = 0, batch: int = 2):
    """q, k, v, sinks with gradients; sinks large enough that some heads mostly attend to them."""
    generator = torch.Generator().manual_seed(seed)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator).requires_grad_()

    q, k, v = (
        randn(batch, q_heads, time, 16),
        randn(batch, kv_heads, time, 16),
        randn(batch, kv_heads, time, 16),
    )
    sinks = (torch.randn(q_heads, generator=generator) * 2).requires_grad_()
    return q, k, v, sinks


def value_and_grads(fn, inputs: tuple[torch.Tensor, ...], seed: int = 1):
    """fn(*inputs) and the gradients of a random projection of it w.r.t. every input."""
    out = fn(*inputs)
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed))
    grads = torch.autograd.grad((out * weights).sum(), inputs)
    return out.detach(), grads


# --- attention ----------------------------------------------------------------------------


@pytest.mark.parametrize("window", [None, 128, 5])
@pytest.mark.parametrize("q_heads,kv_heads", [(4, 4), (4, 2), (4, 1)])
def test_sdpa_matches_eager_values_and_grads(window, q_heads, kv_heads):
    inputs = attention_inputs(q_heads, kv_heads, time=150)
    index = torch.arange(150)
    mask = attention_mask(index, index, window)
    expected, expected_grads = value_and_grads(lambda *a: attention_eager(*a, mask, SCALE), inputs)
    actual, actual_grads = value_and_grads(lambda *a: attention_sdpa(*a, mask, SCALE), inputs)
    assert_close(actual, expected)
    for name, got, want in zip("q k v sinks".split(), actual_grads, expected_grads, strict=True):
        assert_close(got, want, rtol=1e-4, atol=1e-5, name=name)


def test_sdpa_matches_eager_with_left_padding_and_a_cache_offset():
    """Queries at absolute indices 20..29 over keys 0..29, the first keys of one row padding."""
    q, _, _, sinks = attention_inputs(4, 2, time=10)
    _, k, v, _ = attention_inputs(4, 2, time=30, seed=2)
    key_valid = torch.ones(2, 30, dtype=torch.bool)
    key_valid[1, :7] = False
    mask = attention_mask(torch.arange(20, 30), torch.arange(30), 8, key_valid)
    inputs = (q, k, v, sinks)
    expected, expected_grads = value_and_grads(lambda *a: attention_eager(*a, mask, SCALE), inputs)
    actual, actual_grads = value_and_grads(lambda *a: attention_sdpa(*a, mask, SCALE), inputs)
    assert_close(actual, expected)
    for got, want in zip(actual_grads, expected_grads, strict=True):
        assert_close(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_sdpa_runs_a_fused_kernel_not_the_score_matrix(dtype):
    """The sink key keeps SDPA on a fused kernel (flash on the CPU), forward and backward: the
    math fallback would materialise every (query, key) score."""
    inputs = attention_inputs(4, 2, time=150)
    q, k, v, sinks = (t.detach().to(dtype).requires_grad_() for t in inputs)
    index = torch.arange(150)
    with torch.profiler.profile() as profile:
        attention_sdpa(q, k, v, sinks, attention_mask(index, index, 5), SCALE).sum().backward()
    kernels = {event.key for event in profile.key_averages() if "scaled_dot_product" in event.key}
    assert not any("math" in name for name in kernels), kernels
    assert any("flash" in name or "efficient" in name for name in kernels), kernels


@pytest.mark.parametrize("window", [None, 128, 5])
@pytest.mark.parametrize("q_heads,kv_heads", [(4, 4), (4, 1)])
def test_flex_matches_eager_values_and_sink_grads(window, q_heads, kv_heads):
    """FlexAttention has no CPU backward for q, k, v; the sink's gradient flows through the LSE
    gate outside the kernel, so it is checked here (q, k, v gradients: the gpu test below)."""
    q, k, v, sinks = attention_inputs(q_heads, kv_heads, time=150)
    q, k, v = q.detach(), k.detach(), v.detach()
    index = torch.arange(150)
    mask = attention_mask(index, index, window)
    expected, (expected_grad,) = value_and_grads(
        lambda s: attention_eager(q, k, v, s, mask, SCALE), (sinks,)
    )
    actual, (actual_grad,) = value_and_grads(
        lambda s: attention_flex(q, k, v, s, window, SCALE), (sinks,)
    )
    assert_close(actual, expected)
    assert_close(actual_grad, expected_grad, rtol=1e-4, atol=1e-5)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="FlexAttention backward needs CUDA")
@pytest.mark.parametrize("window", [None, 128])
def test_flex_matches_eager_grads_on_cuda(window):
    inputs = tuple(t.detach().cuda().requires_grad_() for t in attention_inputs(8, 2, time=256))
    index = torch.arange(256, device="cuda")
    mask = attention_mask(index, index, window)
    expected, expected_grads = value_and_grads(lambda *a: attention_eager(*a, mask, SCALE), inputs)
    actual, actual_grads = value_and_grads(lambda *a: attention_flex(*a, window, SCALE), inputs)
    assert_close(actual, expected, rtol=1e-3, atol=1e-3)  # TF32 and kernel blocking on GPU
    for got, want in zip(actual_grads, expected_grads, strict=True):
        assert_close(got, want, rtol=1e-3, atol=1e-3)


# --- experts ------------------------------------------------------------------------------


def experts_and_routing(hidden: int, seed: int = 0):
    """6 experts, top-2 over 40 tokens, expert 5 never chosen (an empty group)."""
    config = ModelConfig(
        vocab_size=10,
        hidden_size=hidden,
        intermediate_size=hidden,
        num_hidden_layers=1,
        num_attention_heads=1,
        num_key_value_heads=1,
        head_dim=16,
        num_experts=6,
        experts_per_token=2,
    )
    generator = torch.Generator().manual_seed(seed)
    experts = Experts(config)
    with torch.no_grad():
        for p in experts.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.7)
    x = torch.randn(40, hidden, generator=generator).requires_grad_()
    logits = torch.randn(40, 6, generator=generator)
    logits[:, 5] = -100.0
    chosen, chosen_experts = logits.topk(2, dim=-1)
    weights = torch.softmax(chosen, dim=-1).requires_grad_()
    return experts, x, Routing(logits, chosen_experts, weights)


# group multiple 32 and 256: the CPU's padded groups (256: each longer than all 80 rows);
# 1: no padding (as on a GPU); 5: ragged padding
@pytest.mark.parametrize("group_multiple", [256, 32, 1, 5])
@pytest.mark.parametrize("hidden", [32, 30])  # 30: rows not 16-byte aligned for _grouped_mm
def test_grouped_experts_match_loop_values_and_grads(hidden, group_multiple, monkeypatch):
    monkeypatch.setattr(moe, "_group_multiple", lambda x, rows, num_experts: group_multiple)
    experts, x, routing = experts_and_routing(hidden)
    tensors = (x, routing.weights, *experts.parameters())
    outputs = {}
    for impl in ("loop", "grouped"):
        experts.impl = impl
        outputs[impl] = value_and_grads(lambda *_: experts(x, routing), tensors)
    names = ["x", "routing weights"] + [name for name, _ in experts.named_parameters()]
    (loop_out, loop_grads), (grouped_out, grouped_grads) = outputs["loop"], outputs["grouped"]
    assert_close(grouped_out, loop_out)
    for name, got, want in zip(names, grouped_grads, loop_grads, strict=True):
        assert_close(got, want, rtol=1e-4, atol=1e-5, name=name)
    assert loop_grads[names.index("gate_up_proj")][5].abs().max() == 0  # unchosen: no gradient


@pytest.mark.parametrize(
    ("rows", "num_experts", "multiple"),
    [
        (16 * 256 * 2, 4, 256),  # small and tiny at 16 x 256: mean group 2048
        (4 * 256 * 2, 8, 32),  # mini at 4 x 256: mean group 256
        (16 * 256 * 2, 8, 128),  # mini at 16 x 256
        (3 * 100 * 2, 4, 32),  # small batches: never below 32 rows
        (0, 4, 32),
        (64 * 4096 * 2, 4, 1024),  # huge batches: never above 1024 rows
        (4 * 300 * 2, 4, 128),  # mean group 600: 600 / 8 = 75 -> the next power of two
    ],
)
def test_cpu_group_multiple_is_an_eighth_of_the_mean_group_as_a_power_of_two(
    rows, num_experts, multiple
):
    assert moe.cpu_group_multiple(rows, num_experts) == multiple


def test_grouped_experts_match_loop_in_float64():
    """The CPU kernel has no float64: the grouped path falls back per group, still exact."""
    experts, x, routing = experts_and_routing(32)
    experts.double()
    x64 = x.detach().double()
    routing = Routing(routing.logits, routing.experts, routing.weights.detach().double())
    experts.impl = "loop"
    expected = experts(x64, routing)
    experts.impl = "grouped"
    torch.testing.assert_close(experts(x64, routing), expected, rtol=1e-12, atol=1e-12)


# --- chunked linear cross-entropy ---------------------------------------------------------


def cross_entropy_inputs(tokens: int = 30, hidden: int = 16, vocab: int = 50):
    generator = torch.Generator().manual_seed(0)
    hidden_states = torch.randn(tokens, hidden, generator=generator).requires_grad_()
    weight = (torch.randn(vocab, hidden, generator=generator) * 0.5).requires_grad_()
    targets = torch.randint(0, vocab, (tokens,), generator=generator)
    targets[[0, 7, 8, 29]] = IGNORE_INDEX
    return hidden_states, weight, targets


# hidden 16: the weight gradient accumulates chunk by chunk; 64: 30 tokens' logit gradient is
# smaller than a float32 weight gradient, so it is kept and multiplied out once in backward.
@pytest.mark.parametrize("softmax_rows", [None, 3])  # 3: float32 softmax 3 rows at a time
@pytest.mark.parametrize("vocab_block", [16384, 16])  # 16: the weight in 4 blocks, the last short
@pytest.mark.parametrize("hidden_size", [16, 64])
@pytest.mark.parametrize("chunk_tokens", [1, 7, 16, 30, 1000])  # 7, 16 do not divide 30
def test_chunked_cross_entropy_matches_whole_values_and_grads(
    chunk_tokens, hidden_size, vocab_block, softmax_rows, monkeypatch
):
    monkeypatch.setattr(losses, "VOCAB_BLOCK", vocab_block)
    if softmax_rows is not None:
        monkeypatch.setattr(losses, "SOFTMAX_BYTES", {"cpu": softmax_rows * 4 * 50, "other": 0})
    assert defers_weight_grad(30, 50, hidden_size, torch.float32) == (hidden_size == 64)
    hidden, weight, targets = cross_entropy_inputs(hidden=hidden_size)
    expected = linear_cross_entropy(hidden, weight, targets, 0)
    expected_grads = torch.autograd.grad(expected, (hidden, weight))
    actual = linear_cross_entropy(hidden, weight, targets, chunk_tokens)
    actual_grads = torch.autograd.grad(actual, (hidden, weight))
    assert_close(actual, expected)
    for got, want in zip(actual_grads, expected_grads, strict=True):
        assert_close(got, want)
    assert expected_grads[0][[0, 7, 8, 29]].abs().max() == 0  # ignored rows get no gradient
    assert actual_grads[0][[0, 7, 8, 29]].abs().max() == 0


@pytest.mark.parametrize("hidden_size", [16, 64])
def test_chunked_cross_entropy_scales_with_the_upstream_gradient(hidden_size):
    hidden, weight, targets = cross_entropy_inputs(hidden=hidden_size)
    (expected,) = torch.autograd.grad(
        3.0 * linear_cross_entropy(hidden, weight, targets, 0), weight
    )
    (actual,) = torch.autograd.grad(3.0 * linear_cross_entropy(hidden, weight, targets, 7), weight)
    assert_close(actual, expected)


@pytest.mark.parametrize("hidden_size", [16, 64])  # accumulated / deferred weight gradient
def test_chunked_cross_entropy_matches_whole_under_bf16_autocast(hidden_size, monkeypatch):
    monkeypatch.setattr(losses, "VOCAB_BLOCK", 64)
    assert defers_weight_grad(64, 300, hidden_size, torch.bfloat16) == (hidden_size == 64)
    hidden, weight, targets = cross_entropy_inputs(tokens=64, hidden=hidden_size, vocab=300)
    results = []
    for chunk_tokens in (0, 24):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = linear_cross_entropy(hidden, weight, targets, chunk_tokens)
        grads = torch.autograd.grad(loss, (hidden, weight))
        results.append((loss, grads))
    (expected, expected_grads), (actual, actual_grads) = results
    assert actual.dtype == torch.float32
    assert_close(actual, expected, rtol=2e-2, atol=2e-2)
    for got, want in zip(actual_grads, expected_grads, strict=True):
        assert got.dtype == want.dtype == torch.float32
        assert_close(got, want, rtol=5e-2, atol=5e-3)
    float32_loss = linear_cross_entropy(hidden, weight, targets, 0)
    assert_close(actual, float32_loss, rtol=2e-2, atol=2e-2)  # bf16 is near, not equal


@pytest.mark.parametrize("hidden_size", [16, 64])  # accumulated / deferred weight gradient
def test_compiled_chunk_softmax_matches_whole_values_and_grads(hidden_size, monkeypatch):
    """compiled=True (trainer.compile) runs each chunk's softmax and gradient as one
    torch.compile'd kernel: equal to the whole-logits loss, ignored targets included."""
    monkeypatch.setattr(losses, "SOFTMAX_BYTES", {"cpu": 8 * 4 * 50, "other": 0})  # 8 rows
    hidden, weight, targets = cross_entropy_inputs(hidden=hidden_size)
    expected = linear_cross_entropy(hidden, weight, targets, 0)
    expected_grads = torch.autograd.grad(expected, (hidden, weight))
    actual = linear_cross_entropy(hidden, weight, targets, 1000, compiled=True)
    actual_grads = torch.autograd.grad(actual, (hidden, weight))
    assert_close(actual, expected)
    for got, want in zip(actual_grads, expected_grads, strict=True):
        assert_close(got, want)
    assert actual_grads[0][[0, 7, 8, 29]].abs().max() == 0


def test_chunked_cross_entropy_without_grad_mode_gives_the_same_loss():
    hidden, weight, targets = cross_entropy_inputs()
    expected = linear_cross_entropy(hidden, weight, targets, 7)
    with torch.no_grad():
        actual = linear_cross_entropy(hidden, weight, targets, 7)
    assert not actual.requires_grad
    assert_close(actual, expected.detach())


# --- the whole model ----------------------------------------------------------------------


def batch_with_ignored_targets(length: int) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(0, 1000, (2, length + 1), generator=torch.Generator().manual_seed(0))
    inputs, targets = ids[:, :-1], ids[:, 1:].clone()
    targets[0, :5] = IGNORE_INDEX
    return inputs, targets


def loss_and_grads(model, inputs: torch.Tensor, targets: torch.Tensor, compiled: bool = False):
    """One training forward and backward: the loss parts and every parameter's gradient."""
    out = model.loss(inputs, targets, compiled=compiled)
    out.loss.backward()
    return out, {name: p.grad for name, p in model.named_parameters()}


def assert_same_loss_and_grads(actual, expected) -> None:
    (got, got_grads), (want, want_grads) = actual, expected
    for part in ("loss", "ce", "aux_loss", "z_loss"):
        assert_close(getattr(got, part), getattr(want, part), name=part)
    assert torch.equal(got.expert_counts, want.expert_counts)
    for name, grad in want_grads.items():
        assert grad is not None and grad.abs().max() > 0, name
        assert_close(got_grads[name], grad, rtol=1e-4, atol=1e-5, name=name)


def test_model_loss_and_grads_fast_paths_match_plain_paths(make_model):
    """(sdpa, grouped, chunked) vs (eager, loop, whole logits): loss parts and every gradient."""
    inputs, targets = batch_with_ignored_targets(149)
    plain = make_model(seed=3, attn_impl="eager", moe_impl="loop", loss_chunk_tokens=0).train()
    fast = make_model(seed=3, attn_impl="sdpa", moe_impl="grouped", loss_chunk_tokens=37).train()
    assert_same_loss_and_grads(
        loss_and_grads(fast, inputs, targets), loss_and_grads(plain, inputs, targets)
    )


@pytest.mark.slow
def test_compiled_blocks_and_loss_match_the_eager_model(make_model):
    """trainer.compile=true: every block torch.compile'd and the loss's softmax compiled give
    the eager model's loss parts and parameter gradients (float32, CPU inductor), with the
    other fast paths on in both (sdpa, grouped experts, chunked loss)."""
    inputs, targets = batch_with_ignored_targets(40)
    fast = {"attn_impl": "sdpa", "moe_impl": "grouped", "loss_chunk_tokens": 37}
    eager = make_model(seed=3, sliding_window=16, **fast).train()
    compiled = make_model(seed=3, sliding_window=16, **fast).train()
    for block in compiled.layers:
        block.compile()
    assert_same_loss_and_grads(
        loss_and_grads(compiled, inputs, targets, compiled=True),
        loss_and_grads(eager, inputs, targets),
    )


def test_flex_model_trains_on_cpu_through_sdpa(make_model):
    """FlexAttention has no CPU backward; a flex-configured model still trains there."""
    ids = torch.randint(0, 1000, (1, 40), generator=torch.Generator().manual_seed(0))
    losses = {}
    for impl in ("eager", "flex"):
        model = make_model(seed=1, attn_impl=impl, sliding_window=16).train()
        out = model.loss(ids[:, :-1], ids[:, 1:])
        out.loss.backward()
        losses[impl] = out.loss.detach()
        assert model.layers[0].self_attn.q_proj.weight.grad is not None
    assert_close(losses["flex"], losses["eager"])
