"""Shared fixtures: unit-test model configs, and models whose every parameter (biases and sinks
included) is random at a scale where each piece of the architecture moves the logits."""

from __future__ import annotations

import math
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from gpt_oss.model.config import ModelConfig
from gpt_oss.model.model import GptOss

# The unit-test shape: smaller than conf/model/tiny.yaml (which keeps the real 201088-token
# vocabulary for training runs) and CPU-fast; the plain paths, so a test opts into a fast path
# by name.
UNIT_TEST_SHAPE = {
    "vocab_size": 1000,
    "hidden_size": 32,
    "intermediate_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "num_experts": 4,
    "experts_per_token": 2,
    "sliding_window": 128,
    "max_position_embeddings": 4096,
    "attn_impl": "eager",
    "moe_impl": "loop",
    "loss_chunk_tokens": 0,
}


@torch.no_grad()
def randomize_parameters(model: GptOss, seed: int = 0) -> GptOss:
    """Every parameter random with unit-scale activations; biases and sinks non-zero, gates
    large enough that the SwiGLU clamp at 7 is reached by some values."""
    generator = torch.Generator().manual_seed(seed)

    def normal(p: torch.Tensor, std: float, mean: float = 0.0) -> None:
        p.copy_(torch.randn(p.shape, generator=generator) * std + mean)

    for name, p in model.named_parameters():
        if name.endswith("norm.weight"):
            normal(p, 0.1, mean=1.0)
        elif name.endswith("experts.gate_up_proj"):  # (E, H, 2I): fan-in H
            normal(p, 3.0 / math.sqrt(p.shape[1]))
        elif name.endswith("experts.down_proj"):  # (E, I, H): fan-in I
            normal(p, 1.0 / math.sqrt(p.shape[1]))
        elif name == "embed_tokens.weight":
            normal(p, 1.0)
        elif p.dim() == 2:  # nn.Linear (out, in) and the router (E, H)
            normal(p, 1.0 / math.sqrt(p.shape[1]))
        else:  # biases and sinks
            normal(p, 0.5)
    return model


@pytest.fixture(autouse=True)
def seeded_rng() -> None:
    """Every test starts from the same global RNG state, so a failure reproduces."""
    torch.manual_seed(0)


@pytest.fixture
def single_threaded():
    """Tiny tensors gain nothing from intra-op threads, and on a busy 2-core machine OpenMP's
    barriers made the model tests ten times slower (measured: 265 s against 23 s)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def make_config() -> Callable[..., ModelConfig]:
    """ModelConfig factory: UNIT_TEST_SHAPE with overrides."""

    def make(**overrides) -> ModelConfig:
        return ModelConfig(**(UNIT_TEST_SHAPE | overrides))

    return make


@pytest.fixture(scope="session")
def make_model(make_config) -> Callable[..., GptOss]:
    """GptOss factory: UNIT_TEST_SHAPE with overrides, randomized parameters, eval mode."""

    def make(seed: int = 0, dtype: torch.dtype = torch.float32, **overrides) -> GptOss:
        torch.manual_seed(seed)
        model = randomize_parameters(GptOss(make_config(**overrides)), seed)
        return model.to(dtype).eval()

    return make


def tinystories_sample_path() -> Path | None:
    """../shared/data/tinystories_sample.jsonl beside this checkout, or beside the main checkout
    when this is a git worktree; None when neither exists."""
    root = Path(__file__).resolve().parents[1]
    candidates = [root.parent / "shared" / "data" / "tinystories_sample.jsonl"]
    common = subprocess.run(
        ["git", "rev-parse", "--path-format=absolute", "--git-common-dir"],
        capture_output=True, text=True, cwd=root, check=False,
    ).stdout.strip()  # fmt: skip
    if common:
        candidates.append(
            Path(common).parent.parent / "shared" / "data" / "tinystories_sample.jsonl"
        )
    return next((path for path in candidates if path.is_file()), None)


@pytest.fixture(scope="session")
def tinystories_sample() -> Path:
    """The real TinyStories sample (4,040 stories); the test is skipped without it."""
    path = tinystories_sample_path()
    if path is None:
        pytest.skip("../shared/data/tinystories_sample.jsonl is absent")
    return path
