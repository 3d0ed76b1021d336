"""The CPU run preview's peak memory: what it is made of, how it grows with the batch and the
vocabulary, and how it compares with the peak RSS of a real run."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from gpt_oss.model.config import ModelConfig
from gpt_oss.model.size import parameter_counts
from gpt_oss.training import cpu_preview
from gpt_oss.training.cpu_preview import cpu_memory_plan, onednn_shape_bytes

ROOT = Path(__file__).resolve().parents[1]
# The README's CPU model: conf/model/small.yaml with the compact TinyStories vocabulary
SMALL_YAML = OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / "model" / "small.yaml"))
SMALL = ModelConfig(
    **{k: v for k, v in SMALL_YAML.items() if k != "_target_"} | {"vocab_size": 8192}
)
MiB = 2**20


def plan(config: ModelConfig = SMALL, batch: int = 16, dtype=torch.bfloat16, steps: int = 1200):
    return cpu_memory_plan(config, batch, 256, steps, dtype, 500 * MiB, 16 * MiB)


def test_the_parts_add_up_to_the_total_and_the_measured_parts_are_taken_as_given():
    parts = plan()
    assert parts["total"] == pytest.approx(sum(v for k, v in parts.items() if k != "total"))
    assert parts["process before step 1 (measured)"] == 500 * MiB
    assert parts["activations (measured per sequence)"] == 16 * 16 * MiB  # 16 sequences


def test_a_larger_batch_adds_activations_per_sequence_a_larger_loss_head_and_more_shapes():
    small, large = plan(batch=8), plan(batch=16)
    activations = "activations (measured per sequence)"
    assert large[activations] == 2 * small[activations]
    assert large["loss head"] > small["loss head"]
    assert large["oneDNN matmul shapes"] > small["oneDNN matmul shapes"]
    for fixed in (
        "process before step 1 (measured)",
        "gradients (fp32)",
        "optimizer states (AdamW)",
    ):
        assert large[fixed] == small[fixed]  # per parameter, not per token


def test_each_vocabulary_id_costs_its_rows_of_gradient_and_adamw_state_and_loss_head():
    wider = dataclasses.replace(SMALL, vocab_size=2 * SMALL.vocab_size)
    added = parameter_counts(wider)["total"] - parameter_counts(SMALL)["total"]
    tables = 1 if SMALL.tie_embeddings else 2  # model=small ties its embedding and head
    assert added == tables * SMALL.vocab_size * SMALL.hidden_size  # embedding (and head) rows
    narrow, wide = plan(SMALL), plan(wider)
    assert wide["gradients (fp32)"] - narrow["gradients (fp32)"] == 4 * added
    assert wide["optimizer states (AdamW)"] - narrow["optimizer states (AdamW)"] == 8 * added
    assert wide["loss head"] > narrow["loss head"]
    assert wide["oneDNN matmul shapes"] == narrow["oneDNN matmul shapes"]  # experts only


def test_float32_runs_have_no_autocast_copies_and_no_onednn_shape_growth():
    parts = plan(dtype=torch.float32)
    assert parts["weight copies (autocast)"] == 0 and parts["oneDNN matmul shapes"] == 0
    bf16 = plan(dtype=torch.bfloat16)
    assert bf16["weight copies (autocast)"] > 0 and bf16["oneDNN matmul shapes"] > 0


def test_onednn_shapes_accumulate_with_the_steps_up_to_the_cache_capacity(monkeypatch):
    tokens = 16 * 256
    grown = [onednn_shape_bytes(SMALL, tokens, steps) for steps in (1, 3, 10, 60, 1200)]
    assert grown == sorted(grown) and grown[0] > 0
    assert grown[-1] == pytest.approx(grown[-2], rel=0.01)  # the cache is full by step 60
    # 16 x 256 tokens round each group to 256 rows: 6 matmuls x 8192 / 256 = 192 shapes, all seen
    monkeypatch.setenv(cpu_preview.ONEDNN_CACHE_ENV, "48")
    assert onednn_shape_bytes(SMALL, tokens, 1200) == pytest.approx(grown[-1] / 4)
    monkeypatch.setenv(cpu_preview.ONEDNN_CACHE_ENV, "0")
    assert onednn_shape_bytes(SMALL, tokens, 1200) == 0


def test_saved_activations_count_the_inputs_and_leave_out_weights_and_their_autocast_copies():
    linear = nn.Linear(16, 32, bias=False)
    x = torch.randn(8, 16)

    def forward_backward() -> None:
        linear(x).square().sum().backward()  # saves x (for the weight's gradient) and the output

    assert cpu_preview.saved_activation_bytes(forward_backward) == (8 * 16 + 8 * 32) * 4

    def under_autocast() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = linear(x)  # saves x cast to bf16 and the bf16 weight copy (left out)
        out.float().square().sum().backward()  # saves the bf16 output's float32 copy

    assert cpu_preview.saved_activation_bytes(under_autocast) == 8 * 16 * 2 + 8 * 32 * 4


def run_and_measure(tmp_path: Path, sample: Path, *overrides: str) -> tuple[float, float]:
    """(estimated, measured) peak GiB of `python -m gpt_oss.train` on the real sample: the
    preview's logged figure and the process's ru_maxrss (os.wait4, this child only)."""
    command = [
        sys.executable, "-m", "gpt_oss.train", "model=tiny", "trainer=cpu", "logger=none",
        "data=text", f"data.train_files=[{sample}]", "data.val_fraction=0.03",
        f"data.cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={tmp_path / 'run'}",
        "trainer.threads=1", "trainer.progress=false", "trainer.eval_batches=1", *overrides,
    ]  # fmt: skip
    env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    with open(tmp_path / "output.txt", "w") as output:
        child = subprocess.Popen(command, cwd=ROOT, env=env, stdout=output, stderr=output)
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
    text = (tmp_path / "output.txt").read_text()
    assert child.returncode == 0, text[-3000:]
    estimated = re.search(r"peak memory ~ ([\d.]+) GiB \(estimated\)", text)
    assert estimated, text[-3000:]
    unit = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, else KiB
    return float(estimated.group(1)), usage.ru_maxrss * unit / 2**30


@pytest.mark.skipif(not hasattr(os, "wait4"), reason="os.wait4 (a child's peak RSS): Unix only")
def test_the_estimate_is_near_the_peak_rss_of_a_real_tiny_run(tinystories_sample, tmp_path):
    """float32 (the CPU's default precision), 16 x 256 tokens: the step's activations and loss
    head are ~40% of the peak, the rest is the process itself (measured: 0.72 GiB estimated,
    0.75 GiB peak). Memory does not depend on the load; the margin is for other CPUs and
    allocators."""
    estimated, measured = run_and_measure(
        tmp_path, tinystories_sample, "trainer.max_steps=3", "trainer.precision=fp32"
    )
    assert 0.65 * measured <= estimated <= 1.5 * measured, (estimated, measured)


@pytest.mark.parametrize(
    ("micro_batch", "seq_len", "steps"), [(0, 256, 1), (16, 0, 1), (16, 256, -1)]
)
def test_an_empty_batch_or_negative_steps_is_an_error_naming_the_value(micro_batch, seq_len, steps):
    with pytest.raises(ValueError, match=r"=(0|-1) is invalid: it must be an integer >= [01]"):
        cpu_memory_plan(SMALL, micro_batch, seq_len, steps, torch.bfloat16, 0, 0)
