"""The benchmark entry point: `python -m gpt_oss.bench` runs the real training step on the CPU
and ends with one JSON line; its config fails early on impossible values; its report is the
arithmetic of its rows. No timing is asserted: timings belong to the bench, not to tests."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from gpt_oss.bench import (
    BenchConfig,
    RandomTokens,
    format_table,
    hf_train_step,
    named_as_ours,
    run,
    step_breakdown,
    summarize,
)
from gpt_oss.model.config import ConfigError, ModelConfig
from gpt_oss.model.model import GptOss
from gpt_oss.model.precision import cpu_has_native_bf16, resolve_precision
from gpt_oss.training.optim import Muon, muon
from gpt_oss.training.trainer import TrainerConfig

ROOT = Path(__file__).resolve().parents[1]
TINY = ["model=tiny", "trainer.device=cpu", "trainer.batch_size=2", "trainer.seq_len=32"]
JSON_KEYS = {"tokens_per_s", "mfu", "peak_mem_gib", "flops_per_token", "device", "config"}


def bench_command(*overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "gpt_oss.bench",
            *TINY,
            "bench.warmup_steps=1",
            "bench.steps=2",
            *overrides,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )


def last_json(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


def test_bench_command_prints_a_table_then_one_json_line():
    done = bench_command("bench.precision=fp32", "bench.profile=true")
    assert done.returncode == 0, done.stderr
    report = last_json(done.stdout)
    assert JSON_KEYS <= set(report)
    assert report["tokens_per_s"] > 0 and 0 < report["mfu"] < 1 and report["peak_mem_gib"] > 0
    assert report["config"]["model"]["hidden_size"] == 64 and report["config"]["seq_len"] == 32
    assert report["device"].startswith("cpu")
    assert "tokens/s" in done.stdout and "ours" in done.stdout  # the table comes first
    split = report["runs"][0]["profile"]  # bench.profile: where the profiled step went
    assert split["matmul_ms"] > 0 and split["optimizer_ms"] > 0 and split["other_ms"] > 0
    parts = split["matmul_ms"] + split["optimizer_ms"] + split["other_ms"]
    assert parts == pytest.approx(split["step_ms"])
    assert split["ceiling_tokens_per_s"] == pytest.approx(
        1e3 * 2 * 32 / (split["matmul_ms"] + split["optimizer_ms"])
    )
    assert "aten::mm" in done.stderr  # the operator table
    assert "matmuls + optimizer alone would give" in done.stdout


def test_step_breakdown_counts_the_optimizers_own_matmuls_as_optimizer():
    class MatmulOptimizer(torch.optim.SGD):  # a step that multiplies matrices, as Muon's does
        def step(self, closure=None):
            for group in self.param_groups:
                for p in group["params"]:
                    p.data -= 0.1 * (p.grad @ p.grad.T @ p.grad)
            return None

    weight = torch.nn.Parameter(torch.randn(256, 256))
    optimizer = MatmulOptimizer([weight], lr=0.1)

    def step():
        loss = (torch.randn(64, 256) @ weight).square().sum()  # one forward mm, two backward
        loss.backward()
        optimizer.step()

    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    events = prof.events()
    split = step_breakdown(events, torch.device("cpu"))
    mm_ms = {name: 0.0 for name in ("inside", "outside")}
    for event in events:
        if event.name == "aten::mm":
            parent, inside = event.cpu_parent, False
            while parent is not None:
                inside |= parent.name.startswith("Optimizer.step#")
                parent = parent.cpu_parent
            mm_ms["inside" if inside else "outside"] += event.self_cpu_time_total / 1e3
    assert mm_ms["inside"] > 0 and mm_ms["outside"] > 0
    assert split["matmul_ms"] == pytest.approx(mm_ms["outside"])
    assert split["optimizer_ms"] >= mm_ms["inside"]


@pytest.mark.slow
def test_bench_compares_with_transformers_in_the_same_run():
    pytest.importorskip("transformers")
    done = bench_command("bench.compare=hf", "bench.precision=fp32")
    assert done.returncode == 0, done.stderr
    report = last_json(done.stdout)
    impls = [row["impl"] for row in report["runs"]]
    assert impls == ["ours", "hf"]
    hf = report["runs"][1]
    assert hf["attention"] == "eager" and hf["precision"] == "fp32"
    assert report["speedup_vs_hf"] == pytest.approx(report["tokens_per_s"] / hf["tokens_per_s"])
    assert "transformers (eager)" in done.stdout


@pytest.mark.parametrize(
    "override, message",
    [
        ("bench.steps=0", "bench.steps=0"),
        ("bench.precision=fp8", "bench.precision='fp8'"),
        ("bench.compare=megatron", "bench.compare='megatron'"),
        ("trainer.batch_size=3", "trainer.batch_size=3"),  # not divisible by grad_accum=2 below
    ],
)
def test_bad_bench_config_fails_before_any_worker_starts(override, message):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        cfg = compose("bench", overrides=[*TINY, "trainer.grad_accum=2", override])
    with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
        run(cfg)


def test_precision_auto_is_bf16_on_gpus_and_else_what_the_cpu_runs_natively():
    def bench(name: str, device: str) -> str:
        return resolve_precision(
            name, torch.device(device), "bench.precision", native_cpu_bf16=True
        )

    assert bench("auto", "cuda") == "bf16"
    assert bench("fp32", "cuda") == "fp32"
    assert bench("auto", "cpu") == ("bf16" if cpu_has_native_bf16() else "fp32")
    assert BenchConfig(precision=["fp32", "bf16"]).precisions() == ["fp32", "bf16"]


def test_the_transformers_step_trains_with_the_runs_own_optimizer_and_parameter_groups():
    """Same names and shapes as ours, so the run's optimizer factory gives the same groups:
    with optimizer=muon transformers' model gets Muon (it used to get AdamW at Muon's lr)."""
    transformers = pytest.importorskip("transformers")
    from gpt_oss.model.hf import hf_config

    config = ModelConfig(
        vocab_size=1000,
        hidden_size=32,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        num_experts=4,
        experts_per_token=2,
    )
    hf = transformers.GptOssForCausalLM._from_config(
        transformers.GptOssConfig(**hf_config(config)), attn_implementation="eager"
    )
    ours = {name: p.shape for name, p in GptOss(config).named_parameters()}
    assert {name: p.shape for name, p in named_as_ours(hf, config).named_parameters()} == ours

    def group_shapes(optimizer: torch.optim.Optimizer) -> list[list[tuple[int, ...]]]:
        return [sorted(tuple(p.shape) for p in g["params"]) for g in optimizer.param_groups]

    batches = RandomTokens(config.vocab_size, 2, 8, seed=0, device=torch.device("cpu"))
    step = hf_train_step(config, muon, "eager", None, torch.device("cpu"), batches.next_batch)
    assert isinstance(step.optimizer, Muon)
    assert group_shapes(step.optimizer) == group_shapes(muon(GptOss(config)))
    assert math.isfinite(step())  # and it trains


def row(impl: str, precision: str, tokens_per_s: float, memory: float) -> dict:
    return {
        "impl": impl,
        "precision": precision,
        "tokens_per_s": tokens_per_s,
        "mfu": 0.01,
        "peak_mem_gib": memory,
        "flops_per_token": 1e9,
        "device": "cpu",
        "step_ms": 1.0,
        "attention": "eager" if impl == "hf" else "sdpa",
        "memory_kind": "peak RSS",
    }


def test_report_puts_ours_first_and_divides_by_transformers_at_each_precision():
    rows = [
        row("ours", "fp32", 200, 4.0),
        row("hf", "fp32", 100, 5.0),
        row("ours", "bf16", 600, 4.5),
        row("hf", "bf16", 120, 5.0),
    ]
    report = summarize(
        rows,
        ModelConfig(num_hidden_layers=2),
        TrainerConfig(batch_size=2, seq_len=8),
        torch.device("cpu"),
    )
    assert report["tokens_per_s"] == 200 and report["config"]["precision"] == "fp32"
    assert report["speedup_vs_hf"] == 2.0
    assert report["best_vs_hf_fp32"] == 6.0  # the fastest of ours against transformers in fp32
    assert rows[2]["speedup_vs_hf"] == 5.0 and rows[2]["memory_vs_hf"] == 0.9
    table = format_table(report)
    assert "6.00x" in table and table.count("\n") == 7
