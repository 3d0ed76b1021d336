"""Parameter counts and memory needs of a model shape, computed without allocating the model.
`python -m gpt_oss.info` prints them."""

from __future__ import annotations

import torch

from gpt_oss.model.config import ModelConfig
from gpt_oss.model.model import GptOss

ADAMW_BYTES_PER_PARAM = 16  # fp32 master weight + fp32 grad + two fp32 moments
MXFP4_BYTES_PER_VALUE = (4 + 8 / 32) / 8  # a 4-bit code plus one 8-bit scale per 32 values


def parameter_counts(config: ModelConfig) -> dict[str, int]:
    """Analytic parameter counts. "active" is what one token uses: everything except the
    input embedding table and the experts it is not routed to (the release's definition)."""
    hidden, head_dim, layers = config.hidden_size, config.head_dim, config.num_hidden_layers
    q_width = config.num_attention_heads * head_dim
    kv_width = config.num_key_value_heads * head_dim
    attention = (hidden + 1) * (q_width + 2 * kv_width) + (q_width + 1) * hidden  # q,k,v,o + biases
    attention += config.num_attention_heads  # one sink per head
    attention += 2 * head_dim if config.qk_norm else 0
    router = config.num_experts * (hidden + 1)
    width = config.intermediate_size
    expert_matrices = 3 * hidden * width  # up projection (gate and linear, 2I) and down
    expert = expert_matrices + 2 * width + hidden  # plus their biases
    embedding = config.vocab_size * hidden
    unembedding = 0 if config.tie_embeddings else config.vocab_size * hidden
    counts = {
        "embedding": embedding,
        "unembedding": unembedding,
        "attention": layers * attention,
        "router": layers * router,
        "experts": layers * config.num_experts * expert,
        "norms": layers * 2 * hidden + hidden,
    }
    counts["total"] = sum(counts.values())
    inactive_experts = layers * (config.num_experts - config.experts_per_token) * expert
    # Tied: the one table is also the unembedding every token runs through, so it stays active.
    input_table = 0 if config.tie_embeddings else embedding
    counts["active"] = counts["total"] - input_table - inactive_experts
    counts["expert_matrices"] = layers * config.num_experts * expert_matrices
    return counts


def memory_bytes(counts: dict[str, int]) -> dict[str, float]:
    """Bytes for the weights in several formats, and for AdamW training state (no activations)."""
    total, quantizable = counts["total"], counts["expert_matrices"]
    return {
        "weights bf16": 2.0 * total,
        "weights fp32": 4.0 * total,
        # the release's format: expert matrices MXFP4, everything else bf16
        "weights MXFP4 experts + bf16": MXFP4_BYTES_PER_VALUE * quantizable
        + 2.0 * (total - quantizable),
        "training AdamW (16 B/param)": float(ADAMW_BYTES_PER_PARAM * total),
    }


def layer_parameters(config: ModelConfig) -> int:
    """Parameters of one block (attention, router, experts, two norms): an FSDP unit."""
    counts = parameter_counts(config)
    per_layers = counts["attention"] + counts["router"] + counts["experts"]
    return (per_layers + counts["norms"] - config.hidden_size) // config.num_hidden_layers


def activation_bytes_per_token(config: ModelConfig) -> int:
    """Bytes one block saves for backward per token under bf16 autocast (fp32 residual stream).

    Written out from what autograd keeps: fp32 norm inputs and outputs (4 x 4H), bf16 casts of
    the projection inputs, q/k/v before and after RoPE, the attention output (~14 q + 12 kv
    widths with the sink column), and per routed copy the gathered input, the up projection
    (2I), the SwiGLU pieces and the down output (6H + 14I per expert per token). Within ~10% of
    the saved tensors measured on the CPU (tests/test_distributed.py).
    """
    hidden, width = config.hidden_size, config.intermediate_size
    q_width = config.num_attention_heads * config.head_dim
    kv_width = config.num_key_value_heads * config.head_dim
    routed = config.experts_per_token * (6 * hidden + 14 * width)
    return 20 * hidden + 14 * q_width + 12 * kv_width + routed


def loss_head_bytes(config: ModelConfig, tokens: int) -> float:
    """The unembedding and cross-entropy: final hidden states, a bf16 copy of the head, and
    the float32 logits (and their gradient) of one chunk of loss_chunk_tokens, or of all."""
    vocab, hidden = config.vocab_size, config.hidden_size
    hidden_states = tokens * 12 * hidden  # final norm in and out (fp32), gradient w.r.t. them
    if config.loss_chunk_tokens <= 0:  # bf16 logits, their fp32 copy, log-softmax and gradient
        return hidden_states + 2 * vocab * hidden + tokens * vocab * 14
    chunk = min(config.loss_chunk_tokens, tokens)  # fp32 logits, exp, bf16 gradient
    return hidden_states + 6 * vocab * hidden + chunk * vocab * 10  # + fp32 head gradient


def training_memory(
    config: ModelConfig, gpus: int, batch_size: int, seq_len: int, activation_checkpointing: bool
) -> dict[str, float]:
    """Estimated bytes per GPU to train with trainer.parallel=fsdp over `gpus` GPUs (one GPU:
    no sharding) and AdamW: fp32 weights, gradients and moments sharded; bf16 autocast;
    batch_size sequences of seq_len tokens per GPU per micro-batch."""
    total, layer = parameter_counts(config)["total"], layer_parameters(config)
    tokens, layers = batch_size * seq_len, config.num_hidden_layers
    stored_layers = 1 if activation_checkpointing else layers  # the rest keep their input only
    head = config.vocab_size * config.hidden_size + config.hidden_size  # the root unit: head, norm
    plan = {
        "parameters (fp32)": 4.0 * total / gpus,
        "gradients (fp32)": 4.0 * total / gpus,
        "optimizer states (AdamW)": 8.0 * total / gpus,
        # two blocks gathered (this one and the prefetched next), one block's unsharded grads
        "FSDP gathered units": 4.0 * (3 * layer + head) if gpus > 1 else 0.0,
        "bf16 weight copies (autocast)": 2.0 * layer * stored_layers,
        "activations": float(tokens * activation_bytes_per_token(config) * stored_layers),
        "loss head": loss_head_bytes(config, tokens),
    }
    if activation_checkpointing:
        plan["activations"] += tokens * 4.0 * config.hidden_size * (layers - 1)  # block inputs
    plan["total"] = sum(plan.values())
    return plan


def format_training_plan(
    plan: dict[str, float],
    gpus: int,
    batch_size: int,
    seq_len: int,
    activation_checkpointing: bool,
    gpu_gb: float,
) -> str:
    """The per-GPU training memory table `python -m gpt_oss.info` prints."""
    sharding = f"FSDP over {gpus} GPUs" if gpus > 1 else "one GPU, no sharding"
    lines = [
        f"training memory per GPU ({sharding}; AdamW, bf16 autocast; "
        f"{batch_size} x {seq_len} tokens "
        f"per GPU; activation checkpointing {'on' if activation_checkpointing else 'off'})",
        f"{'':<32}{'GB':>10}{'GiB':>10}",
    ]
    for label, size in plan.items():
        lines.append(f"  {label:<30}{size / 1e9:>10.2f}{size / 2**30:>10.2f}")
    verdict = "fits" if plan["total"] < 0.9 * gpu_gb * 1e9 else "does NOT fit"
    lines.append(
        f"  -> {verdict} a {gpu_gb:g} GB GPU (estimate; keep ~10% for the allocator and CUDA)"
    )
    return "\n".join(lines)


def meta_parameter_count(config: ModelConfig) -> int:
    """Total parameters of a GptOss built on the meta device (shapes only, no memory)."""
    with torch.device("meta"):
        model = GptOss(config)
    return sum(p.numel() for p in model.parameters())  # parameters() counts a tied table once


def format_report(name: str, config: ModelConfig, counts: dict[str, int]) -> str:
    """A small readable table of counts and memory."""
    lines = [
        f"model {name}: {config.num_hidden_layers} layers, hidden {config.hidden_size}, "
        f"{config.num_experts} experts (top-{config.experts_per_token}), vocab {config.vocab_size}",
        "",
        f"{'parameters':<32}{'count':>10}",
    ]
    for key, label in (
        ("total", "total"),
        ("active", "active per token"),
        ("embedding", "embedding (input table)"),
        ("unembedding", "unembedding (lm_head)"),
        ("attention", "attention"),
        ("experts", "experts"),
        ("router", "routers"),
        ("norms", "norms"),
    ):
        lines.append(f"  {label:<30}{_human(counts[key]):>10}")
    lines += ["", f"{'memory':<32}{'GB':>10}{'GiB':>10}"]
    for label, size in memory_bytes(counts).items():
        lines.append(f"  {label:<30}{size / 1e9:>10.2f}{size / 2**30:>10.2f}")
    lines.append("  (training: weights, grads and AdamW moments; activations not included)")
    return "\n".join(lines)


def _human(count: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if count >= size:
            return f"{count / size:.2f}{unit}"
    return str(count)
