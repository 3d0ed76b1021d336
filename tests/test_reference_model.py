"""What moved out of model.py keeps its behaviour: the attention kernel is chosen in one place
(attention.select_kernel), masks are built once per forward pass (kv_cache.attention_masks,
which knows the cache and the left padding), and `compiled` is an argument of the loss."""

from __future__ import annotations

import pytest
import torch

from gpt_oss.model import kv_cache, losses
from gpt_oss.model.attention import select_kernel
from gpt_oss.model.kv_cache import KVCache
from gpt_oss.training.distributed import LossForward, parallelize

pytestmark = [
    pytest.mark.usefixtures("single_threaded"),
    pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile"),
]

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


@pytest.mark.parametrize(
    "impl, plain, device, backward, kernel",
    [
        ("eager", True, CPU, True, "eager"),
        ("sdpa", False, CPU, False, "sdpa"),
        ("flex", True, CPU, False, "flex"),  # evaluation on a CPU
        ("flex", True, CPU, True, "sdpa"),  # no CPU backward for FlexAttention
        ("flex", True, CUDA, True, "flex"),
        ("flex", False, CUDA, False, "sdpa"),  # a cache or left padding needs a mask
    ],
)
def test_select_kernel(impl, plain, device, backward, kernel):
    assert select_kernel(impl, plain, device, backward) == kernel


def count_masks(monkeypatch) -> list[int]:
    """Counts calls of the real attention_mask made for a forward pass."""
    calls = []
    real = kv_cache.attention_mask

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(kv_cache, "attention_mask", counted)
    return calls


@pytest.mark.parametrize("attn_impl, expected", [("sdpa", 2), ("eager", 2), ("flex", 0)])
def test_masks_are_built_once_per_window_per_forward_pass(
    make_model, monkeypatch, attn_impl, expected
):
    """Four alternating layers share two masks (sliding and full); flex needs none."""
    model = make_model(num_hidden_layers=4, sliding_window=8, attn_impl=attn_impl)
    calls = count_masks(monkeypatch)
    with torch.no_grad():
        model(torch.randint(0, 1000, (2, 20)))
    assert len(calls) == expected


def test_cache_key_index_is_what_each_layer_cache_holds(make_model):
    model = make_model(num_hidden_layers=2, sliding_window=6)  # layer 0 sliding, 1 full
    cache = KVCache.empty(model.config)
    with torch.no_grad():
        for length in (4, 1, 3, 1, 1):
            expected = {w: cache.key_index(w, length, torch.device("cpu")) for w in (6, None)}
            model(torch.randint(0, 1000, (1, length)), cache)
            for layer, window in zip(cache.layers, (6, None), strict=True):
                attended = len(expected[window])  # the keys this step attended
                kept = layer.keys.shape[2]
                assert kept == (attended if window is None else min(attended, window - 1))
                assert expected[window][-1] == cache.length - 1


def compiled_loss_calls() -> int:
    info = losses._compiled_rows_to_grad.cache_info()
    return info.hits + info.misses


@pytest.mark.parametrize("compiled", [True, False])
def test_compiled_is_an_argument_of_the_loss_and_reaches_the_chunked_softmax(make_model, compiled):
    """No flag on the model: loss(compiled=...), and the trainer's loss functions pass it on."""
    model = make_model(loss_chunk_tokens=16)
    ids = torch.randint(0, 1000, (2, 21))
    calls = []
    with torch.no_grad():  # the compiled kernel is fetched, not run: nothing to compile here
        for loss in (
            lambda: model.loss(ids[:, :-1], ids[:, 1:], compiled=compiled),
            lambda: parallelize(model, "none", CPU, compiled=compiled)(ids[:, :-1], ids[:, 1:]),
            lambda: LossForward(model, compiled)(ids[:, :-1], ids[:, 1:]),
        ):
            before = compiled_loss_calls()
            loss()
            calls.append(compiled_loss_calls() - before)
    assert calls == [1 if compiled else 0] * 3
    assert not hasattr(model, "compiled_loss")


@pytest.mark.slow
def test_compiled_loss_gives_the_eager_loss_and_gradients(make_model):
    ids = torch.randint(0, 1000, (2, 33), generator=torch.Generator().manual_seed(1))
    results = []
    for compiled in (False, True):
        model = make_model(seed=3, loss_chunk_tokens=16).train()
        out = model.loss(ids[:, :-1], ids[:, 1:], compiled=compiled)
        out.loss.backward()
        results.append((out.loss.detach(), {n: p.grad for n, p in model.named_parameters()}))
    (eager, eager_grads), (compiled, compiled_grads) = results
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-6)
    for name, grad in eager_grads.items():
        torch.testing.assert_close(compiled_grads[name], grad, rtol=1e-4, atol=1e-5, msg=name)
