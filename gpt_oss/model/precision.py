"""Number formats: the names every config uses (`trainer.precision`, generate's and evaluate's
`dtype`, `bench.precision`, consolidate's `--dtype`), their torch dtypes, and what "auto" means."""

from __future__ import annotations

import torch

from gpt_oss.model.config import ConfigError

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
PRECISIONS = ("auto", *DTYPES)


def resolve_precision(
    name: str, device: torch.device, option: str = "precision", native_cpu_bf16: bool = False
) -> str:
    """The format `name` stands for on `device`: bf16, fp16 or fp32. "auto" is bf16 on CUDA
    (a 20B model then fits one 80 GB GPU) and fp32 elsewhere; with native_cpu_bf16 also bf16
    on a CPU that runs bf16 matmuls in hardware (the benchmark's choice). ConfigError naming
    `option` and the valid names for anything else."""
    if name not in PRECISIONS:
        raise ConfigError(f"{option}={name!r} is invalid: valid are {list(PRECISIONS)}")
    if name != "auto":
        return name
    if device.type == "cuda":
        return "bf16"
    return "bf16" if native_cpu_bf16 and device.type == "cpu" and cpu_has_native_bf16() else "fp32"


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype of a resolved precision; None for fp32, which runs without autocast."""
    return None if precision == "fp32" else DTYPES[precision]


def cpu_has_native_bf16() -> bool:
    """True when oneDNN runs bf16 matmuls in hardware on this CPU (not emulated)."""
    check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return bool(torch.backends.mkldnn.is_available() and check is not None and check())
