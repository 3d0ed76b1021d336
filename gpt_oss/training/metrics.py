"""Throughput and quality arithmetic: FLOPs per token, MFU, bits per byte."""

from __future__ import annotations

import functools
import math
import time

import torch

from gpt_oss.model.config import ModelConfig

# Dense bf16 tensor-core peaks (no sparsity), FLOP/s.
GPU_PEAK_BF16 = {
    "H100": 989e12,
    "H200": 989e12,
    "H800": 989e12,
    "A100": 312e12,
    "L40S": 362e12,
    "4090": 165e12,
}


def flops_per_token(config: ModelConfig, seq_len: int) -> float:
    """Training FLOPs per token: 6 * active matmul params + attention scores and values.

    Active params count the chosen experts only and exclude the embedding lookup. Attention
    follows the PaLM/nanoGPT convention (12 * heads * head_dim * keys per layer, no causal
    halving), with keys = min(seq_len, window) on sliding layers.
    """
    c = config
    attn_params = (
        c.hidden_size * c.head_dim * (2 * c.num_attention_heads + 2 * c.num_key_value_heads)
    )
    expert_params = 3 * c.hidden_size * c.intermediate_size * c.experts_per_token
    router_params = c.hidden_size * c.num_experts
    per_layer = attn_params + expert_params + router_params
    matmul_params = c.num_hidden_layers * per_layer + c.vocab_size * c.hidden_size  # + the head
    keys = sum(
        min(seq_len, c.sliding_window) if t == "sliding_attention" else seq_len
        for t in c.layer_types
    )
    attention = 12 * c.num_attention_heads * c.head_dim * keys
    return 6 * matmul_params + attention


def bits_per_byte(loss_nats_sum: float, num_bytes: float) -> float:
    """Sum of token losses in nats over the UTF-8 bytes they cover, in bits: tokenizer-free."""
    return loss_nats_sum / (num_bytes * math.log(2))


def peak_flops(device: torch.device, dtype: torch.dtype) -> float:
    """Peak matmul FLOP/s for MFU: the data-sheet figure on known GPUs, else measured here."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, value in GPU_PEAK_BF16.items():
            if key in name:
                if dtype in (torch.bfloat16, torch.float16):
                    return value
                if torch.get_float32_matmul_precision() != "highest":  # TF32 matmuls
                    return value / 2
                break  # true float32 matmuls: measured below
    return measured_matmul_flops(device.type, dtype)


@functools.cache
def measured_matmul_flops(device_type: str, dtype: torch.dtype, size: int = 2048) -> float:
    """Best of a few large square matmuls: the practical peak this device reaches."""
    a = torch.randn(size, size, device=device_type, dtype=dtype)
    b = torch.randn(size, size, device=device_type, dtype=dtype)
    best = math.inf
    for _ in range(4):
        synchronize(device_type)
        start = time.perf_counter()
        a @ b
        synchronize(device_type)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def synchronize(device: torch.device | str) -> None:
    """Wait for the device's queued work (a no-op on the CPU): before and after a timing."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


CPU_STEP_OVERHEAD = 2.0  # measured step time / pure-matmul time on 2-core CPUs (mini: 1.6-2.1)


def cpu_step_estimate(
    config: ModelConfig, batch_size: int, seq_len: int, dtype: torch.dtype = torch.float32
) -> tuple[float, float]:
    """(seconds per optimizer step, peak bytes) expected for training `config` on this CPU with
    `batch_size` sequences of `seq_len` tokens: the step's FLOPs (metrics.flops_per_token) at
    the matmul rate this CPU reaches now (a 1024^3 probe, ~0.1 s), times CPU_STEP_OVERHEAD;
    memory from training_memory (one device). Rough, by design: it says minutes vs seconds."""
    from gpt_oss.model.size import training_memory

    flops = flops_per_token(config, seq_len) * batch_size * seq_len
    seconds = CPU_STEP_OVERHEAD * flops / measured_matmul_flops("cpu", dtype, 1024)
    return seconds, training_memory(config, 1, batch_size, seq_len, False)["total"]
