"""What each parameter is, declared by the module that defines it.

Optimizers (weight decay, Muon) and initialisation group parameters by role, never by shape:
stacked expert biases (E, n) are 2-D like a matrix, and stacked expert matrices are stored
(E, in, out), the transpose of nn.Linear's (out, in).
"""

from __future__ import annotations

from enum import Enum

from torch import nn


class Role(str, Enum):
    """The kinds of parameter a GPT-OSS model holds."""

    EMBEDDING = "embedding"  # token embedding rows (vocab, hidden)
    HEAD = "head"  # the unembedding, nn.Linear's (vocab, hidden)
    MATRIX = "matrix"  # an nn.Linear weight inside a block, (out, in)
    EXPERT_MATRIX = "expert_matrix"  # stacked expert weights, (experts, in, out)
    ROUTER = "router"  # the router's weight, (experts, hidden)
    BIAS = "bias"  # additive biases, stacked expert biases (experts, out) included
    NORM = "norm"  # RMSNorm scales
    SINK = "sink"  # attention sink logits, one per query head


def parameter_roles(model: nn.Module) -> dict[str, Role]:
    """name -> role for every parameter, names as `model.named_parameters()` gives them.

    Each module class declares `PARAMETER_ROLES`: its own parameters and those of the plain
    torch modules it holds (nn.Linear, nn.Embedding), by name relative to itself. A parameter
    nobody declared is a ValueError naming it.
    """
    declared: dict[str, Role] = {}
    for prefix, module in model.named_modules():
        for name, role in getattr(module, "PARAMETER_ROLES", {}).items():
            declared[f"{prefix}.{name}" if prefix else name] = role
    missing = [name for name, _ in model.named_parameters() if name not in declared]
    if missing:
        raise ValueError(
            f"parameters {missing} have no declared role: add them to their module's "
            f"PARAMETER_ROLES (valid roles: {[role.value for role in Role]})"
        )
    return {name: declared[name] for name, _ in model.named_parameters()}


def layer_shape(role: Role, shape: tuple[int, ...]) -> tuple[int, int]:
    """(out_features, in_features) of the layer a matrix belongs to, whatever its storage."""
    if role is Role.EXPERT_MATRIX:  # (experts, in, out)
        return shape[-1], shape[-2]
    if role in (Role.MATRIX, Role.HEAD, Role.ROUTER):  # nn.Linear's layout
        return shape[-2], shape[-1]
    raise ValueError(f"a {role.value} parameter is not a layer's matrix: no (out, in) shape")
