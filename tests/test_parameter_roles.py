"""Every parameter has a role declared where it is defined; initialisation, AdamW's weight
decay and Muon group by role, never by shape. Muon's update equals torch.optim.Muon's on each
layer's (out, in) matrix, whatever the storage (experts are stored (E, in, out))."""

from __future__ import annotations

import pytest
import torch

from gpt_oss.model.model import GptOss
from gpt_oss.model.roles import Role, layer_shape, parameter_roles
from gpt_oss.training.optim import adamw, muon

pytestmark = pytest.mark.usefixtures("single_threaded")

# name -> (role, AdamW group, Muon group); {i} stands for every layer.
EXPECTED = {
    "embed_tokens.weight": ("embedding", "no_decay", "adamw"),
    "layers.{i}.input_layernorm.weight": ("norm", "no_decay", "adamw"),
    "layers.{i}.self_attn.sinks": ("sink", "no_decay", "adamw"),
    "layers.{i}.self_attn.q_proj.weight": ("matrix", "decay", "muon"),
    "layers.{i}.self_attn.q_proj.bias": ("bias", "no_decay", "adamw"),
    "layers.{i}.self_attn.k_proj.weight": ("matrix", "decay", "muon"),
    "layers.{i}.self_attn.k_proj.bias": ("bias", "no_decay", "adamw"),
    "layers.{i}.self_attn.v_proj.weight": ("matrix", "decay", "muon"),
    "layers.{i}.self_attn.v_proj.bias": ("bias", "no_decay", "adamw"),
    "layers.{i}.self_attn.o_proj.weight": ("matrix", "decay", "muon"),
    "layers.{i}.self_attn.o_proj.bias": ("bias", "no_decay", "adamw"),
    "layers.{i}.post_attention_layernorm.weight": ("norm", "no_decay", "adamw"),
    "layers.{i}.mlp.router.weight": ("router", "decay", "adamw"),
    "layers.{i}.mlp.router.bias": ("bias", "no_decay", "adamw"),
    "layers.{i}.mlp.experts.gate_up_proj": ("expert_matrix", "decay", "muon"),
    "layers.{i}.mlp.experts.gate_up_proj_bias": ("bias", "no_decay", "adamw"),  # (E, 2I)
    "layers.{i}.mlp.experts.down_proj": ("expert_matrix", "decay", "muon"),
    "layers.{i}.mlp.experts.down_proj_bias": ("bias", "no_decay", "adamw"),  # (E, H)
    "norm.weight": ("norm", "no_decay", "adamw"),
    "lm_head.weight": ("head", "decay", "adamw"),
}


def expected_table(num_layers: int, extra: dict | None = None, drop: tuple = ()) -> dict:
    table = {}
    for pattern, row in (EXPECTED | (extra or {})).items():
        names = [pattern.format(i=i) for i in range(num_layers)] if "{i}" in pattern else [pattern]
        table |= {name: row for name in names if name not in drop}
    return table


def role_table(model: GptOss, decay_embeddings: bool = False) -> dict:
    """What the code does: each parameter's role, AdamW group and Muon group."""
    decay, _ = adamw(model, decay_embeddings=decay_embeddings, fused=False).param_groups
    muon_group, _ = muon(model).param_groups
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    orthogonalised = {names[id(p)] for p in muon_group["params"]}
    return {
        name: (
            role.value,
            "decay" if name in decayed else "no_decay",
            "muon" if name in orthogonalised else "adamw",
        )
        for name, role in parameter_roles(model).items()
    }


def test_every_parameter_has_its_role_and_groups(make_model):
    model = make_model()
    assert role_table(model) == expected_table(2)
    assert len(parameter_roles(model)) == len(list(model.parameters()))


def test_role_table_of_the_variants(make_model):
    qk_norm = {
        f"layers.{{i}}.self_attn.{n}_norm.weight": ("norm", "no_decay", "adamw") for n in "qk"
    }
    assert role_table(make_model(qk_norm=True, num_hidden_layers=3)) == expected_table(3, qk_norm)
    tied = make_model(tie_embeddings=True)  # one tensor, listed once, as the embedding
    assert role_table(tied) == expected_table(2, drop=("lm_head.weight",))
    decayed = role_table(make_model(), decay_embeddings=True)
    assert decayed["embed_tokens.weight"] == ("embedding", "decay", "adamw")


def test_a_parameter_without_a_declared_role_is_named(make_model):
    model = make_model()
    model.layers[1].mlp.extra_scale = torch.nn.Parameter(torch.ones(3))
    with pytest.raises(ValueError, match=r"layers\.1\.mlp\.extra_scale"):
        parameter_roles(model)


def test_initialisation_zeroes_every_bias_and_sink_and_draws_every_matrix(make_config):
    """Stacked expert biases are 2-D: the shape rule drew them like matrices."""
    torch.manual_seed(0)
    model = GptOss(make_config(initializer_range=0.05))
    for name, role in parameter_roles(model).items():
        p = model.get_parameter(name)
        if role in (Role.BIAS, Role.SINK):
            assert torch.count_nonzero(p) == 0, name
        elif role is Role.NORM:
            assert torch.all(p == 1), name
        else:
            assert 0.003 < p.std().item() < 0.08, name


def test_layer_shape_reads_experts_as_the_transpose_of_their_storage():
    assert layer_shape(Role.MATRIX, (96, 32)) == (96, 32)
    assert layer_shape(Role.EXPERT_MATRIX, (4, 32, 96)) == (96, 32)
    with pytest.raises(ValueError, match="bias"):
        layer_shape(Role.BIAS, (4, 32))


def layer_matrices(name: str, param: torch.Tensor, role: Role) -> list[torch.Tensor]:
    """The (out, in) matrices of a parameter: itself, or each expert's transposed slice."""
    if role is Role.EXPERT_MATRIX:
        return [expert.T for expert in param]
    return [param]


def test_muon_updates_equal_torch_muon_on_each_layers_out_in_matrix(make_model):
    """gate_up_proj is stored (E, H, 2I): its layer is (2I, H), so torch scales by sqrt(2I/H)
    (2 here); down_proj (E, I, H) is the layer (H, I), scaled by 1 (the storage says 2)."""
    model = make_model(seed=1, intermediate_size=64).train()  # H 32, I 64
    optimizer = muon(model, lr=0.02, momentum=0.95, nesterov=True, ns_steps=5, weight_decay=0.1)
    roles = parameter_roles(model)
    muon_params = {
        n
        for n, p in model.named_parameters()
        if any(p is q for q in optimizer.param_groups[0]["params"])
    }
    assert {roles[n] for n in muon_params} == {Role.MATRIX, Role.EXPERT_MATRIX}
    start = {n: model.get_parameter(n).detach().clone() for n in muon_params}
    reference = {
        n: [torch.nn.Parameter(m.detach().clone()) for m in layer_matrices(n, start[n], roles[n])]
        for n in muon_params
    }
    torch_muon = torch.optim.Muon(
        [m for ms in reference.values() for m in ms],
        lr=0.02,
        weight_decay=0.1,
        momentum=0.95,
        nesterov=True,
        ns_steps=5,
        adjust_lr_fn="original",
    )
    generator = torch.Generator().manual_seed(0)
    for _ in range(3):
        for name in muon_params:
            param = model.get_parameter(name)
            param.grad = torch.randn(param.shape, generator=generator)
            for matrix, grad in zip(
                reference[name], layer_matrices(name, param.grad, roles[name]), strict=True
            ):
                matrix.grad = grad.clone()
        optimizer.step()
        torch_muon.step()
    for name in muon_params:
        ours = layer_matrices(name, model.get_parameter(name).detach(), roles[name])
        for got, want in zip(ours, reference[name], strict=True):
            torch.testing.assert_close(got, want.detach(), rtol=1e-6, atol=1e-7, msg=name)
