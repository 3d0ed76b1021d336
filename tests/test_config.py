"""Every value checked before work: declared ranges on every numeric setting of every config
group and entry point, unknown keys answered with the nearest valid one (issue 14, items 7
and 10)."""

from __future__ import annotations

import math
import subprocess
import sys
import types
import typing
from dataclasses import fields, is_dataclass
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf, open_dict

from gpt_oss import bench, evaluate, generate, info, schema
from gpt_oss.model.config import ConfigError, ModelConfig
from gpt_oss.schema import build
from gpt_oss.train import run as train_run
from gpt_oss.training.optim import adamw, warmup_cosine
from gpt_oss.validation import (
    INSTANTIATE_KEYS,
    Interval,
    Spec,
    declared_ranges,
    locate,
)

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
TINY = ["model=tiny", "data=synthetic", "trainer=cpu", "logger=none"]


def compose_from(config_name: str, *overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        return compose(config_name, overrides=list(overrides))


# ------------------------------------------------------------------ the declaration itself
def test_intervals_read_and_print_as_written():
    assert str(Interval.parse("[1, inf)")) == "[1, inf)"
    assert str(Interval.parse("(0, 1]")) == "(0, 1]"
    assert 0 not in Interval.parse("(0, 1]") and 1 in Interval.parse("(0, 1]")
    assert 4294967295 in Interval.parse("[0, 4294967295]")
    assert 4294967296 not in Interval.parse("[0, 4294967295]")
    assert math.nan not in Interval.parse("[0, inf)")
    with pytest.raises(ValueError, match="low <= high"):
        Interval.parse("[2, 1]")


def test_a_ranged_factory_refuses_a_bad_argument_when_called_directly():
    from conftest import UNIT_TEST_SHAPE

    from gpt_oss.model.model import GptOss

    model = GptOss(ModelConfig(**UNIT_TEST_SHAPE))
    with pytest.raises(
        ConfigError, match=r"adamw\.lr=0 is invalid: must be a number in \(0, inf\)"
    ):
        adamw(model, lr=0)
    optimizer = adamw(model)
    with pytest.raises(ConfigError, match=r"warmup_cosine\.min_lr_ratio=-0\.1 .* \[0, 1\]"):
        warmup_cosine(optimizer, total_steps=10, min_lr_ratio=-0.1)


# ---------------------------------------------------- each instance reported in issue 14.7
def tiny_run_overrides(tmp_path: Path, *extra: str) -> list[str]:
    return [
        *TINY,
        f"data.cache_dir={tmp_path / 'cache'}",
        "data.synthetic_train_stories=50",
        "data.synthetic_val_stories=10",
        *extra,
    ]


@pytest.mark.parametrize(
    "override, message",
    [
        ("trainer.seed=-1", "trainer.seed=-1 is invalid: must be an integer in [0, 4294967295]"),
        (
            "model.initializer_range=-0.02",
            "model.initializer_range=-0.02 is invalid: must be a number in (0, inf)",
        ),
        ("model.initializer_range=0", "model.initializer_range=0.0 is invalid"),
        (
            "model.rope_ntk_beta=-1",
            "model.rope_ntk_beta=-1.0 is invalid: must be a number in (0, inf)",
        ),
        ("model.swiglu_alpha=-1.702", "model.swiglu_alpha=-1.702 is invalid"),
        (
            "model.router_aux_loss_coef=-0.01",
            "model.router_aux_loss_coef=-0.01 is invalid: must be a number in [0, inf)",
        ),
        ("model.router_z_loss_coef=-0.001", "model.router_z_loss_coef=-0.001 is invalid"),
        ("model.expert_bias_rate=-0.001", "model.expert_bias_rate=-0.001 is invalid"),
        ("optimizer.lr=-1e-3", "optimizer.lr=-0.001 is invalid: must be a number in (0, inf)"),
        ("optimizer.lr=0", "optimizer.lr=0 is invalid"),
        ("optimizer.eps=0", "optimizer.eps=0 is invalid: must be a number in (0, inf)"),
        (
            "optimizer.betas=[0.9,1.0]",
            "optimizer.betas=[0.9, 1.0] is invalid: each must be a number in [0, 1)",
        ),
        ("optimizer.betas=[-0.1,0.95]", "optimizer.betas=[-0.1, 0.95] is invalid"),
        (
            "optimizer.weight_decay=-0.1",
            "optimizer.weight_decay=-0.1 is invalid: must be a number in [0, inf)",
        ),
        (
            "schedule.warmup_steps=-5",
            "schedule.warmup_steps=-5 is invalid: must be an integer in [0, inf) (or null)",
        ),
        (
            "schedule.warmup_fraction=1.5",
            "schedule.warmup_fraction=1.5 is invalid: must be a number in [0, 1]",
        ),
        (
            "schedule.min_lr_ratio=-0.1",
            "schedule.min_lr_ratio=-0.1 is invalid: must be a number in [0, 1]",
        ),
        ("trainer.grad_clip=-1", "trainer.grad_clip=-1.0 is invalid: must be a number in [0, inf)"),
        (
            "trainer.max_skipped_steps=-1",
            "trainer.max_skipped_steps=-1 is invalid: must be an integer in [0, inf)",
        ),
    ],
)
def test_each_reported_value_fails_naming_field_value_and_range_before_any_data(
    tmp_path, override, message
):
    cfg = compose_from("config", *tiny_run_overrides(tmp_path, override))
    with pytest.raises(ConfigError) as error:
        train_run(cfg, tmp_path / "run")
    assert message in str(error.value)
    assert not (tmp_path / "cache").exists() and not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            ["schedule=wsd", "schedule.decay_fraction=1.2"],
            "schedule.decay_fraction=1.2 is invalid: must be a number in [0, 1]",
        ),
        (
            ["optimizer=muon", "optimizer.ns_steps=0"],
            "optimizer.ns_steps=0 is invalid: must be an integer in [1, inf)",
        ),
        (
            ["optimizer=muon", "optimizer.momentum=-0.5"],
            "optimizer.momentum=-0.5 is invalid: must be a number in [0, 1)",
        ),
        (
            ["optimizer=muon", "optimizer.adamw_betas=[0.9,1.5]"],
            "optimizer.adamw_betas=[0.9, 1.5] is invalid",
        ),
        (
            ["trainer.max_steps=300", "schedule.warmup_steps=500"],
            "schedule.warmup_steps=500 is invalid: must be <= total_steps=300",
        ),
    ],
)
def test_other_groups_options_fail_the_same_way(tmp_path, overrides, message):
    cfg = compose_from("config", *tiny_run_overrides(tmp_path, *overrides))
    with pytest.raises(ConfigError) as error:
        train_run(cfg, tmp_path / "run")
    assert message in str(error.value)
    assert not (tmp_path / "cache").exists()


def evaluate_cfg(*overrides: str):
    return compose_from("evaluate", "checkpoint=no_such_run", "text_file=no_such.jsonl", *overrides)


@pytest.mark.parametrize(
    "override, message",
    [
        ("max_documents=0", "max_documents=0 is invalid: must be an integer in [1, inf) (or null)"),
        ("max_documents=-1", "max_documents=-1 is invalid"),
        ("context_length=0", "context_length=0 is invalid"),
        ("stride=0", "stride=0 is invalid"),
        ("batch_size=0", "batch_size=0 is invalid"),
    ],
)
def test_evaluate_refuses_bad_values_before_reading_or_loading_anything(override, message):
    # the checkpoint and the text file do not exist: the error must come first
    with pytest.raises(ConfigError) as error:
        evaluate.run(evaluate_cfg(override))
    assert message in str(error.value)


def test_evaluate_refuses_a_context_longer_than_the_models_positions(tmp_path):
    from gpt_oss.model.model import GptOss
    from gpt_oss.training.checkpoint import save_checkpoint

    config = ModelConfig(**{**_tiny_model(), "max_position_embeddings": 64})
    checkpoint = tmp_path / "model.pt"
    save_checkpoint(checkpoint, GptOss(config))
    text = tmp_path / "text.jsonl"
    text.write_text('{"text": "Once upon a time"}\n')
    cfg = compose_from(
        "evaluate", f"checkpoint={checkpoint}", f"text_file={text}", "context_length=65"
    )
    with pytest.raises(ConfigError, match=r"context_length=65 is invalid: must be in \[1, 64\]"):
        evaluate.run(cfg)


def _tiny_model() -> dict:
    return {
        "vocab_size": 201088,
        "hidden_size": 16,
        "intermediate_size": 16,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "head_dim": 8,
        "num_experts": 2,
        "experts_per_token": 1,
        "sliding_window": 8,
    }


@pytest.mark.parametrize(
    "override, message",
    [
        ("gpus=0", "gpus=0 is invalid: must be an integer in [1, inf)"),
        ("batch_size=-1", "batch_size=-1 is invalid"),
        ("seq_len=0", "seq_len=0 is invalid"),
        ("gpu_memory_gb=0", "gpu_memory_gb=0.0 is invalid: must be a number in (0, inf)"),
        (
            "seq_len=200000",
            "seq_len=200000 is invalid: exceeds model.max_position_embeddings=131072",
        ),
    ],
)
def test_info_refuses_bad_values_before_printing(override, message, capsys):
    with pytest.raises(ConfigError) as error:
        info.report(compose_from("info", override))
    assert message in str(error.value)
    assert capsys.readouterr().out == ""


def test_bench_with_zero_steps_exits_2_and_says_why(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "gpt_oss.bench", "model=tiny", "bench.steps=0"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2
    assert "bench.steps=0 is invalid: must be an integer in [1, inf)" in result.stderr


# ---------------------------------------------------------------------- the whole walk
def numeric(annotation) -> bool:
    """int or float (optional, or a tuple/list of them), not bool."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return any(numeric(a) for a in typing.get_args(annotation) if a is not type(None))
    if typing.get_origin(annotation) in (tuple, list):
        return all(numeric(a) for a in typing.get_args(annotation) if a is not Ellipsis)
    return annotation in (int, float)


def settings(node: dict, target, prefix: str = "") -> list[tuple[str, Spec]]:
    """(dotted path, spec) of every ranged setting under a composed node, asserting that every
    numeric field or argument has a declared range."""
    declared = declared_ranges(target)
    if is_dataclass(target):
        annotations = typing.get_type_hints(target)
        numeric_names = [f.name for f in fields(target) if numeric(annotations[f.name])]
    else:
        import inspect

        function = target.__init__ if inspect.isclass(target) else target
        parameters = inspect.signature(function, eval_str=True).parameters.values()
        numeric_names = [p.name for p in parameters if numeric(p.annotation)]
    undeclared = sorted(set(numeric_names) - set(declared))
    assert not undeclared, (
        f"{prefix or target.__name__}: numeric settings without a range {undeclared}"
    )
    found = [
        (f"{prefix}.{name}" if prefix else name, spec)
        for name, spec in declared.items()
        if name in node
    ]
    hints = typing.get_type_hints(target) if is_dataclass(target) else {}
    for key, value in node.items():
        if key in INSTANTIATE_KEYS or not isinstance(value, dict):
            continue
        sub = locate(value["_target_"]) if "_target_" in value else hints.get(key)
        path = f"{prefix}.{key}" if prefix else key
        if sub is not None and (is_dataclass(sub) or "_target_" in value):
            found += settings(value, sub, path)
        else:  # named targets side by side: logger=[wandb,csv]
            for name, child in value.items():
                if isinstance(child, dict) and "_target_" in child:
                    found += settings(child, locate(child["_target_"]), f"{path}.{name}")
    return found


def out_of_range(spec: Spec) -> list:
    """A value just outside each finite end of the interval (the end itself when open)."""
    interval, step = spec.interval, 1 if spec.integer else 0.5
    values = []
    if not math.isinf(interval.low):
        values.append(interval.low - step if interval.low_closed else interval.low)
    if not math.isinf(interval.high):
        values.append(interval.high + step if interval.high_closed else interval.high)
    return values


def entry_points(tmp_path: Path) -> list[tuple[str, object, type, object]]:
    """(name, composed config, schema, the function that starts the work)."""

    def train(cfg):
        return train_run(cfg, tmp_path / "run")

    variants = [[], ["optimizer=muon"], ["schedule=constant"], ["schedule=wsd"], ["logger=wandb"]]
    points = [
        (
            f"train {' '.join(v)}",
            compose_from("config", *tiny_run_overrides(tmp_path, *v)),
            schema.RunConfig,
            train,
        )
        for v in variants
    ]
    points += [
        ("bench", compose_from("bench", "model=tiny"), bench.BenchRunConfig, bench.run),
        ("evaluate", evaluate_cfg(), evaluate.EvaluateConfig, evaluate.run),
        (
            "generate",
            compose_from("generate", "checkpoint=no_such_run"),
            generate.GenerateConfig,
            generate.run,
        ),
        ("info", compose_from("info", "model=tiny"), schema.InfoConfig, info.report),
    ]
    return points


def test_every_numeric_setting_of_every_schema_refuses_values_outside_its_range(tmp_path, capsys):
    covered = set()
    for name, cfg, root, start in entry_points(tmp_path):
        node = {
            k: OmegaConf.to_container(cfg[k], resolve=True)
            if OmegaConf.is_config(cfg[k])
            else cfg[k]
            for k in cfg
        }
        walked = settings(node, root)
        assert walked, name
        for path, spec in walked:
            for value in out_of_range(spec):
                bad = cfg.copy()
                if spec.sequence:  # one element out of range, the others as they were
                    value = [value, *OmegaConf.to_container(OmegaConf.select(bad, path))[1:]]
                with open_dict(bad):
                    OmegaConf.update(bad, path, value, merge=False)
                shown = OmegaConf.select(bad, path)
                shown = OmegaConf.to_container(shown) if OmegaConf.is_config(shown) else shown
                with pytest.raises(ConfigError) as error:
                    start(bad)
                expected = f"{path}={shown!r} is invalid"
                assert expected in str(error.value), (name, path, value, str(error.value))
                assert str(spec.interval) in str(error.value), (name, path)
                covered.add(path)
        assert not (tmp_path / "cache").exists() and not (tmp_path / "run").exists(), name
    assert capsys.readouterr().out == ""  # nothing was reported, so nothing ran
    # the settings issue 14 named, each walked
    assert {
        "trainer.seed",
        "model.initializer_range",
        "optimizer.ns_steps",
        "optimizer.momentum",
        "schedule.decay_fraction",
        "logger.wandb.init_timeout",
        "bench.steps",
        "max_documents",
        "context_length",
        "gpus",
        "top_p",
        "data.val_fraction",
    } <= covered


def test_a_wrong_type_in_an_open_group_is_named_too(tmp_path):
    cfg = compose_from("config", *tiny_run_overrides(tmp_path, "optimizer.lr=fast"))
    with pytest.raises(ConfigError, match=r"optimizer.lr='fast' is invalid: must be a number"):
        build(cfg)
    cfg = compose_from(
        "config", *tiny_run_overrides(tmp_path, "optimizer=muon", "optimizer.ns_steps=2.5")
    )
    with pytest.raises(ConfigError, match=r"optimizer.ns_steps=2.5 is invalid: must be an integer"):
        build(cfg)


# ------------------------------------------------------------------------ misspelled keys
@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["model.num_expert=4"],
            "model.num_expert is not a valid key: did you mean model.num_experts?",
        ),
        (["trainer.max_step=10"], "did you mean trainer.max_steps?"),
        (["optimizer.lrr=1e-3"], "optimizer.lrr is not a valid key: did you mean optimizer.lr?"),
        (["-m", "model.num_expert=4,8"], "did you mean model.num_experts?"),
        (["+experiment=expert_count"], "write experiment=expert_count without the +"),
        (["experimnt=expert_count"], "did you mean experiment?"),
    ],
)
def test_misspelled_keys_on_the_command_line_get_the_nearest_valid_key(args, message):
    with pytest.raises(ConfigError) as error:
        schema.check_command_line(args, schema.RunConfig)
    assert message in str(error.value)


@pytest.mark.parametrize(
    "args",
    [
        ["model=tiny", "model.num_experts=8", "trainer.max_steps=5", "optimizer.lr=1e-3"],
        ["-m", "experiment=expert_count", "experiments/scale=gpu", "hydra/launcher=gpu_pool"],
        [
            "+experiments=expert_count",
            "+model.extra=1",
            "hydra.run.dir=x",
            "logger.wandb.mode=offline",
        ],
        ["debug=smoke", "paths.data_dir=/tmp/x", "name=x", "model.layer_types=[full_attention]"],
    ],
)
def test_valid_command_lines_pass_the_check(args):
    schema.check_command_line(args, schema.RunConfig)  # `+model.extra` is left to build()


def test_other_entry_points_suggest_their_own_keys():
    with pytest.raises(ConfigError, match="did you mean max_documents?"):
        schema.check_command_line(["max_document=5"], evaluate.EvaluateConfig)
    with pytest.raises(ConfigError, match="did you mean bench.steps?"):
        schema.check_command_line(["bench.step=5"], bench.BenchRunConfig)
    with pytest.raises(ConfigError, match="did you mean max_new_tokens?"):
        schema.check_command_line(["max_tokens=5"], generate.GenerateConfig)
    with pytest.raises(ConfigError, match="did you mean gpus?"):
        schema.check_command_line(["gpu=8"], schema.InfoConfig)


def test_a_key_forced_in_with_plus_is_refused_with_the_nearest_valid_key(tmp_path):
    cfg = compose_from("config", *tiny_run_overrides(tmp_path, "+model.num_expert=4"))
    with pytest.raises(
        ConfigError, match=r"model.num_expert is not a valid key: did you mean model.num_experts\?"
    ):
        build(cfg)
    cfg = compose_from("config", *tiny_run_overrides(tmp_path, "+optimizer.learnig_rate=1e-3"))
    with pytest.raises(ConfigError) as error:
        build(cfg)
    assert str(error.value) == (
        "optimizer.learnig_rate is not a valid key: no valid key is close "
        "(valid keys: betas, decay_embeddings, eps, fused, lr, weight_decay)"
    )


def train_cli(tmp_path: Path, *overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "gpt_oss.train",
            *tiny_run_overrides(tmp_path, *overrides),
            f"hydra.run.dir={tmp_path / 'run'}",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.parametrize(
    "override, message",
    [
        ("model.num_expert=4", "did you mean model.num_experts?"),
        ("+model.num_expert=4", "did you mean model.num_experts?"),
        ("trainer.seed=-1", "trainer.seed=-1 is invalid: must be an integer in [0, 4294967295]"),
        ("+experimnt=expert_count", "experimnt is not a valid key: did you mean experiment?"),
    ],
)
def test_the_command_line_refuses_before_hydra_makes_the_run_directory(tmp_path, override, message):
    result = train_cli(tmp_path, override)
    assert result.returncode == 2, result.stderr[-2000:]
    assert message in result.stderr
    assert "To append to your config use" not in result.stderr  # Hydra's `+key` advice
    assert "TypeError" not in result.stderr
    assert not (tmp_path / "run").exists() and not (tmp_path / "cache").exists()
