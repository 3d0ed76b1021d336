"""The training loop itself, driven in-process with loaders written here: what it asks of a
loader, the finiteness checks around the optimizer step and the checkpoints, and how a stop
signal ends it after a whole step."""

from __future__ import annotations

import functools
import math
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from gpt_oss.model.model import GptOss
from gpt_oss.training.checkpoint import read_checkpoint
from gpt_oss.training.optim import adamw, constant
from gpt_oss.training.signals import StopRequest, exit_status
from gpt_oss.training.tracking import read_metrics
from gpt_oss.training.trainer import Trainer, TrainerConfig, TrainingDiverged

SEQ_LEN = 16


class FixedBatches:
    """A train loader that serves the same (batch, seq_len) batch again and again (a model
    memorises it fast), counting what it served; `on_batch(n)` runs before batch n."""

    def __init__(self, batch_size: int, vocab_size: int = 1000, on_batch=None) -> None:
        ids = torch.randint(0, vocab_size, (batch_size, SEQ_LEN + 1), generator=_generator())
        self.inputs, self.targets = ids[:, :-1], ids[:, 1:]
        self.served, self.loaded, self.on_batch = 0, None, on_batch

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        self.served += 1
        if self.on_batch is not None:
            self.on_batch(self.served)
        return self.inputs, self.targets

    def state_dict(self) -> dict[str, Any]:
        return {"served": self.served}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.loaded, self.served = dict(state), state["served"]


class FixedValidation:
    """A validation loader of one fixed batch, standing for 3.5 bytes per token."""

    bytes_per_token = 3.5
    num_target_tokens = 2 * SEQ_LEN

    def __init__(self) -> None:
        ids = torch.randint(0, 1000, (2, SEQ_LEN + 1), generator=_generator(1))
        self.inputs, self.targets = ids[:, :-1], ids[:, 1:]

    def rank_batches(self, rank: int, world_size: int) -> Iterator[tuple[Any, Any, int]]:
        assert (rank, world_size) == (0, 1)
        yield self.inputs, self.targets, 1


def _generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def make_trainer(
    make_model,
    run_dir: Path,
    train_loader,
    val_loader=None,
    optimizer=None,
    **fields: Any,
) -> Trainer:
    config = TrainerConfig(**{
        "max_steps": 6, "batch_size": 4, "grad_accum": 2, "seq_len": SEQ_LEN, "eval_every": 3,
        "eval_batches": 1, "checkpoint_every": 3, "log_every": 1, "device": "cpu",
        "progress": False, "seed": 0, **fields,
    })  # fmt: skip
    model = make_model(seed=0).train()
    schedule = functools.partial(constant, total_steps=config.max_steps)
    optimizer = optimizer or functools.partial(adamw, lr=1e-2)
    return Trainer(model, optimizer, schedule, train_loader, val_loader, config, run_dir)


def _train_losses(run_dir: Path) -> dict[int, float]:
    return {
        r["step"]: r["loss"]
        for r in read_metrics(run_dir / "metrics.jsonl")
        if r["split"] == "train"
    }


# --- the loader interface ---------------------------------------------------------------


def test_the_loop_trains_on_the_loaders_it_is_given_and_checkpoints_the_stream(
    make_model, tmp_path, single_threaded
):
    loader = FixedBatches(batch_size=2)  # batch 4 / grad_accum 2
    summary = make_trainer(make_model, tmp_path, loader, FixedValidation()).fit()
    assert loader.served == 12  # 6 steps x 2 micro-batches, nothing drawn by evaluation
    losses = _train_losses(tmp_path)
    assert losses[6] < losses[1] - 1.0  # one batch seen 6 times: memorised
    val = [r for r in read_metrics(tmp_path / "metrics.jsonl") if r["split"] == "val"]
    assert [r["step"] for r in val] == [3, 6]
    assert val[-1]["bpb"] == pytest.approx(val[-1]["loss"] / (3.5 * math.log(2)))
    last = read_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert last["step"] == 6 and last["data"] == {"served": 12}
    assert summary["steps"] == 6 and summary["stopped_by"] is None

    resumed_loader = FixedBatches(batch_size=2)
    resumed = make_trainer(make_model, tmp_path, resumed_loader, FixedValidation(),
                           max_steps=7, resume="auto")  # fmt: skip
    resumed.fit()
    assert resumed_loader.loaded == {"served": 12} and resumed_loader.served == 14


def test_without_a_validation_loader_it_trains_and_writes_no_best_checkpoint(
    make_model, tmp_path, single_threaded
):
    make_trainer(make_model, tmp_path, FixedBatches(batch_size=2), None, max_steps=3).fit()
    assert read_checkpoint(tmp_path / "checkpoints" / "last.pt")["step"] == 3
    assert not (tmp_path / "checkpoints" / "best.pt").exists()
    assert {r["split"] for r in read_metrics(tmp_path / "metrics.jsonl")} == {"train"}


def test_a_loader_giving_another_batch_shape_is_refused_naming_both(make_model, tmp_path):
    trainer = make_trainer(make_model, tmp_path, FixedBatches(batch_size=4))  # 2 expected
    with pytest.raises(ValueError, match=r"inputs \(4, 16\).*needs \(2, 16\).*grad_accum 2"):
        trainer.fit()
    assert not (tmp_path / "checkpoints").exists()


# --- divergence: nothing non-finite is applied or written ---------------------------------


def _nan_gradient_at(step: int, model: GptOss) -> None:
    """From now on, the router's gradient of micro-batch 2 * step is NaN (the loss stays finite)."""
    calls = {"backward": 0}

    def hook(grad: torch.Tensor) -> torch.Tensor:
        calls["backward"] += 1
        return grad * math.nan if calls["backward"] == 2 * step else grad

    model.layers[0].mlp.router.weight.register_hook(hook)


def _all_finite(checkpoint: dict) -> bool:
    tensors = list(checkpoint["model"].values())
    optimizer = checkpoint.get("optimizer", {"state": {}})  # best.pt: weights only by default
    tensors += [v for s in optimizer["state"].values() for v in s.values()]
    return all(torch.isfinite(t).all() for t in tensors if t.is_floating_point())


def test_a_nan_gradient_with_a_finite_loss_stops_the_run_before_the_optimizer_applies_it(
    make_model, tmp_path, single_threaded
):
    trainer = make_trainer(make_model, tmp_path, FixedBatches(2), checkpoint_every=1)
    _nan_gradient_at(3, trainer.model)
    with pytest.raises(TrainingDiverged) as caught:
        trainer.fit()
    message = str(caught.value)
    assert "the gradient norm is nan at step 3" in message
    assert "checkpoints/last.pt (step 2) holds finite weights" in message
    last = read_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert last["step"] == 2 and _all_finite(last)
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())  # never applied


def test_nan_policy_skip_drops_the_step_and_leaves_the_weights_as_they_were(
    make_model, tmp_path, single_threaded
):
    weights: dict[int, list[torch.Tensor]] = {}

    def snapshot(served: int) -> None:  # before each step's first micro-batch
        if served % 2 == 1:
            weights[(served + 1) // 2] = [p.detach().clone() for p in trainer.model.parameters()]

    trainer = make_trainer(make_model, tmp_path, FixedBatches(2, on_batch=snapshot),
                           nan_policy="skip", max_steps=5)  # fmt: skip
    _nan_gradient_at(3, trainer.model)
    summary = trainer.fit()
    assert summary["skipped_steps"] == 1 and summary["steps"] == 5
    assert all(torch.equal(a, b) for a, b in zip(weights[3], weights[4], strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(weights[2], weights[3], strict=True))
    assert _all_finite(read_checkpoint(tmp_path / "checkpoints" / "last.pt"))


def test_weights_that_became_non_finite_are_never_written_to_a_checkpoint(
    make_model, tmp_path, single_threaded
):
    def adamw_that_overflows_at_step_2(model: torch.nn.Module) -> torch.optim.Optimizer:
        optimizer = adamw(model, lr=1e-2)
        steps = {"done": 0}

        def overflow(optimizer, args, kwargs) -> None:  # as a huge learning rate would
            steps["done"] += 1
            if steps["done"] == 2:
                with torch.no_grad():
                    model.norm.weight[0] = math.inf

        optimizer.register_step_post_hook(overflow)
        return optimizer

    trainer = make_trainer(make_model, tmp_path, FixedBatches(2), FixedValidation(),
                           optimizer=adamw_that_overflows_at_step_2, checkpoint_every=1,
                           eval_every=1)  # fmt: skip
    with pytest.raises(TrainingDiverged, match=r"after step 2, 1 tensor\(s\) .* \(norm.weight\)"):
        trainer.fit()
    for name in ("last", "best"):
        checkpoint = read_checkpoint(tmp_path / "checkpoints" / f"{name}.pt")
        assert checkpoint["step"] == 1 and _all_finite(checkpoint), name


# --- signals: stop after a whole step -----------------------------------------------------


@pytest.fixture
def python_sigint():
    """SIGINT as an interactive Python has it (a parent may have started us ignoring it)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.mark.parametrize(
    "signum", [signal.SIGTERM, signal.SIGUSR1, signal.SIGINT], ids=lambda s: s.name
)
def test_a_signal_inside_the_optimizer_step_ends_the_run_after_that_step_with_last_written(
    make_model, tmp_path, single_threaded, python_sigint, signum
):
    def fused_adamw_signalled_at_step_2(model: torch.nn.Module) -> torch.optim.Optimizer:
        optimizer = adamw(model, lr=1e-2)  # the fused kernel on the CPU
        steps = {"begun": 0}

        def send(optimizer, args, kwargs) -> None:  # in the optimizer step, before the kernel
            steps["begun"] += 1
            if steps["begun"] == 2:
                os.kill(os.getpid(), signum)

        optimizer.register_step_pre_hook(send)
        return optimizer

    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)}
    trainer = make_trainer(make_model, tmp_path, FixedBatches(2),
                           optimizer=fused_adamw_signalled_at_step_2,
                           checkpoint_every=5)  # fmt: skip
    summary = trainer.fit()
    assert summary["stopped_by"] == signal.Signals(signum).name and summary["steps"] == 2
    assert read_checkpoint(tmp_path / "checkpoints" / "last.pt")["step"] == 2
    assert max(_train_losses(tmp_path)) == 2
    assert {s: signal.getsignal(s) for s in handlers} == handlers  # given back after fit()
    assert exit_status(summary["stopped_by"]) == 128 + signum


def test_stop_request_records_the_first_signal_and_hands_sigint_back_to_the_os(python_sigint):
    with StopRequest() as stop:
        assert stop.agreed(torch.device("cpu")) == 0
        os.kill(os.getpid(), signal.SIGUSR1)
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.agreed(torch.device("cpu")) == signal.SIGUSR1  # the first one counts
        assert signal.getsignal(signal.SIGINT) == signal.SIG_DFL  # a Ctrl-C now ends it at once
    assert signal.getsignal(signal.SIGINT) == signal.default_int_handler
    assert [exit_status(n) for n in ("SIGTERM", "SIGINT", "SIGUSR1")] == [143, 130, 138]
