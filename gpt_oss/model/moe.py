"""Top-k routed SwiGLU experts: the router, the clamped SwiGLU, and two dispatch paths."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from gpt_oss.model.config import ModelConfig
from gpt_oss.model.roles import Role


def clamped_swiglu(gate_up: torch.Tensor, alpha: float, limit: float) -> torch.Tensor:
    """gpt-oss SwiGLU: gate and linear are interleaved; both clamped; (linear + 1) * glu."""
    gate, linear = gate_up[..., ::2], gate_up[..., 1::2]
    gate = gate.clamp(max=limit)
    linear = linear.clamp(min=-limit, max=limit)
    return (linear + 1) * (gate * torch.sigmoid(alpha * gate))


@dataclass
class Routing:
    """One MoE layer's routing decision for N tokens."""

    logits: torch.Tensor  # (N, E) raw router logits
    experts: torch.Tensor  # (N, k) chosen expert ids
    weights: torch.Tensor  # (N, k) softmax over the chosen logits


class Router(nn.Module):
    """Linear(hidden -> experts) with bias; top-k of the raw logits; softmax over those k."""

    PARAMETER_ROLES: ClassVar[dict[str, Role]] = {"weight": Role.ROUTER, "bias": Role.BIAS}

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.top_k = config.experts_per_token
        self.weight = nn.Parameter(torch.empty(config.num_experts, config.hidden_size))
        self.bias = nn.Parameter(torch.zeros(config.num_experts))
        # Aux-loss-free balancing: a bias that shifts only which experts are chosen.
        self.register_buffer("selection_bias", torch.zeros(config.num_experts), persistent=True)

    def forward(self, x: torch.Tensor) -> Routing:
        """x (N, H) -> each token's top-k experts and their weights."""
        logits = F.linear(x, self.weight, self.bias)  # (N, E)
        # No `if selection_bias.any()`: a zero bias picks the same experts, and the branch would
        # sync the GPU and break a compiled graph.
        experts = torch.topk(logits + self.selection_bias, self.top_k, dim=-1).indices
        chosen = logits.gather(-1, experts)
        compute = torch.promote_types(chosen.dtype, torch.float32)  # float32, float64 in checks
        weights = torch.softmax(chosen.to(compute), dim=-1).to(chosen.dtype)
        return Routing(logits, experts, weights)


class Experts(nn.Module):
    """E SwiGLU experts stored as stacked tensors (the Hugging Face layout)."""

    PARAMETER_ROLES: ClassVar[dict[str, Role]] = {
        "gate_up_proj": Role.EXPERT_MATRIX,  # (E, H, 2I): (in, out) per expert
        "gate_up_proj_bias": Role.BIAS,  # (E, 2I)
        "down_proj": Role.EXPERT_MATRIX,  # (E, I, H)
        "down_proj_bias": Role.BIAS,  # (E, H)
    }

    def __init__(self, config: ModelConfig):
        super().__init__()
        E, H, W = (
            config.num_experts,
            config.hidden_size,
            config.intermediate_size,
        )  # W: expert width
        self.alpha, self.limit, self.impl = (
            config.swiglu_alpha,
            config.swiglu_limit,
            config.moe_impl,
        )
        self.gate_up_proj = nn.Parameter(torch.empty(E, H, 2 * W))  # gate/linear interleaved
        self.gate_up_proj_bias = nn.Parameter(torch.zeros(E, 2 * W))
        self.down_proj = nn.Parameter(torch.empty(E, W, H))
        self.down_proj_bias = nn.Parameter(torch.zeros(E, H))

    def forward(self, x: torch.Tensor, routing: Routing) -> torch.Tensor:
        """x (N, H) -> (N, H): the routed experts' outputs, weighted and summed per token."""
        if self.impl == "loop":
            return self._loop(x, routing)
        return self._grouped(x, routing)

    def _expert(self, x: torch.Tensor, e: int) -> torch.Tensor:
        gate_up = x @ self.gate_up_proj[e] + self.gate_up_proj_bias[e]
        return (
            clamped_swiglu(gate_up, self.alpha, self.limit) @ self.down_proj[e]
            + self.down_proj_bias[e]
        )

    def _loop(self, x: torch.Tensor, routing: Routing) -> torch.Tensor:
        """Plain path: one masked gather and matmul per expert that received tokens."""
        out = torch.zeros_like(x)
        for e in routing.experts.unique().tolist():
            token, slot = torch.where(routing.experts == e)
            y = self._expert(x[token], e) * routing.weights[token, slot, None]
            out.index_add_(0, token, y.to(out.dtype))
        return out

    def _grouped(self, x: torch.Tensor, routing: Routing) -> torch.Tensor:
        """Sort the N*k assignments by expert, run all experts in two grouped matmuls."""
        top_k = routing.experts.shape[1]
        flat = routing.experts.flatten()  # (N*k,)
        order = torch.argsort(flat, stable=True)
        token = order // top_k  # which token each sorted row came from
        counts = expert_counts(flat, self.gate_up_proj.shape[0])
        dtype = compute_dtype(x)
        # index_select, not x[token]: its backward is an index_add, not a serial accumulate
        rows = x.index_select(0, token).to(dtype)  # (N*k, H), grouped by expert
        layout = GroupLayout.of(flat[order], counts, _group_multiple(x, len(flat), len(counts)))
        rows = layout.pad(rows)  # (rows in the padded groups, H)
        gate_up = grouped_mm(rows, self.gate_up_proj.to(dtype), layout.offsets, layout.counts)
        gate_up = gate_up + self.gate_up_proj_bias.to(dtype).index_select(0, layout.expert)
        hidden = clamped_swiglu(gate_up, self.alpha, self.limit)
        y = grouped_mm(hidden, self.down_proj.to(dtype), layout.offsets, layout.counts)
        y = y + self.down_proj_bias.to(dtype).index_select(0, layout.expert)
        y = layout.unpad(y)  # (N*k, H)
        y = y * routing.weights.flatten().index_select(0, order)[:, None].to(dtype)
        return torch.zeros_like(x).index_add_(0, token, y.to(x.dtype))


# On the CPU each group is its own oneDNN matmul, and oneDNN caches a primitive (with its
# scratchpad) per shape: group sizes that change every step grew the cache by 0.5 GiB in five
# mini steps (measured). Each group is rounded up to a multiple of rows so the shapes are few;
# the multiple is a power of two near 1/8 of the mean group (routed rows N*k / experts), so a
# group has ~16 sizes in [0, twice the mean] and the padding adds ~1/16 of the rows.
# Measured (2026-12-01, 2-core Intel Xeon with AMX bf16, torch 2.13, OMP_NUM_THREADS=1, load
# 2-6 from other runs; `python -m gpt_oss.bench model=M trainer.batch_size=B trainer.seq_len=256
# bench.precision=P data.vocabulary=compact data.vocab_size=8192 bench.steps=S
# bench.warmup_steps=2`, the multiples interleaved, 2 rounds; mean tokens/s, peak RSS GiB):
#   small 16x256 bf16 S=60   32: 4,900 2.70   64: 5,020 1.74   128: 4,980 1.29
#                           256: 4,950 1.20  512: 4,980 1.16  1024: 4,840 1.02
#   tiny  16x256 bf16 S=60   32: 13,320 0.95  128: 12,890 0.76  256: 12,800 0.71  512: 12,900 0.71
#   mini   4x256 bf16 S=30   32: 910 2.11   64: 898 2.03   128: 885 1.96   256: 832 1.93
#   small 16x256 fp32 S=60   32: 3,740 1.14  256: 3,650 1.13  (rounds disagreed: -5% and +0%)
# Round-to-round noise is ~2%. Speed moves little until the padding nears the mean group (mini
# at 256: -9%; tiny at 256: -4%); the bf16 peak falls with the multiple. The rule gives 256 for
# small and tiny at 16x256 (small's peak -55%) and 32 for mini at 4x256.
CPU_GROUP_MULTIPLE_MIN, CPU_GROUP_MULTIPLE_MAX = 32, 1024
CPU_GROUP_SIZES_PER_MEAN = 8  # the multiple is ~ the mean group / this


def cpu_group_multiple(rows: int, num_experts: int) -> int:
    """Rows each expert group is padded to a multiple of on the CPU, for `rows` routed rows
    (tokens x experts_per_token) over `num_experts` experts: the power of two at or above the
    mean group / CPU_GROUP_SIZES_PER_MEAN, clamped to [CPU_GROUP_MULTIPLE_MIN,
    CPU_GROUP_MULTIPLE_MAX]. E.g. 16 x 256 tokens, top-2 of 4 experts: 256; 4 x 256 tokens,
    top-2 of 8 experts: 32."""
    target = rows // (max(num_experts, 1) * CPU_GROUP_SIZES_PER_MEAN)
    power = 1 << max(target - 1, 0).bit_length()  # smallest power of two >= target
    return min(max(power, CPU_GROUP_MULTIPLE_MIN), CPU_GROUP_MULTIPLE_MAX)


def _group_multiple(x: torch.Tensor, rows: int, num_experts: int) -> int:
    return cpu_group_multiple(rows, num_experts) if x.device.type == "cpu" else 1


@dataclass
class GroupLayout:
    """Rows grouped by expert, each group padded with zero rows to a multiple of rows."""

    position: torch.Tensor | None  # (N*k,) padded row of each grouped row; None: no padding
    expert: torch.Tensor  # (rows,) the expert of every (padded) row
    counts: torch.Tensor  # (E,) rows per padded group
    offsets: torch.Tensor  # (E,) int32 end of each group
    total: int

    @classmethod
    def of(cls, expert_sorted: torch.Tensor, counts: torch.Tensor, multiple: int) -> GroupLayout:
        if multiple == 1:
            offsets = torch.cumsum(counts, 0).to(torch.int32)
            return cls(None, expert_sorted, counts, offsets, len(expert_sorted))
        padded = (counts + multiple - 1) // multiple * multiple
        ends = torch.cumsum(padded, 0)
        first = torch.cumsum(counts, 0) - counts  # where each group starts unpadded
        rank = torch.arange(len(expert_sorted), device=counts.device) - first[expert_sorted]
        position = (ends - padded)[expert_sorted] + rank
        experts = torch.arange(len(counts), device=counts.device)
        total = int(ends[-1])
        expert = torch.repeat_interleave(experts, padded, output_size=total)
        return cls(position, expert, padded, ends.to(torch.int32), total)

    def pad(self, rows: torch.Tensor) -> torch.Tensor:
        if self.position is None:
            return rows
        return rows.new_zeros(self.total, rows.shape[1]).index_copy(0, self.position, rows)

    def unpad(self, rows: torch.Tensor) -> torch.Tensor:
        return rows if self.position is None else rows.index_select(0, self.position)


def expert_counts(experts: torch.Tensor, num_experts: int) -> torch.Tensor:
    """Assignments per expert, (E,): a fixed shape, unlike bincount's, so compiled graphs hold."""
    counts = torch.zeros(num_experts, dtype=torch.long, device=experts.device)
    return counts.index_add_(0, experts.flatten(), torch.ones_like(experts.flatten()))


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype matmuls on x run in: autocast's when it is on, else x's."""
    if torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return x.dtype


def grouped_mm(
    rows: torch.Tensor, weights: torch.Tensor, offsets: torch.Tensor, counts: torch.Tensor
) -> torch.Tensor:
    """rows (M, K) sorted by group, weights (G, K, N) -> (M, N); torch._grouped_mm when it runs."""
    if _grouped_mm_supported(rows, weights):
        return torch._grouped_mm(rows, weights, offs=offsets)
    pieces = torch.split(rows, counts.tolist())
    return torch.cat([piece @ weights[g] for g, piece in enumerate(pieces)])


def _grouped_mm_supported(rows: torch.Tensor, weights: torch.Tensor) -> bool:
    if not hasattr(torch, "_grouped_mm"):
        return False
    # The kernel rejects rows whose stride is not a multiple of 16 bytes (e.g. odd widths).
    aligned = all(size * rows.element_size() % 16 == 0 for size in weights.shape[1:])
    if rows.is_cuda:  # Hopper and newer, bf16
        major = torch.cuda.get_device_capability(rows.device)[0]
        return major >= 9 and rows.dtype == torch.bfloat16 and aligned
    cpu_dtypes = (torch.float32, torch.bfloat16, torch.float16)  # no float64 kernel
    if torch.compiler.is_compiling():  # the traced kernel's shape function accepts bf16 only
        cpu_dtypes = (torch.bfloat16,)
    return rows.device.type == "cpu" and rows.dtype in cpu_dtypes and aligned


class MoE(nn.Module):
    """Router plus experts; returns the mixed output and the routing (for the training losses)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.router = Router(config)
        self.experts = Experts(config)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, Routing]:
        """x (B, T, H) -> (B, T, H), and the routing of the B*T tokens."""
        batch, time, hidden = x.shape
        flat = x.reshape(-1, hidden)  # (B*T, H)
        routing = self.router(flat)
        return self.experts(flat, routing).view(batch, time, hidden), routing
