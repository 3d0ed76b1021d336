"""The main job end to end on the CPU: Hydra composition, training, run directory, resume."""

from __future__ import annotations

import json
import math
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from gpt_oss.model.config import ConfigError
from gpt_oss.schema import build
from gpt_oss.train import run
from gpt_oss.training.checkpoint import CheckpointError, read_checkpoint

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
SAMPLE = ROOT.parent / "shared" / "data" / "tinystories_sample.jsonl"


def compose_run(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        return compose("config", overrides=list(overrides))


def tiny_overrides(tmp_path: Path, *extra: str) -> list[str]:
    return [
        "model=tiny",
        "data=synthetic",
        "logger=none",
        "trainer=cpu",
        "data.synthetic_train_stories=2000",
        "data.synthetic_val_stories=100",
        f"data.cache_dir={tmp_path / 'cache'}",
        "trainer.max_steps=8",
        "trainer.batch_size=4",
        "trainer.seq_len=64",
        "trainer.eval_every=4",
        "trainer.eval_batches=2",
        "trainer.checkpoint_every=4",
        "trainer.log_every=2",
        "trainer.progress=false",
        "optimizer.lr=3e-3",
        *extra,
    ]


def read_records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_every_config_in_conf_composes():
    groups = {
        g.name: sorted(p.stem for p in g.glob("*.yaml"))
        for g in CONF.iterdir()
        if g.is_dir() and g.name != "hydra"
    }
    assert {"model", "data", "optimizer", "schedule", "trainer", "logger"} <= set(groups)
    for group, options in groups.items():
        for option in options:
            cfg = compose_run(f"{group}={option}")
            if group not in ("experiment", "debug", "hparams_search"):  # those are _global_
                assert cfg[group] is not None, (group, option)
            parts = build(cfg)  # instantiates and validates every group
            assert parts["model_config"].num_hidden_layers >= 1


@pytest.mark.parametrize(
    "override, error",
    [
        ("model.hiden_size=8", ConfigCompositionException),  # misspelled key
        ("trainer.max_steps=abc", ConfigCompositionException),  # wrong type
    ],
)
def test_bad_keys_and_types_fail_at_compose_time(override, error):
    with pytest.raises(error):
        compose_run(override)


@pytest.mark.parametrize(
    "override, field",
    [
        ("model.experts_per_token=16", "experts_per_token"),
        ("model.num_key_value_heads=3", "num_attention_heads"),
        ("model.sliding_window=0", "sliding_window"),
        ("trainer.batch_size=6", "batch_size"),  # not a multiple of grad_accum
        ("+optimizer.learning_rate=1e-3", "learning_rate"),
        ("trainer.seq_len=999999", "seq_len"),
        ("+trainer.epochs=3", "epochs"),  # forced in with +: still refused before training
    ],
)
def test_impossible_settings_fail_before_training_and_write_nothing(tmp_path, override, field):
    overrides = tiny_overrides(
        tmp_path,
        "trainer.grad_accum=4" if "batch_size" in override else "trainer.grad_accum=1",
        override,
    )
    cfg = compose_run(*overrides)
    with pytest.raises(ConfigError, match=field):
        run(cfg, tmp_path / "run")
    assert not (tmp_path / "run" / "checkpoints").exists()
    assert not (tmp_path / "cache").exists()  # failed before any data preparation


def test_tiny_run_trains_and_fills_the_run_directory(tmp_path):
    cfg = compose_run(
        *tiny_overrides(
            tmp_path, "trainer.max_steps=60", "trainer.eval_every=20", "trainer.checkpoint_every=30"
        )
    )
    run_dir = tmp_path / "run"
    summary = run(cfg, run_dir)
    val = [r for r in read_records(run_dir) if r["split"] == "val"]
    assert [r["step"] for r in val] == [20, 40, 60]
    # an untrained model scores about ln(vocab_size) (the compact vocabulary of the synthetic
    # corpus: ~1.3k ids, ln = 7.2); by step 20 it is well below, and it keeps falling
    vocab_size = OmegaConf.load(run_dir / "config.yaml").model.vocab_size
    assert summary["best_val_loss"] < val[0]["loss"] - 0.3 < math.log(vocab_size) - 1.0
    for name in (
        "config.yaml",
        "metrics.jsonl",
        "loss.png",
        "checkpoints/last.pt",
        "checkpoints/best.pt",
    ):
        assert (run_dir / name).stat().st_size > 0, name
    train = [r for r in read_records(run_dir) if r["split"] == "train"]
    assert {
        "step",
        "split",
        "loss",
        "tokens_per_s",
        "mfu",
        "aux_loss",
        "z_loss",
        "expert_load",
    } <= set(train[-1])
    assert len(train[-1]["expert_load"]) == 2 and abs(sum(train[-1]["expert_load"][0]) - 1) < 1e-6
    assert "bpb" in val[-1] and val[-1]["perplexity"] > 1


def _train_cli(tmp_path: Path, run_dir: Path, *extra: str) -> subprocess.Popen:
    args = [
        sys.executable,
        "-m",
        "gpt_oss.train",
        *tiny_overrides(tmp_path, *extra),
        f"hydra.run.dir={run_dir}",
    ]
    return subprocess.Popen(
        args,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=_default_sigint,
    )


def _default_sigint() -> None:
    """The child gets SIGINT as a terminal gives it, even where this test runs as a background
    job (which starts with SIGINT ignored, and a run keeps an ignored SIGINT ignored)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.slow
def test_sigkill_then_resume_matches_an_uninterrupted_run(tmp_path):
    steps = [
        "trainer.max_steps=8",
        "trainer.checkpoint_every=3",
        "trainer.eval_every=3",
        "trainer.log_every=1",
    ]
    straight = tmp_path / "straight"
    out, _ = _train_cli(tmp_path, straight, *steps).communicate(timeout=300)
    assert (straight / "checkpoints" / "last.pt").exists(), out

    killed = tmp_path / "killed"
    proc = _train_cli(tmp_path, killed, *steps)
    deadline = time.time() + 240
    while time.time() < deadline and not _has_step(killed, 5):
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert _has_step(killed, 5), "the run did not get past its first checkpoint before the kill"
    resumed = _train_cli(tmp_path, killed, *steps, "trainer.resume=auto")
    out, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, out
    resumed_losses, straight_losses = _losses(killed), _losses(straight)
    assert [key for key, _ in resumed_losses] == [key for key, _ in straight_losses]
    for (key, resumed_loss), (_, straight_loss) in zip(
        resumed_losses, straight_losses, strict=True
    ):
        # multi-threaded CPU reductions may differ in the last bits; the issue allows 1e-6
        assert math.isclose(resumed_loss, straight_loss, rel_tol=1e-6), key


def _losses(run_dir: Path) -> list[tuple[tuple[int, str], float]]:
    return [((r["step"], r["split"]), r["loss"]) for r in read_records(run_dir)]


def _has_step(run_dir: Path, step: int) -> bool:
    path = run_dir / "metrics.jsonl"
    return path.exists() and f'"step": {step},' in path.read_text()


def test_resume_accepts_other_kernels_and_refuses_another_shape(tmp_path):
    first = tmp_path / "first"
    run(compose_run(*tiny_overrides(tmp_path, "trainer.max_steps=4")), first)
    resumed = tmp_path / "resumed"  # same weights, another attention and experts kernel
    kernels = ["model.attn_impl=eager", "model.moe_impl=loop", f"trainer.resume={first}"]
    summary = run(compose_run(*tiny_overrides(tmp_path, "trainer.max_steps=6", *kernels)), resumed)
    assert summary["steps"] == 6 and [r["step"] for r in read_records(resumed)][-1] == 6
    with pytest.raises(CheckpointError, match="hidden_size"):
        run(
            compose_run(
                *tiny_overrides(
                    tmp_path,
                    "trainer.max_steps=6",
                    "model.hidden_size=32",
                    f"trainer.resume={first}",
                )
            ),
            tmp_path / "other",
        )


def test_a_diverging_run_keeps_only_finite_checkpoints_and_says_which_step_they_hold(tmp_path):
    """optimizer.lr=1e6: the loss stays finite a step longer than the gradient norm does."""
    from gpt_oss.training.trainer import TrainingDiverged

    every_step = ["trainer.checkpoint_every=1", "trainer.eval_every=1", "trainer.max_steps=8"]
    cfg = compose_run(*tiny_overrides(tmp_path, "optimizer.lr=1e6", *every_step))
    with pytest.raises(TrainingDiverged) as caught:
        run(cfg, tmp_path / "run")
    found = re.search(
        r"is (nan|inf|-inf) at step (\d+); .*checkpoints/last.pt \(step (\d+)\) holds finite",
        str(caught.value),
    )
    assert found, str(caught.value)
    assert int(found[3]) == int(found[2]) - 1  # the step before the one that diverged
    for name in ("last", "best"):
        checkpoint = read_checkpoint(tmp_path / "run" / "checkpoints" / f"{name}.pt")
        tensors = [*checkpoint["model"].values()]
        optimizer = checkpoint.get("optimizer", {"state": {}})  # best.pt: weights only by default
        tensors += [t for state in optimizer["state"].values() for t in state.values()]
        assert all(torch.isfinite(t).all() for t in tensors if t.is_floating_point()), name
    assert checkpoint["step"] <= int(found[3])


def test_nan_loss_stops_with_the_step_and_keeps_the_last_checkpoint(tmp_path):
    from gpt_oss.training.trainer import TrainingDiverged

    cfg = compose_run(
        *tiny_overrides(tmp_path, "trainer.max_steps=6", "optimizer.lr=1e30", "trainer.grad_clip=0")
    )
    with pytest.raises(TrainingDiverged, match=r"at step \d+"):
        run(cfg, tmp_path / "run")


# --- signals: SIGTERM, SIGINT, SIGUSR1 stop after a whole step, write last, say how to resume

SIGNAL_STEPS = [
    "trainer.max_steps=10",
    "trainer.checkpoint_every=4",
    "trainer.eval_every=4",
    "trainer.log_every=1",
]


@pytest.fixture(scope="module")
def signal_workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("signals")


@pytest.fixture(scope="module")
def uninterrupted(signal_workdir) -> Path:
    run_dir = signal_workdir / "straight"
    proc = _train_cli(signal_workdir, run_dir, *SIGNAL_STEPS)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out
    return run_dir


def _last_logged_step(run_dir: Path) -> int:
    from gpt_oss.training.tracking import read_metrics  # skips a line torn mid-write

    return max((r["step"] for r in read_metrics(run_dir / "metrics.jsonl")), default=0)


def freeze_mid_run(
    start, run_dir: Path, after_step: int, margin: int, max_steps: int, attempts: int = 3
):
    """Start processes (start() -> list of Popen) and freeze them (SIGSTOP) once step
    `after_step` is logged, with at least `margin` steps to go before max_steps; a signal sent
    now is handled on SIGCONT, so the run cannot end on its own first. No timing is assumed:
    if the processes ran too far before the freeze, they are killed and started afresh."""
    for _ in range(attempts):
        procs = start()
        deadline = time.time() + 300  # a generous bound: the wait ends on a line in metrics.jsonl
        while (
            time.time() < deadline
            and _last_logged_step(run_dir) < after_step
            and all(p.poll() is None for p in procs)
        ):
            time.sleep(0.1)
        for proc in procs:
            proc.send_signal(signal.SIGSTOP)
        logged = _last_logged_step(run_dir)
        if after_step <= logged <= max_steps - margin and all(p.poll() is None for p in procs):
            return procs, logged
        for proc in procs:
            proc.kill()
            proc.wait()
        shutil.rmtree(run_dir, ignore_errors=True)
    raise AssertionError(
        f"could not catch the run between steps {after_step} and {max_steps - margin}"
    )


def _resume_command(out: str) -> list[str]:
    lines = out.splitlines()
    index = next(i for i, line in enumerate(lines) if line.rstrip().endswith("Resume with:"))
    return shlex.split(lines[index + 1])


@pytest.mark.slow
@pytest.mark.parametrize(
    "signum", [signal.SIGTERM, signal.SIGINT, signal.SIGUSR1], ids=lambda s: s.name
)
def test_a_signal_stops_after_the_step_writes_last_and_the_printed_command_resumes_exactly(
    signal_workdir, uninterrupted, signum
):
    run_dir = signal_workdir / signum.name
    [proc], logged = freeze_mid_run(lambda: [_train_cli(signal_workdir, run_dir, *SIGNAL_STEPS)],
                                    run_dir, after_step=2, margin=2, max_steps=10)  # fmt: skip
    proc.send_signal(signum)
    proc.send_signal(signal.SIGCONT)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signum, out  # 143, 130, 138: an unfinished run
    stopped = int(re.search(rf"{signum.name} stopped the run after step (\d+) of 10", out)[1])
    assert stopped in (logged, logged + 1)  # the step in flight is finished, no further
    assert read_checkpoint(run_dir / "checkpoints" / "last.pt")["step"] == stopped
    command = _resume_command(out)
    assert command[-2:] == [f"hydra.run.dir={run_dir}", "trainer.resume=auto"]
    resumed = subprocess.run(
        command, cwd=signal_workdir, capture_output=True, text=True, timeout=600
    )
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    resumed_losses, straight_losses = _losses(run_dir), _losses(uninterrupted)
    assert [key for key, _ in resumed_losses] == [key for key, _ in straight_losses]
    for (key, resumed_loss), (_, straight_loss) in zip(
        resumed_losses, straight_losses, strict=True
    ):
        assert math.isclose(resumed_loss, straight_loss, rel_tol=1e-6), key


@pytest.mark.slow
def test_a_second_sigint_exits_at_once_without_saving(signal_workdir):
    run_dir = signal_workdir / "twice"
    for _ in range(3):  # again if the run finished its clean stop before the second SIGINT
        [proc], _ = freeze_mid_run(lambda: [_train_cli(signal_workdir, run_dir, *SIGNAL_STEPS)],
                                   run_dir, after_step=2, margin=2, max_steps=10)  # fmt: skip
        proc.send_signal(signal.SIGINT)
        proc.send_signal(signal.SIGCONT)
        for line in proc.stdout:  # written once the first SIGINT is handled: SIGINT is the OS's now
            if line.startswith("SIGINT received"):
                break
        proc.send_signal(signal.SIGSTOP)  # hold it there: the second SIGINT must find it running
        if proc.poll() is None:
            break
        shutil.rmtree(run_dir)
    proc.send_signal(signal.SIGINT)
    proc.send_signal(signal.SIGCONT)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == -signal.SIGINT, out  # killed by the signal itself: no clean stop
    assert "stopped the run" not in out
