"""Muon: its AdamW half equals torch's AdamW, its matrix updates are orthogonalised (experts
one by one), and it trains the model."""

from __future__ import annotations

import torch

from gpt_oss.training.optim import muon, newton_schulz


def test_newton_schulz_gives_near_orthogonal_matrices_per_expert():
    generator = torch.Generator().manual_seed(0)
    stacked = (
        torch.randn(3, 48, 16, generator=generator)
        * torch.tensor([0.01, 1.0, 100.0])[:, None, None]
    )
    out = newton_schulz(stacked)
    assert out.shape == stacked.shape and out.dtype == stacked.dtype
    for expert in out:  # each expert on its own, whatever its scale
        singular = torch.linalg.svdvals(expert.float())
        assert singular.min() > 0.5 and singular.max() < 1.5, singular


def test_muon_takes_attention_and_expert_matrices_and_leaves_the_rest_to_adamw(make_model):
    model = make_model(seed=0)
    muon_group, adamw_group = muon(model).param_groups
    names = {id(p): n for n, p in model.named_parameters()}
    muon_names = {names[id(p)] for p in muon_group["params"]}
    assert muon_names and all("self_attn" in n or "experts" in n for n in muon_names)
    assert all(p.dim() >= 2 for p in muon_group["params"])
    assert not any(n.startswith(("lm_head", "embed_tokens")) or ".router." in n for n in muon_names)
    assert len(muon_group["params"]) + len(adamw_group["params"]) == len(names)


def test_muon_adamw_half_equals_torch_adamw_and_momentum_persists(make_model):
    model, reference = make_model(seed=2).train(), make_model(seed=2).train()
    optimizer = muon(model, adamw_lr=1e-2, adamw_betas=(0.9, 0.95), eps=1e-8)
    muon_group, adamw_group = optimizer.param_groups
    others = {n for n, p in model.named_parameters() if any(p is q for q in adamw_group["params"])}
    torch_adamw = torch.optim.AdamW(
        [p for n, p in reference.named_parameters() if n in others],
        lr=1e-2,
        betas=(0.9, 0.95),
        eps=1e-8,
        weight_decay=0.0,
    )
    first = muon_group["params"][0]
    start = first.detach().clone()
    buffers = []
    for step in range(3):
        for m, opt in ((model, optimizer), (reference, torch_adamw)):
            for p in m.parameters():  # the same gradients for both, varying by step
                p.grad = torch.sign(p.detach()) * 0.5 + 0.01 * (step + 1)
            opt.step()
        buffers.append(optimizer.state[first]["momentum"])
    assert buffers[0] is buffers[1] is buffers[2]  # one buffer, kept across steps
    assert not torch.equal(first, start)  # Muon moved the matrix
    reference_params = dict(reference.named_parameters())
    for name, param in model.named_parameters():
        if name in others:
            torch.testing.assert_close(param, reference_params[name], rtol=1e-6, atol=1e-7)


def test_muon_trains_the_model(make_model):
    model = make_model(seed=4).train()
    optimizer = muon(model, lr=0.02, adamw_lr=3e-3)
    ids = torch.randint(0, 1000, (4, 33), generator=torch.Generator().manual_seed(5))
    losses = []
    for _ in range(15):
        optimizer.zero_grad(set_to_none=True)
        loss = model.loss(ids[:, :-1], ids[:, 1:]).loss
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses
