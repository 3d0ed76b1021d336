"""Training past one process: DDP and FSDP2 on the CPU (gloo), sharded checkpoints and their
consolidation, activation checkpointing, the launch environment and the memory plan.

The two-process tests (`slow`) start real processes, with torchrun or by hand, and compare
their losses with one process training on the same global batch."""

from __future__ import annotations

import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from test_train import _resume_command, compose_run, freeze_mid_run, read_records, tiny_overrides

from gpt_oss.consolidate import consolidate_checkpoint
from gpt_oss.consolidate import main as consolidate_main
from gpt_oss.data.loaders import ValLoader
from gpt_oss.model.config import ConfigError
from gpt_oss.model.hf import import_hf
from gpt_oss.model.size import (
    activation_bytes_per_token,
    meta_parameter_count,
    parameter_counts,
    training_memory,
)
from gpt_oss.train import follower_overrides, run
from gpt_oss.training.checkpoint import (
    CheckpointError,
    find_checkpoint,
    read_checkpoint,
    resolve_resume,
)
from gpt_oss.training.checkpoint_sharded import read_trainer_state
from gpt_oss.training.distributed import (
    World,
    checkpoint_blocks,
    first_host,
    launch_env,
    launch_world,
)
from gpt_oss.training.loading import load_model, load_vocabulary
from gpt_oss.training.trainer import TrainerConfig

ROOT = Path(__file__).resolve().parents[1]
FULL = dict(
    vocab_size=201088, hidden_size=2880, intermediate_size=2880, num_hidden_layers=24,
    num_attention_heads=64, num_key_value_heads=8, head_dim=64, num_experts=32,
    experts_per_token=4, sliding_window=128, max_position_embeddings=131072,
)  # fmt: skip


# --- launch environment ------------------------------------------------------------------


@pytest.mark.parametrize(
    "nodelist, host",
    [("gpu007", "gpu007"), ("gpu[003-004,7]", "gpu003"), ("a-b-[12,14],c1", "a-b-12"),
     ("node1,node2", "node1")],
)  # fmt: skip
def test_the_first_host_of_a_slurm_nodelist_is_the_rendezvous(nodelist, host):
    assert first_host(nodelist) == host


def test_slurm_tasks_become_torchrun_variables_and_torchrun_wins():
    slurm = {"SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1",
             "SLURM_JOB_NODELIST": "gpu[10-11]", "SLURM_JOB_ID": "123456"}  # fmt: skip
    env = launch_env(slurm)
    assert env == {"RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "MASTER_ADDR": "gpu10",
                   "MASTER_PORT": str(20000 + 123456 % 20000)}  # fmt: skip
    assert launch_world(slurm) == World(rank=5, size=8, local_rank=1)
    torchrun = slurm | {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0"}
    assert launch_world(torchrun) == World(rank=0, size=2, local_rank=0)
    assert launch_world({"SLURM_PROCID": "0", "SLURM_NTASKS": "1"}) == World()  # one-GPU job
    assert launch_world({}) == World()


def test_only_rank_zero_lets_hydra_make_a_run_directory(monkeypatch):
    for key in ("RANK", "WORLD_SIZE", "SLURM_PROCID", "SLURM_NTASKS"):
        monkeypatch.delenv(key, raising=False)
    assert follower_overrides(["model=tiny"]) == []
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    assert follower_overrides(["model=tiny"]) == []
    monkeypatch.setenv("RANK", "1")
    assert "hydra.output_subdir=null" in follower_overrides(["model=tiny"])
    assert "hydra.run.dir=." in follower_overrides(["model=tiny"])
    with pytest.raises(SystemExit, match="slurm_ddp"):
        follower_overrides(["-m", "model=tiny"])


def test_slurm_ddp_launcher_runs_one_task_per_gpu():
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    overrides = ["hydra/launcher=slurm_ddp", "hydra.launcher.nodes=2", "trainer.parallel=fsdp"]
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        cfg = compose("config", overrides=overrides, return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert launcher.tasks_per_node == launcher.gpus_per_node == 8 and launcher.nodes == 2


@pytest.mark.parametrize(
    "fields, world_size, message",
    [({}, 2, "parallel=none"), ({"parallel": "zero3"}, 1, "parallel"),
     ({"parallel": "fsdp", "precision": "fp16"}, 2, "fp16"), ({"meta_init": True}, 1, "meta_init")],
)  # fmt: skip
def test_impossible_parallel_settings_are_config_errors(fields, world_size, message):
    with pytest.raises(ConfigError, match=message):
        TrainerConfig(**fields).validate(world_size)
    TrainerConfig(parallel="fsdp", batch_size=8, grad_accum=2).validate(4)
    with pytest.raises(ConfigError, match="batch_size"):
        TrainerConfig(parallel="ddp", batch_size=8, grad_accum=2).validate(3)


# --- evaluation and checkpoints without processes ---------------------------------------


@pytest.mark.parametrize("world_size", [1, 2, 4])
def test_ranks_together_score_exactly_the_windows_one_process_scores(world_size):
    tokens = np.arange(1000, dtype=np.uint32)
    loader = ValLoader(tokens, batch_size=4, seq_len=16, max_batches=3)  # 12 windows...
    loader.window_starts = loader.window_starts[:10]  # ...10: the last batch has only 2
    single = [tokens[loader.window_starts[i : i + 4]].tolist() for i in range(0, 10, 4)]
    shards = [list(loader.rank_batches(rank, world_size)) for rank in range(world_size)]
    assert len({len(shard) for shard in shards}) == 1  # every rank runs every forward (FSDP)
    for batch, expected in enumerate(single):
        scored = [s for shard in shards for s in shard[batch][0][:, 0].tolist() * shard[batch][2]]
        assert scored == expected


def test_a_save_cut_between_its_renames_resumes_from_the_previous_checkpoint(tmp_path):
    old = tmp_path / "checkpoints" / "last.old"
    old.mkdir(parents=True)
    (old / "trainer.pt").write_bytes(b"")
    assert find_checkpoint(tmp_path / "checkpoints" / "last", names=(), sharded=True) == old
    assert resolve_resume("auto", tmp_path, sharded=True) == old
    assert find_checkpoint(tmp_path, ("last",), sharded=False) is None
    with pytest.raises(CheckpointError, match="is a sharded checkpoint"):  # not a fresh start
        resolve_resume("auto", tmp_path, sharded=False)


# --- activation checkpointing --------------------------------------------------------------


def _saved_bytes(forward, weights: set[int] = frozenset()) -> int:
    """Bytes of the tensors autograd keeps for backward while `forward()` runs."""
    saved: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        saved[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        forward()
    return sum(size for ptr, size in saved.items() if ptr not in weights)


def test_activation_checkpointing_keeps_losses_and_gradients_and_stores_less(
    make_model, single_threaded
):
    inputs, targets = torch.randint(0, 1000, (2, 2, 48))
    plain = make_model(seed=3, moe_impl="grouped", attn_impl="sdpa").train()
    recomputed = make_model(seed=3, moe_impl="grouped", attn_impl="sdpa").train()
    checkpoint_blocks(recomputed)
    loss, loss_ac = plain.loss(inputs, targets).loss, recomputed.loss(inputs, targets).loss
    loss.backward()
    loss_ac.backward()
    assert loss_ac.item() == loss.item()
    for (name, p), p_ac in zip(plain.named_parameters(), recomputed.parameters(), strict=True):
        torch.testing.assert_close(p_ac.grad, p.grad, rtol=0, atol=1e-6, msg=name)
    stored = _saved_bytes(lambda: plain.hidden_states(inputs))
    stored_ac = _saved_bytes(lambda: recomputed.hidden_states(inputs))
    assert stored_ac < stored / 5  # each block keeps its input; the rest is recomputed
    assert set(recomputed.state_dict()) == set(plain.state_dict())  # names unchanged


# --- memory plan and the full model -----------------------------------------------------


def test_full_model_on_the_meta_device_has_the_published_parameter_count(make_config):
    config = make_config(**FULL)
    total = meta_parameter_count(config)  # built on the meta device: no memory
    assert total == parameter_counts(config)["total"]
    assert round(total / 1e9, 1) == 20.9


def test_memory_plan_says_full_model_trains_on_8_gpus_only_with_checkpointing(make_config):
    config = make_config(**FULL, loss_chunk_tokens=4096)
    total = parameter_counts(config)["total"]
    plan = training_memory(
        config, gpus=8, batch_size=1, seq_len=4096, activation_checkpointing=True
    )
    states = plan["parameters (fp32)"] + plan["gradients (fp32)"] + plan["optimizer states (AdamW)"]
    assert states == 16 * total / 8
    assert plan["total"] < 72e9  # an 80 GB GPU, with room for the allocator
    no_ac = training_memory(
        config, gpus=8, batch_size=1, seq_len=4096, activation_checkpointing=False
    )
    assert no_ac["total"] > 80e9
    assert training_memory(config, 1, 1, 4096, True)["total"] > 300e9  # one GPU: no


def test_activation_estimate_is_close_to_what_autograd_saves(make_config, single_threaded):
    """The plan's per-token activation bytes against saved tensors measured at two lengths
    (the difference removes what does not grow with tokens, such as bf16 weight copies)."""
    from gpt_oss.model.model import GptOss

    config = make_config(hidden_size=256, intermediate_size=256, num_attention_heads=4,
                         head_dim=64, num_experts=8, moe_impl="grouped",
                         attn_impl="sdpa")  # fmt: skip
    model = GptOss(config)
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}

    def saved_bytes(seq_len: int) -> int:
        inputs = torch.randint(0, 1000, (2, seq_len))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return _saved_bytes(lambda: model.hidden_states(inputs), weights)

    per_token_layer = (saved_bytes(160) - saved_bytes(32)) / (2 * 128) / config.num_hidden_layers
    assert per_token_layer == pytest.approx(activation_bytes_per_token(config), rel=0.15)


# --- FSDP in one process: sharded checkpoints and consolidation -------------------------


@pytest.mark.slow
def test_fsdp_in_one_process_writes_shards_that_consolidate_to_our_format_and_hf(tmp_path):
    steps = ["trainer.max_steps=2", "trainer.seq_len=32", "trainer.eval_every=2",
             "trainer.checkpoint_every=2", "trainer.parallel=fsdp",
             "trainer.meta_init=true"]  # fmt: skip
    run_dir = tmp_path / "fsdp"
    run(compose_run(*tiny_overrides(tmp_path, *steps)), run_dir)  # a group of one, meta init
    assert (run_dir / "checkpoints" / "last" / ".metadata").is_file()
    assert not list((run_dir / "checkpoints").glob("*.pt"))
    consolidate_main([str(run_dir), "--hf", str(tmp_path / "hf")])
    assert read_checkpoint(run_dir / "checkpoints" / "best.pt")["step"] == 2
    model, exported = load_model(run_dir), import_hf(tmp_path / "hf")  # the run dir now loads
    inputs = torch.randint(0, model.config.vocab_size, (1, 12))
    torch.testing.assert_close(exported(inputs), model(inputs))
    # the compact vocabulary's map survives sharding, consolidation and export
    vocabulary = load_vocabulary(run_dir)
    assert vocabulary.kind == "compact" and vocabulary.size == model.config.vocab_size
    assert load_vocabulary(tmp_path / "hf") == vocabulary


def _assert_same_losses(records: list[dict], expected: list[dict], tolerance: float) -> None:
    keys = [(r["step"], r["split"]) for r in records]
    assert keys == [(r["step"], r["split"]) for r in expected]
    for record, reference in zip(records, expected, strict=True):
        assert math.isclose(record["loss"], reference["loss"], rel_tol=0, abs_tol=tolerance), (
            record["step"], record["split"], record["loss"], reference["loss"])  # fmt: skip


# --- two processes (gloo) ----------------------------------------------------------------

STEPS = [
    "trainer.max_steps=6", "trainer.seq_len=32", "trainer.grad_accum=2", "trainer.eval_every=3",
    "trainer.checkpoint_every=3", "trainer.log_every=1",
    "model.balancing=bias",  # per-expert counts all-reduced: selection biases stay identical
]  # fmt: skip


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("distributed")


@pytest.fixture(scope="module")
def one_process(workdir) -> list[dict]:
    """The reference: one process, the same global batch (4) and accumulation."""
    run(compose_run(*tiny_overrides(workdir, *STEPS)), workdir / "one")
    return read_records(workdir / "one")


def _overrides(workdir: Path, *extra: str) -> list[str]:
    return tiny_overrides(workdir, *STEPS, *extra)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _start_rank(workdir: Path, rank: int, port: int, overrides: list[str]) -> subprocess.Popen:
    """One rank started by hand, as torchrun would (its own log file, never the cwd)."""
    env = os.environ | {"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2",
                        "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
                        "OMP_NUM_THREADS": "1"}  # fmt: skip
    log = workdir / "logs" / f"rank{rank}-{port}.log"
    log.parent.mkdir(exist_ok=True)
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "gpt_oss.train", *overrides], cwd=workdir,
                                env=env, stdout=out, stderr=subprocess.STDOUT)  # fmt: skip
    proc.log = log
    return proc


def _finish(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        assert proc.wait(timeout=300) == 0, proc.log.read_text()[-4000:]


@pytest.fixture(scope="module")
def fsdp_run(workdir) -> Path:
    """FSDP + activation checkpointing on 2 ranks started 1.5 s apart; rank 0 names the run
    directory (Hydra's default, by the time), rank 1 is told another one it must not create."""
    port, stray = _free_port(), workdir / "rank1-dir"
    overrides = _overrides(
        workdir, "trainer.parallel=fsdp", "trainer.activation_checkpointing=true"
    )
    first = _start_rank(workdir, 0, port, overrides)
    time.sleep(1.5)
    second = _start_rank(workdir, 1, port, [*overrides, f"hydra.run.dir={stray}"])
    _finish([first, second])
    assert not stray.exists()
    (run_dir,) = (workdir / "outputs" / "runs").glob("*/*")
    return run_dir


@pytest.mark.slow
def test_fsdp_on_two_processes_matches_one_process(fsdp_run, one_process):
    _assert_same_losses(read_records(fsdp_run), one_process, tolerance=1e-5)


@pytest.mark.slow
def test_two_rank_shards_consolidate_to_the_one_process_weights(fsdp_run, one_process, workdir):
    out = consolidate_checkpoint(fsdp_run / "checkpoints" / "last", out=workdir / "consolidated.pt")
    weights = read_checkpoint(out)["model"]
    expected = read_checkpoint(workdir / "one" / "checkpoints" / "last.pt")["model"]
    assert weights.keys() == expected.keys()
    for name, tensor in expected.items():
        # Adam divides each gradient by its own RMS: float32 rounding in near-zero gradients
        # (summed in another order over two ranks) can move single weights by up to ~lr per
        # step, so compare whole tensors: the relative error of each must stay tiny.
        error = (weights[name].float() - tensor.float()).norm() / tensor.float().norm().clamp(
            min=1e-12
        )
        assert error < 1e-3, (name, float(error))
    assert all(
        torch.equal(weights[n], expected[n]) for n in expected if n.endswith("selection_bias")
    )


@pytest.mark.slow
def test_two_ranks_share_rank_zeros_run_directory_and_nothing_else_is_written(fsdp_run, workdir):
    assert (fsdp_run / ".hydra" / "config.yaml").is_file() and (fsdp_run / "train.log").is_file()
    shards = sorted(p.name for p in (fsdp_run / "checkpoints" / "last").glob("*.distcp"))
    assert shards == ["__0_0.distcp", "__1_0.distcp"]  # rank 1 wrote into rank 0's directory
    for name in (".hydra", "train.log", "config.yaml", "metrics.jsonl", "checkpoints"):
        assert not (workdir / name).exists(), name  # rank 1's cwd stays clean


@pytest.mark.slow
def test_ddp_under_torchrun_matches_one_process(workdir, one_process):
    run_dir = workdir / "ddp"
    args = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
            "-m", "gpt_oss.train", *_overrides(workdir, "trainer.parallel=ddp"),
            f"hydra.run.dir={run_dir}"]  # fmt: skip
    done = subprocess.run(args, cwd=workdir, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert done.stdout.count("finished 6 steps") == 1  # rank 0 alone reports
    _assert_same_losses(read_records(run_dir), one_process, tolerance=1e-5)


@pytest.mark.slow
def test_two_process_run_killed_and_resumed_continues_identically(fsdp_run, workdir):
    run_dir, port = workdir / "killed", _free_port()
    overrides = [*_overrides(workdir, "trainer.parallel=fsdp",
                             "trainer.activation_checkpointing=true"),
                 f"hydra.run.dir={run_dir}"]  # fmt: skip
    ranks = [_start_rank(workdir, rank, port, overrides) for rank in (0, 1)]
    deadline = time.time() + 240
    while time.time() < deadline and not _has_step(run_dir, 4):
        time.sleep(0.2)
    for rank in ranks:
        rank.send_signal(signal.SIGKILL)  # both ranks die at once, mid-step
        rank.wait()
    assert _has_step(run_dir, 4), "the run did not pass its first checkpoint (step 3)"
    port = _free_port()
    _finish(
        [_start_rank(workdir, rank, port, [*overrides, "trainer.resume=auto"]) for rank in (0, 1)]
    )
    _assert_same_losses(read_records(run_dir), read_records(fsdp_run), tolerance=1e-6)


@pytest.mark.slow
def test_a_signal_to_one_rank_stops_both_after_the_same_step_and_they_resume_identically(
    fsdp_run, workdir
):
    run_dir = workdir / "signalled"
    overrides = [*_overrides(workdir, "trainer.parallel=fsdp",
                             "trainer.activation_checkpointing=true"),
                 f"hydra.run.dir={run_dir}"]  # fmt: skip

    def start() -> list[subprocess.Popen]:
        port = _free_port()
        return [_start_rank(workdir, rank, port, overrides) for rank in (0, 1)]

    # stopped at most 2 steps after the last logged one (rank 1 may wait in a collective)
    ranks, logged = freeze_mid_run(start, run_dir, after_step=1, margin=3, max_steps=6)
    ranks[1].send_signal(signal.SIGTERM)  # rank 0 learns of it from the all-reduced stop flag
    for rank in ranks:
        rank.send_signal(signal.SIGCONT)
    for rank in ranks:  # a rank stopping alone would leave the other in a collective: no exit
        assert rank.wait(timeout=300) == 128 + signal.SIGTERM, rank.log.read_text()[-4000:]
    stopped = read_trainer_state(run_dir / "checkpoints" / "last")["step"]
    assert logged <= stopped <= logged + 2
    log = ranks[0].log.read_text()
    assert f"SIGTERM stopped the run after step {stopped} of 6" in log
    command = _resume_command(log)  # "<the same launcher as before ...> -m gpt_oss.train ..."
    resume = command[command.index("gpt_oss.train") + 1 :]
    assert resume[-2:] == [f"hydra.run.dir={run_dir}", "trainer.resume=auto"]
    assert "trainer.parallel=fsdp" in resume  # a launch setting: today's, so repeated
    port = _free_port()
    _finish([_start_rank(workdir, rank, port, resume) for rank in (0, 1)])
    _assert_same_losses(read_records(run_dir), read_records(fsdp_run), tolerance=1e-6)


def _has_step(run_dir: Path, step: int) -> bool:
    path = run_dir / "metrics.jsonl"
    return path.exists() and f'"step": {step},' in path.read_text()
