"""Sweeps end to end: layer patterns by name, the experiment configs, the GPU pool launcher,
a real 2x2 multirun and the compare command over it."""

from __future__ import annotations

import itertools
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.types import RunMode
from omegaconf import OmegaConf, open_dict

from gpt_oss.compare import main as compare_main
from gpt_oss.model.config import layer_pattern
from gpt_oss.model.size import parameter_counts
from gpt_oss.schema import build
from gpt_oss.studies import compare, gpu_pool
from gpt_oss.train import job_identity

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
STUDIES = sorted(p.stem for p in (ROOT / "experiments").glob("*.yaml"))  # one file per study


def compose_config(*overrides: str, hydra_config: bool = False):
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        return compose("config", overrides=list(overrides), return_hydra_config=hydra_config)


def sweep_points(params: dict[str, str]) -> list[list[str]]:
    """The jobs Hydra's basic sweeper makes of hydra.sweeper.params: the cartesian product."""
    parsed = OverridesParser.create().parse_overrides([f"{k}={v}" for k, v in params.items()])
    choices = [
        [f"{o.get_key_element()}={v}" for v in o.sweep_string_iterator()]
        if o.is_sweep_override()
        else [f"{o.get_key_element()}={o.get_value_element_as_str()}"]
        for o in parsed
    ]
    return [list(point) for point in itertools.product(*choices)]


# ------------------------------------------------------------------ layer patterns by name
def test_layer_types_take_a_pattern_name_for_the_models_layer_count():
    cfg = compose_config("model=mini", "model.layer_types=${layers:one_in_four}")
    assert build(cfg)["model_config"].layer_types == layer_pattern("one_in_four", 8)
    cfg = compose_config(
        "model=tiny", "model.num_hidden_layers=4", "model.layer_types=${layers:all_full}"
    )
    assert build(cfg)["model_config"].layer_types == ["full_attention"] * 4


def test_an_unknown_layer_pattern_names_the_valid_ones():
    cfg = compose_config("model=tiny", "model.layer_types=${layers:every_other}")
    with pytest.raises(
        Exception, match="every_other.*all_full.*all_sliding.*alternating.*one_in_four"
    ):
        build(cfg)


# ------------------------------------------------------------------------ the experiments
# The extra overrides each study's README gives for experiments/scale=gpu.
GPU_OVERRIDES = {
    "sliding_window": ["model.sliding_window=64,128,256,512"],
    "layer_pattern": ["model.num_hidden_layers=8", "model.sliding_window=128"],
    "moe_vs_dense": ["experiments/moe_vs_dense=moe_mini,dense_mini"],
}


def test_there_are_at_least_three_studies_each_with_a_readme():
    assert {"expert_count", "sliding_window", "layer_pattern", "moe_vs_dense"} <= set(STUDIES)
    for study in STUDIES:
        assert (ROOT / "experiments" / study / "README.md").is_file(), study


@pytest.mark.parametrize("scale", ["cpu", "gpu"])
@pytest.mark.parametrize("study", STUDIES)
def test_every_experiment_composes_and_builds_at_every_sweep_point(study, scale):
    command = [f"+experiments={study}", f"experiments/scale={scale}"]
    command += GPU_OVERRIDES.get(study, []) if scale == "gpu" else []
    base = compose_config(*command[:2], hydra_config=True)
    assert base.name == study
    assert str(base.hydra.sweep.dir).startswith(f"outputs/multirun/{study}/")
    params = OmegaConf.to_container(base.hydra.sweeper.params, resolve=True)
    # Hydra resolves these before its sweeper parses them, escaped or not: sweep plain values or
    # config groups (experiments/layer_pattern/*.yaml), never ${...}
    assert "${" not in str(params)
    # like Hydra's basic sweeper: a command-line sweep of a key replaces the config's
    points = sweep_points(params | dict(o.split("=", 1) for o in command[2:]))
    # every setting runs with the same seeds, so compare can put intervals on it
    seeds = sorted({int(dict(o.split("=", 1) for o in p)["trainer.seed"]) for p in points})
    assert seeds == ([1, 2, 3, 4, 5, 6] if study == "seed_noise" else [1, 2, 3])
    if study != "seed_noise":  # build each setting once (its first seed)
        points = [p for p in points if "trainer.seed=1" in p]
    models = []
    for point in points:
        parts = build(compose_config(*command[:2], *point))  # instantiates and validates all
        data, model = parts["data_config"], parts["model_config"]
        if scale == "cpu":
            assert data.source == "files" and data.train_files[0].endswith(
                "tinystories_sample.jsonl"
            )
            assert model.hidden_size == 64  # tiny
        else:
            assert data.source == "hub" and data.offline_fallback == "error"
            assert model.hidden_size == 512 and parts["trainer_config"].seq_len == 512  # mini
        models.append(model)
    settings = {"moe_vs_dense": 2, "seed_noise": 6, "sliding_window": 3 if scale == "cpu" else 4}
    assert len(models) == settings.get(study, 4)
    check_study(study, models, [dict(o.split("=", 1) for o in point) for point in points])


def check_study(study: str, models: list, points: list[dict[str, str]]) -> None:
    """What each study holds fixed and what it varies."""
    counts = [parameter_counts(m) for m in models]
    if study == "expert_count":
        assert [m.num_experts for m in models] == [4, 8, 16, 32]
        assert len({c["active"] - c["router"] for c in counts}) == 1  # active held equal
        assert [c["total"] for c in counts] == sorted(c["total"] for c in counts)
    elif study == "sliding_window":
        assert [m.sliding_window for m in models] == [
            int(p["model.sliding_window"]) for p in points
        ]
    elif study == "layer_pattern":
        names = [p["experiments/layer_pattern"] for p in points]
        assert names == ["all_full", "alternating", "one_in_four", "all_sliding"]
        for name, model in zip(names, models, strict=True):
            assert model.layer_types == layer_pattern(name, model.num_hidden_layers)
        assert len({tuple(m.layer_types) for m in models}) == 4
    elif study == "seed_noise":
        assert len({str(m) for m in models}) == 1 and len({p["trainer.seed"] for p in points}) == 6
    elif study == "moe_vs_dense":
        moe, dense = models
        assert (moe.experts_per_token, dense.num_experts, dense.experts_per_token) == (2, 1, 1)
        assert dense.intermediate_size == moe.experts_per_token * moe.intermediate_size
        # the same active expert matrices; the MoE arm has more router rows and one more
        # active down-projection bias per layer
        extra = counts[0]["router"] - counts[1]["router"] + moe.num_hidden_layers * moe.hidden_size
        # (0.15% of mini's active parameters with its compact 8192-id head, 0.02% with 201k)
        assert counts[0]["active"] - counts[1]["active"] == extra < 2e-3 * counts[0]["active"]


# ------------------------------------------------------------------------- the launchers
def test_gpu_pool_launcher_runs_one_job_per_visible_gpu(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2")
    cfg = compose_config("hydra/launcher=gpu_pool", hydra_config=True)
    assert cfg.hydra.launcher._target_.endswith("JoblibLauncher")
    assert cfg.hydra.launcher.n_jobs == 3 and cfg.hydra.launcher.prefer == "processes"


def test_slurm_launcher_config_composes():
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    cfg = compose_config(
        "+experiments=expert_count",
        "hydra/launcher=slurm",
        "hydra.launcher.partition=gpu",
        hydra_config=True,
    )
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.partition, launcher.gpus_per_node, launcher.tasks_per_node) == ("gpu", 1, 1)
    assert launcher.timeout_min > 0 and launcher.name == "expert_count"


def test_pool_claims_a_free_gpu_starting_from_the_job_number(tmp_path):
    gpus = ["0", "1", "2"]
    first, lock1 = gpu_pool.claim_gpu(gpus, job_num=4, lock_dir=tmp_path)
    second, lock2 = gpu_pool.claim_gpu(gpus, job_num=4, lock_dir=tmp_path)  # 1 is held: next
    third, lock3 = gpu_pool.claim_gpu(gpus, job_num=0, lock_dir=tmp_path)
    assert (first, second, third) == ("1", "2", "0")
    shared, none = gpu_pool.claim_gpu(gpus, job_num=5, lock_dir=tmp_path)  # all held: share
    assert (shared, none) == ("2", None)
    lock1.close()  # a worker that exits frees its GPU
    assert gpu_pool.claim_gpu(gpus, job_num=0, lock_dir=tmp_path)[0] == "1"
    lock2.close()
    lock3.close()


def test_a_worker_process_keeps_its_gpu_for_every_later_job(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_pool, "_INHERITED", "4,5")
    monkeypatch.setattr(gpu_pool, "_claimed", None)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5")
    assert gpu_pool.pin_process_gpu(job_num=1, lock_dir=tmp_path) == "5"
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "5"
    # CUDA has started on GPU 5 in this process: job 2 (2 % 2 = 0) must not move to GPU 4
    assert gpu_pool.pin_process_gpu(job_num=2, lock_dir=tmp_path) == "5"
    gpu_pool._claimed[1].close()


def test_visible_gpus_reads_cuda_visible_devices():
    assert gpu_pool.visible_gpus("0, 3") == ["0", "3"]
    assert gpu_pool.visible_gpus("") == []


def test_sweep_jobs_share_one_wandb_group_and_are_named_by_their_swept_keys(tmp_path):
    cfg = compose_config(
        "model=tiny", "model.num_experts=8", "trainer.device=cpu", hydra_config=True
    )
    sweep_dir = tmp_path / "multirun" / "2026-11-25" / "10-00-00"
    sweep_dir.mkdir(parents=True)  # the command line as typed, as Hydra's sweeper saves it
    OmegaConf.save(
        {"hydra": {"overrides": {"task": ["model=tiny", "model.num_experts=8,16"]}}},
        sweep_dir / "multirun.yaml",
    )
    with open_dict(cfg):  # what the launcher sets for job 3 of a sweep
        cfg.hydra.mode = RunMode.MULTIRUN
        cfg.hydra.sweep.dir = str(sweep_dir)
        cfg.hydra.job.num = 3
    HydraConfig.instance().set_config(cfg)
    try:
        group, name = job_identity(cfg)
    finally:
        HydraConfig.instance().cfg = None
    assert group == "gpt-oss-2026-11-25-10-00-00"  # date and time: unique per sweep
    assert name == "num_experts=8"  # the swept key, shortened; model=tiny is the same for all


def test_a_single_run_is_named_by_its_overrides_shortened():
    cfg = compose_config(
        "model=tiny", "model.num_experts=8", "trainer.device=cpu", hydra_config=True
    )
    HydraConfig.instance().set_config(cfg)
    try:
        assert job_identity(cfg) == (None, "model=tiny,num_experts=8")  # trainer.device excluded
    finally:
        HydraConfig.instance().cfg = None


# --------------------------------------------------------- a real multirun, then compare
@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    """A 2x2 sweep of model=tiny (narrowed to hidden 32) through the GPU-pool launcher: two
    pretend GPUs, so two jobs at a time, each on the CPU."""
    tmp = tmp_path_factory.mktemp("sweep")
    overrides = [
        "model=tiny",
        "data=synthetic",
        "logger=none",
        "trainer=cpu",
        "trainer.device=cpu",
        "data.synthetic_train_stories=300",
        "data.synthetic_val_stories=30",
        f"data.cache_dir={tmp / 'cache'}",
        "trainer.max_steps=4",
        "trainer.batch_size=2",
        "trainer.seq_len=32",
        "trainer.eval_every=2",
        "trainer.eval_batches=2",
        "trainer.checkpoint_every=4",
        "trainer.log_every=1",
        "trainer.progress=false",
        "model.hidden_size=32",
        "model.intermediate_size=32",
        "model.num_experts=2,4",
        "model.sliding_window=8,16",
        "hydra/launcher=gpu_pool",
        f"hydra.sweep.dir={tmp / 'multirun'}",
    ]
    env = os.environ | {"CUDA_VISIBLE_DEVICES": "0,1", "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "gpt_oss.train", "-m", *overrides],
        cwd=tmp,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return tmp / "multirun"


@pytest.mark.slow
def test_each_job_has_its_own_run_dir_and_gpu(sweep):
    jobs = sorted(p for p in sweep.iterdir() if p.name.isdigit())
    assert [p.name for p in jobs] == ["0", "1", "2", "3"]
    experts_windows = []
    gpus = set()
    for job in jobs:
        config = yaml.safe_load((job / "config.yaml").read_text())
        experts_windows.append((config["model"]["num_experts"], config["model"]["sliding_window"]))
        log = (job / "train.log").read_text()
        gpus |= {
            g
            for g in ("0", "1")
            if f"gpu_pool: job {job.name} runs on CUDA_VISIBLE_DEVICES={g}" in log
        }
    assert experts_windows == [(2, 8), (2, 16), (4, 8), (4, 16)]
    assert gpus == {"0", "1"}  # two workers, one pretend GPU each


@pytest.mark.slow
def test_compare_tabulates_and_plots_the_sweep(sweep, capsys):
    assert compare_main([str(sweep)]) == 0
    printed = capsys.readouterr().out
    assert printed.count("model.num_experts=") == 4 and "| final val bpb |" in printed
    rows = list(__import__("csv").DictReader((sweep / "comparison.csv").open()))
    assert len(rows) == 4
    assert (sweep / "comparison.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for row in rows:
        job = sweep / row["run"]
        records = [json.loads(line) for line in (job / "metrics.jsonl").read_text().splitlines()]
        val = [r for r in records if r["split"] == "val"]
        speeds = [r["tokens_per_s"] for r in records if r["split"] == "train" and r["step"] > 1]
        config = yaml.safe_load((job / "config.yaml").read_text())
        assert int(row["model.num_experts"]) == config["model"]["num_experts"]
        assert int(row["model.sliding_window"]) == config["model"]["sliding_window"]
        assert float(row["final_val_loss"]) == val[-1]["loss"]
        assert float(row["best_val_loss"]) == min(r["loss"] for r in val)
        assert float(row["final_val_bpb"]) == val[-1]["bpb"]
        assert float(row["tokens_per_s"]) == pytest.approx(statistics.median(speeds))
        assert int(row["params_total"]) == config["parameters"]["total"]
        assert int(row["params_active"]) == config["parameters"]["active"]
        assert int(row["steps"]) == 4


# ------------------------------------------------------------------ compare, piece by piece
def fake_run_dir(
    path: Path, overrides: list[str], val_losses: list[float], total: int = 100
) -> Path:
    (path / ".hydra").mkdir(parents=True)
    (path / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (path / "config.yaml").write_text(
        yaml.safe_dump({"parameters": {"total": total, "active": 10}})
    )
    records = [{"step": 1, "split": "train", "loss": 9.0, "tokens_per_s": 1.0, "tokens": 10}]
    records += [
        {
            "step": 10 * (i + 1),
            "split": "train",
            "loss": 9.0,
            "tokens_per_s": 100.0 + i,
            "tokens": 100 * (i + 1),
        }
        for i in range(len(val_losses))
    ]
    records += [
        {"step": 10 * (i + 1), "split": "val", "loss": v, "bpb": v / 3}
        for i, v in enumerate(val_losses)
    ]
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_swept_keys_are_the_overrides_that_differ_with_hydra_escapes_undone(tmp_path):
    for job, pattern in enumerate(["all_full", "one_in_four"]):
        fake_run_dir(
            tmp_path / str(job),
            ["model=tiny", f"model.layer_types=$\\{{layers\\:{pattern}\\}}"],
            [5.0, 4.0],
        )
    runs = compare.load_runs([tmp_path])
    rows, swept = compare.compare_rows(runs)
    assert swept == ["model.layer_types"]
    assert [r["model.layer_types"] for r in rows] == ["${layers:all_full}", "${layers:one_in_four}"]
    assert rows[0]["overrides"] == "model.layer_types=${layers:all_full}"


def test_jobs_sort_numerically_and_step_one_is_left_out_of_tokens_per_s(tmp_path):
    for job in (10, 9):
        fake_run_dir(tmp_path / str(job), [f"model.num_experts={job}"], [5.0, 3.0, 4.0])
    rows, _ = compare.compare_rows(compare.load_runs([tmp_path]))
    assert [r["run"] for r in rows] == ["9", "10"]
    assert (rows[0]["best_val_loss"], rows[0]["final_val_loss"], rows[0]["final_val_bpb"]) == (
        3.0,
        4.0,
        4.0 / 3,
    )
    assert rows[0]["tokens_per_s"] == 101.0  # median of 100, 101, 102; step 1's 1.0 excluded


def test_second_panel_is_numeric_for_numbers_and_categorical_otherwise(tmp_path):
    import matplotlib.pyplot as plt

    numeric = [
        {"run": str(e), "model.num_experts": str(e), "final_val_loss": 5.0 - e / 10}
        for e in (4, 8, 16, 32)
    ]
    fig, ax = plt.subplots()
    compare._plot_final(ax, numeric, ["model.num_experts"], "model.num_experts", "final_val_loss")
    assert ax.get_xscale() == "log" and list(ax.get_lines()[0].get_xdata()) == [4, 8, 16, 32]
    categorical = [{"run": a, "arm": a, "final_val_loss": 5.0} for a in ("moe", "dense")]
    fig, ax = plt.subplots()
    compare._plot_final(ax, categorical, ["arm"], "arm", "final_val_loss")
    assert [t.get_text() for t in ax.get_xticklabels()] == ["moe", "dense"]
    plt.close("all")


def test_compare_refuses_a_folder_without_runs(tmp_path, capsys):
    assert compare_main([str(tmp_path)]) == 2
    assert "no run" in capsys.readouterr().err


class FakeWandbRun:
    def __init__(self, name: str, history: list[dict]):
        self.name, self.path, self.history = name, ["me", "gpt-oss-lab", name[-1]], history
        self.config = {"parameters.total": 100, "parameters.active": 10, "model.num_experts": 4}

    def scan_history(self, keys: list[str]):
        return [row for row in self.history if all(k in row for k in keys)]


class FakeApi:
    def __init__(self, runs: list[FakeWandbRun]):
        self._runs = runs
        self.asked: list = []

    def runs(self, path: str, filters: dict):
        self.asked.append((path, filters))
        return self._runs


def test_wandb_runs_take_their_overrides_from_the_config_not_the_short_name():
    run = FakeWandbRun("num_experts=8", [{"_step": 2, "val/loss": 6.0, "val/bpb": 2.0}])
    run.config["provenance.overrides"] = ["model=tiny", "model.num_experts=8"]
    runs = compare.load_wandb_runs("sweep", "gpt-oss-lab", api=FakeApi([run]))
    assert runs[0].overrides == ["model=tiny", "model.num_experts=8"]


def test_wandb_group_runs_become_rows_like_local_ones():
    history = [
        {"_step": 1, "train/tokens_per_s": 50.0, "train/tokens": 8},
        {"_step": 2, "train/tokens_per_s": 70.0, "train/tokens": 16},
        {"_step": 2, "val/loss": 6.0, "val/bpb": 2.0},
    ]
    api = FakeApi([FakeWandbRun("data.files=[a,b],model.num_experts=8", history)])
    runs = compare.load_wandb_runs("sweep-10-00-00", "gpt-oss-lab", entity="me", api=api)
    assert api.asked == [("me/gpt-oss-lab", {"group": {"$regex": "^sweep\\-10\\-00\\-00(/|$)"}})]
    assert runs[0].overrides == [
        "data.files=[a,b]",
        "model.num_experts=8",
    ]  # an older run: its name
    row = compare.summarize(runs[0])
    assert (
        row["params_total"],
        row["final_val_loss"],
        row["final_val_bpb"],
        row["tokens_per_s"],
    ) == (100, 6.0, 2.0, 70.0)
