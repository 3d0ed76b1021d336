"""Entry point: training throughput, MFU and peak memory of the real training step.

    python -m gpt_oss.bench model=mini trainer.batch_size=2 trainer.seq_len=256 bench.compare=hf

Each measurement runs in a fresh worker process, so its peak memory is its own: ours through
gpt_oss.training.trainer.Trainer.train_step (forward, backward, clipping, optimizer) on random
tokens, and with bench.compare=hf transformers' GptOssForCausalLM of the same shape, precision and
optimizer. The output is a table, then as its last line one JSON object.

Peak memory is torch.cuda.max_memory_allocated on a GPU and the worker's peak resident set
(ru_maxrss: weights, optimizer state, activations, libraries) on the CPU.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import hydra
import torch
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf
from torch.autograd import DeviceType

from gpt_oss.cli import exit_on_input_error
from gpt_oss.model.config import ConfigError, ModelConfig
from gpt_oss.model.precision import (
    PRECISIONS,
    autocast_dtype,
    cpu_has_native_bf16,
    resolve_precision,
)
from gpt_oss.paths import CONF_DIR
from gpt_oss.schema import RunConfig, build, checked_command_line
from gpt_oss.training.metrics import flops_per_token, peak_flops, synchronize
from gpt_oss.validation import check_fields, ranged

log = logging.getLogger("gpt_oss.bench")

COMPARES = (None, "hf")
HF_ATTENTION = ("auto", "eager", "sdpa", "flex_attention")
RESULT_PREFIX = "BENCH_RESULT "  # the worker's answer line on stdout


@dataclass
class BenchConfig:
    """What to time: `bench.*` in conf/bench.yaml."""

    warmup_steps: int = ranged(2, "[0, inf)")
    steps: int = ranged(5, "[1, inf)")
    precision: Any = "auto"  # a name, or a list of names (one row each)
    compare: str | None = None  # None or "hf"
    hf_attention: str = "auto"
    profile: bool = False
    seed: int = ranged(0, "[0, 4294967295]")

    def precisions(self) -> list[str]:
        """The precision names as a list, each checked."""
        names = [self.precision] if isinstance(self.precision, str) else list(self.precision)
        for name in names:
            if name not in PRECISIONS:
                raise ConfigError(f"bench.precision={name!r} is invalid: valid are {PRECISIONS}")
        if not names:
            raise ConfigError("bench.precision=[] is invalid: give at least one precision")
        return names

    def validate(self) -> None:
        """Raise ConfigError naming the first impossible field."""
        check_fields(self, "bench")
        if self.compare not in COMPARES:
            raise ConfigError(f"bench.compare={self.compare!r} is invalid: valid are {COMPARES}")
        if self.hf_attention not in HF_ATTENTION:
            raise ConfigError(
                f"bench.hf_attention={self.hf_attention!r} is invalid: valid are {HF_ATTENTION}"
            )
        self.precisions()


@dataclass
class BenchRunConfig(RunConfig):
    """conf/bench.yaml's schema: the training config plus `bench`."""

    bench: BenchConfig = field(default_factory=BenchConfig)


ConfigStore.instance().store(name="bench_schema", node=BenchRunConfig)


# ------------------------------------------------------------------------------ the parent


def run(cfg: DictConfig) -> dict[str, Any]:
    """Validate, time every (implementation, precision) in its own process, print the report."""
    parts = build(cfg, BenchRunConfig)
    bench = BenchConfig(**OmegaConf.to_container(cfg.bench, resolve=True))
    bench.validate()
    trainer = parts["trainer_config"]
    device = _device(trainer.device)
    # auto: bf16 wherever bf16 matmuls are native (a CPU with AMX/AVX512-BF16 too)
    precisions = [
        resolve_precision(p, device, "bench.precision", native_cpu_bf16=True)
        for p in bench.precisions()
    ]
    container = OmegaConf.to_container(cfg, resolve=True)
    rows = []
    for precision in dict.fromkeys(precisions):  # each once, in the order given
        rows.append(run_worker({"impl": "ours", "config": container, "precision": precision}))
        if bench.compare == "hf":
            rows.append(run_worker({"impl": "hf", "config": container, "precision": precision}))
    report = summarize(rows, parts["model_config"], trainer, device)
    print(format_table(report), flush=True)
    print(json.dumps(report), flush=True)
    return report


def _device(name: str) -> torch.device:
    from gpt_oss.model.config import resolve_device

    return resolve_device(name, "trainer.device")


def run_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """One measurement in a fresh interpreter; its stderr passes through, its answer is parsed."""
    code = "import gpt_oss.bench as b; b.worker_main()"
    done = subprocess.run(
        [sys.executable, "-c", code],
        input=json.dumps(spec),
        stdout=subprocess.PIPE,
        text=True,
        env=os.environ | {"PYTHONUNBUFFERED": "1"},
    )
    answers = [line for line in done.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    for line in done.stdout.splitlines():
        if not line.startswith(RESULT_PREFIX):
            print(line, file=sys.stderr)
    if done.returncode != 0 or not answers:
        raise RuntimeError(
            f"the {spec['impl']} {spec['precision']} benchmark worker failed "
            f"(exit code {done.returncode}); its error is printed above"
        )
    return json.loads(answers[-1].removeprefix(RESULT_PREFIX))


def summarize(
    rows: list[dict], model_config: ModelConfig, trainer, device: torch.device
) -> dict[str, Any]:
    """The JSON report: ours (first precision) at the top, every row, ratios to transformers."""
    ours = [r for r in rows if r["impl"] == "ours"]
    hf = {r["precision"]: r for r in rows if r["impl"] == "hf"}
    for row in ours:
        other = hf.get(row["precision"])
        if other is not None:
            row["speedup_vs_hf"] = row["tokens_per_s"] / other["tokens_per_s"]
            row["memory_vs_hf"] = row["peak_mem_gib"] / other["peak_mem_gib"]
    head = ours[0]
    report = {key: head[key] for key in ("tokens_per_s", "mfu", "peak_mem_gib", "flops_per_token")}
    report |= {
        "device": head["device"],
        "config": {
            "model": {k: v for k, v in model_config.to_dict().items() if k != "layer_types"},
            "batch_size": trainer.batch_size,
            "seq_len": trainer.seq_len,
            "grad_accum": trainer.grad_accum,
            "precision": head["precision"],
            "compile": trainer.compile,
        },
        "runs": rows,
    }
    if hf:
        best_ours = max(ours, key=lambda r: r["tokens_per_s"])
        fp32_hf = hf.get("fp32") or next(iter(hf.values()))
        report["speedup_vs_hf"] = head.get("speedup_vs_hf")
        report["best_vs_hf_fp32"] = best_ours["tokens_per_s"] / fp32_hf["tokens_per_s"]
    return report


def format_table(report: dict[str, Any]) -> str:
    """A table a person reads: one row per (implementation, precision)."""
    config = report["config"]
    lines = [
        f"device: {report['device']}   batch {config['batch_size']} x seq {config['seq_len']}"
        f"   flops/token {report['flops_per_token'] / 1e9:.2f} GFLOP (training, 6N + attention)",
        f"{'implementation':<28}{'precision':>9}{'tokens/s':>11}{'step ms':>10}{'MFU':>8}"
        f"{'peak GiB':>10}{'vs hf':>8}",
    ]
    for row in report["runs"]:
        name = "ours" if row["impl"] == "ours" else f"transformers ({row['attention']})"
        ratio = f"{row['speedup_vs_hf']:.2f}x" if "speedup_vs_hf" in row else ""
        lines.append(
            f"{name:<28}{row['precision']:>9}{row['tokens_per_s']:>11,.0f}{row['step_ms']:>10,.0f}"
            f"{row['mfu'] * 100:>7.1f}%{row['peak_mem_gib']:>10.2f}{ratio:>8}"
        )
    if "best_vs_hf_fp32" in report:
        lines.append(f"fastest ours / transformers fp32: {report['best_vs_hf_fp32']:.2f}x tokens/s")
    lines.extend(profile_lines(report))
    lines.append(f"peak memory: {report['runs'][0]['memory_kind']}")
    return "\n".join(lines)


def profile_lines(report: dict[str, Any]) -> list[str]:
    """bench.profile: where each profiled step of ours went, and the ceiling that leaves."""
    hf = [r for r in report["runs"] if r["impl"] == "hf"]
    fp32_hf = next((r for r in hf if r["precision"] == "fp32"), hf[0] if hf else None)
    lines = []
    for row in report["runs"]:
        split = row.get("profile")
        if split is None:
            continue
        shares = ", ".join(
            f"{name} {split[key]:,.0f} ms ({split[key] / split['step_ms']:.0%})"
            for name, key in (
                ("matmuls", "matmul_ms"),
                ("optimizer", "optimizer_ms"),
                ("the rest", "other_ms"),
            )
        )
        ceiling = f"{split['ceiling_tokens_per_s']:,.0f} tokens/s"
        if fp32_hf is not None:
            ratio = split["ceiling_tokens_per_s"] / fp32_hf["tokens_per_s"]
            ceiling += f" ({ratio:.2f}x transformers {fp32_hf['precision']})"
        lines.append(
            f"profiled step of ours ({row['precision']}, {split['step_ms']:,.0f} ms): {shares}"
        )
        lines.append(f"  with the rest free, matmuls + optimizer alone would give {ceiling}")
    return lines


# ------------------------------------------------------------------------------ the workers


def worker_main() -> None:
    """Read a spec on stdin, time it, answer on stdout."""
    logging.basicConfig(level=logging.WARNING)
    spec = json.loads(sys.stdin.read())
    measure = measure_ours if spec["impl"] == "ours" else measure_hf
    print(RESULT_PREFIX + json.dumps(measure(spec)), flush=True)


def measure_ours(spec: dict[str, Any]) -> dict[str, Any]:
    """Trainer.train_step, exactly as training runs it, on random tokens."""
    from gpt_oss.model.config import resolve_device
    from gpt_oss.model.model import GptOss
    from gpt_oss.training.trainer import Trainer, seed_everything

    cfg = OmegaConf.create(spec["config"])
    parts = build(cfg, BenchRunConfig)
    bench = BenchConfig(**spec["config"]["bench"])
    trainer_config = parts["trainer_config"]
    trainer_config.precision = spec["precision"]
    trainer_config.progress = False
    seed_everything(bench.seed)
    model = GptOss(parts["model_config"])
    device = resolve_device(trainer_config.device, "trainer.device")
    micro = trainer_config.batch_size // trainer_config.grad_accum
    tokens = RandomTokens(parts["model_config"].vocab_size, micro, trainer_config.seq_len,
                          bench.seed, device)  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="gpt_oss_bench_") as run_dir:
        # no validation loader: the bench times train_step alone
        trainer = Trainer(model, parts["optimizer"], parts["schedule"], tokens, None,
                          trainer_config, run_dir)  # fmt: skip
        times = time_steps(trainer.train_step, bench.warmup_steps, bench.steps, trainer.device)
        result = measurement(
            times, trainer.device, parts["model_config"], trainer_config, spec["precision"]
        )
        if bench.profile:
            table, split = profile_step(trainer.train_step, trainer.device)
            tokens = trainer_config.batch_size * trainer_config.seq_len
            # what this step would run at if everything but its matmuls and optimizer were free
            split["ceiling_tokens_per_s"] = (
                1e3 * tokens / (split["matmul_ms"] + split["optimizer_ms"])
            )
            result["profile"] = split
            print(table, file=sys.stderr, flush=True)
    return result | {"impl": "ours", "attention": model.config.attn_impl}


def measure_hf(spec: dict[str, Any]) -> dict[str, Any]:
    """transformers' GptOssForCausalLM: its own loss (labels), AdamW, clipping, same precision."""
    from gpt_oss.model.config import resolve_device
    from gpt_oss.training.trainer import seed_everything

    cfg = OmegaConf.create(spec["config"])
    parts = build(cfg, BenchRunConfig)
    bench = BenchConfig(**spec["config"]["bench"])
    model_config, trainer_config = parts["model_config"], parts["trainer_config"]
    device = resolve_device(trainer_config.device, "trainer.device")
    seed_everything(bench.seed)
    attentions = [bench.hf_attention]
    if bench.hf_attention == "auto":
        attentions = ["flex_attention", "eager"] if device.type == "cuda" else ["eager"]
    dtype = autocast_dtype(spec["precision"])
    tokens = RandomTokens(
        model_config.vocab_size,
        trainer_config.batch_size,
        trainer_config.seq_len,
        bench.seed,
        device,
    )
    for attention in attentions:
        step = hf_train_step(
            model_config, parts["optimizer"], attention, dtype, device, tokens.next_batch
        )
        try:
            times = time_steps(step, bench.warmup_steps, bench.steps, device)
            break
        except Exception as error:  # noqa: BLE001 - flex may not compile here: report, then eager
            if attention == attentions[-1]:
                raise
            log.warning(
                "transformers with attn_implementation=%s failed (%s: %s); trying %s",
                attention,
                type(error).__name__,
                error,
                attentions[attentions.index(attention) + 1],
            )
            del step
            if device.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
    result = measurement(times, device, model_config, trainer_config, spec["precision"])
    return result | {"impl": "hf", "attention": attention, "experts": step.experts_implementation}


def hf_train_step(
    model_config: ModelConfig,
    optimizer_factory: Callable[[torch.nn.Module], torch.optim.Optimizer],
    attention: str,
    dtype: torch.dtype | None,
    device: torch.device,
    batches: Callable,
) -> Callable:
    """A closure running one transformers training step; .experts_implementation says which.
    The optimizer is the run's own (optimizer=...), with our parameter groups."""
    import transformers

    from gpt_oss.model.hf import hf_config

    config = transformers.GptOssConfig(**hf_config(model_config))
    config.use_cache = False
    model = transformers.GptOssForCausalLM._from_config(
        config, attn_implementation=attention, dtype=torch.float32
    )
    model = model.to(device).train()
    optimizer = optimizer_factory(named_as_ours(model, model_config))
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)

    def step() -> float:
        inputs, targets = batches()
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            # shift_labels: the targets are already the next tokens, as ours get them
            loss = model(input_ids=inputs, labels=targets, shift_labels=targets).loss
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()

    step.experts_implementation = getattr(model.config, "_experts_implementation", None) or "eager"
    step.optimizer = optimizer
    return step


def named_as_ours(model: torch.nn.Module, config: ModelConfig) -> torch.nn.Module:
    """transformers' GptOssForCausalLM with our parameter names (no "model." prefix: its
    module names are the checkpoint keys, as ours are) and our parameter roles (those of our
    model of the same `config`, built on the meta device), so the project's optimizer
    factories and their parameter groups apply to it unchanged. The parameters are its own."""
    from gpt_oss.model.model import GptOss
    from gpt_oss.model.roles import parameter_roles

    view = torch.nn.Module()
    for name, child in model.model.named_children():
        view.add_module(name, child)
    view.add_module("lm_head", model.lm_head)
    with torch.device("meta"):
        view.PARAMETER_ROLES = parameter_roles(GptOss(config))  # full names, declared at the root
    return view


def time_steps(step: Callable, warmup: int, steps: int, device: torch.device) -> list[float]:
    """Wall seconds of each timed step, after `warmup` untimed ones."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        synchronize(device)
        start = time.perf_counter()
        step()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return times


def measurement(
    times: list[float],
    device: torch.device,
    model_config: ModelConfig,
    trainer_config,
    precision: str,
) -> dict[str, Any]:
    """tokens/s over all timed steps, MFU against this device's peak, peak memory."""
    tokens = trainer_config.batch_size * trainer_config.seq_len
    tokens_per_s = tokens * len(times) / sum(times)
    per_token = flops_per_token(model_config, trainer_config.seq_len)
    peak = peak_flops(device, torch.bfloat16 if precision in ("bf16", "fp16") else torch.float32)
    memory, kind = peak_memory_gib(device)
    return {
        "precision": precision,
        "tokens_per_s": tokens_per_s,
        "mfu": tokens_per_s * per_token / peak,
        "peak_mem_gib": memory,
        "memory_kind": kind,
        "flops_per_token": per_token,
        "step_ms": 1e3 * sum(times) / len(times),
        "step_ms_min": 1e3 * min(times),
        "peak_flops": peak,
        "device": device_name(device),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }


def peak_memory_gib(device: torch.device) -> tuple[float, str]:
    """(GiB, what it measures): CUDA's peak allocation, or this process's peak RSS."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30, "torch.cuda.max_memory_allocated"
    return resource.getrusage(
        resource.RUSAGE_SELF
    ).ru_maxrss / 2**20, "peak RSS of the process (ru_maxrss)"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = next(
        (line.split(":", 1)[1].strip() for line in _cpuinfo() if line.startswith("model name")),
        "cpu",
    )
    return f"cpu: {model}, {torch.get_num_threads()} threads" + (
        ", native bf16" if cpu_has_native_bf16() else ""
    )


def _cpuinfo() -> list[str]:
    try:
        with open("/proc/cpuinfo") as f:
            return f.read().splitlines()
    except OSError:
        return []


# Operators whose self time is matrix multiplication (CPU and CUDA dispatch names).
MATMUL_OPS = frozenset(
    {
        "aten::mm",
        "aten::addmm",
        "aten::bmm",
        "aten::baddbmm",
        "aten::_grouped_mm",
        "aten::mv",
        "aten::addmv",
    }
)
OPTIMIZER_EVENT = "Optimizer.step#"  # the range torch.optim opens around every step()


def profile_step(
    step: Callable, device: torch.device, rows: int = 25
) -> tuple[str, dict[str, float]]:
    """torch.profiler over one step: its top operators by self time, and where the step's time
    went (milliseconds): matmuls, the optimizer step (its own matmuls included), the rest."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        step()
        synchronize(device)
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    table = prof.key_averages().table(sort_by=key, row_limit=rows)
    return table, step_breakdown(prof.events(), device)


def step_breakdown(events, device: torch.device) -> dict[str, float]:
    """Split the self time of profiled events (ms) into matmuls, optimizer and everything else."""
    own_time = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"

    def in_optimizer(event) -> bool:
        while event is not None:
            if event.name.startswith(OPTIMIZER_EVENT):
                return True
            event = event.cpu_parent
        return False

    total = matmul = optimizer = 0.0
    for event in events:
        if event.device_type != DeviceType.CPU:  # kernels: already in their op's device time
            continue
        ms = getattr(event, own_time) / 1e3
        total += ms
        if in_optimizer(event):
            optimizer += ms
        elif event.name in MATMUL_OPS:
            matmul += ms
    return {
        "step_ms": total,
        "matmul_ms": matmul,
        "optimizer_ms": optimizer,
        "other_ms": total - matmul - optimizer,
    }


# ------------------------------------------------------------------------------ random data


class RandomTokens:
    """Uniform random token batches in place of a dataset (throughput does not depend on the
    text): a trainer.TrainBatches stream, batch b a pure function of (seed, b)."""

    def __init__(
        self, vocab_size: int, batch_size: int, seq_len: int, seed: int, device: torch.device
    ) -> None:
        self.vocab_size, self.shape, self.seed = vocab_size, (batch_size, seq_len + 1), seed
        self.device, self.batch_index = torch.device(device), 0

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs, targets) int64 of shape (batch_size, seq_len) on the device."""
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.batch_index)
        ids = torch.randint(0, self.vocab_size, self.shape, generator=generator).to(self.device)
        self.batch_index += 1
        return ids[:, :-1].contiguous(), ids[:, 1:].contiguous()

    def state_dict(self) -> dict[str, int]:
        return {"batch_index": self.batch_index, "seed": self.seed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.batch_index, self.seed = int(state["batch_index"]), int(state["seed"])


@checked_command_line(BenchRunConfig)
@hydra.main(version_base=None, config_path=CONF_DIR, config_name="bench")
def main(cfg: DictConfig) -> None:
    exit_on_input_error(run, cfg)


if __name__ == "__main__":
    main()
