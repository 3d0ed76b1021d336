"""The package works once installed: a wheel built from this checkout, installed into a fresh
venv, trains, generates, compares and exports from a directory outside the repository through
its console scripts, finds its configs and experiments in the installed package, completes
overrides in bash, and takes a user's own config directory.

No network here: the wheel is built without build isolation (setuptools is in this venv) and
the fresh venv reads the dependencies from this venv's site-packages through a .pth file (a
plain path line, so this venv's editable install of gpt_oss is not activated there).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT.parent / "shared" / "data" / "tinystories_sample.jsonl"
SOURCES = ["gpt_oss", "conf", "experiments", "pyproject.toml", "setup.py", "README.md"]
SCRIPTS = [
    "train",
    "generate",
    "evaluate",
    "compare",
    "export",
    "consolidate",
    "bench",
    "info",
    "data",
]
TIMEOUT = 900  # seconds per command: generous for a loaded 2-core machine

pytestmark = pytest.mark.slow


def check(done: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert done.returncode == 0, f"{done.args}\n{done.stdout}\n{done.stderr}"
    return done


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> Path:
    """A fresh venv holding the wheel built from this checkout; returns its bin/ folder."""
    work = tmp_path_factory.mktemp("install")
    source = work / "src"
    source.mkdir()
    for name in SOURCES:  # a copy: building writes build/ and *.egg-info beside the sources
        if (ROOT / name).is_dir():
            shutil.copytree(
                ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__")
            )
        else:
            shutil.copy2(ROOT / name, source / name)
    pip = [sys.executable, "-m", "pip"]
    check(subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                          str(work / "dist"), str(source)],
                         capture_output=True, text=True, timeout=TIMEOUT))  # fmt: skip
    [wheel] = (work / "dist").glob("gpt_oss_lab-*.whl")
    check(subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(work / "venv")],
                         capture_output=True, text=True, timeout=TIMEOUT))  # fmt: skip
    python = work / "venv" / "bin" / "python"
    purelib = subprocess.run([python, "-c",
                              "import sysconfig; print(sysconfig.get_path('purelib'))"],
                             capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    Path(purelib, "_test_dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    check(subprocess.run([*pip, "--python", str(python), "install", "--no-deps", "--no-index",
                          "-q", str(wheel)], capture_output=True, text=True,
                         timeout=TIMEOUT))  # fmt: skip
    return python.parent


@pytest.fixture(scope="module")
def elsewhere(tmp_path_factory) -> Path:
    """A working directory outside the repository, with 60 real stories to train on."""
    work = tmp_path_factory.mktemp("elsewhere")
    (work / "stories.jsonl").write_text("".join(SAMPLE.read_text().splitlines(True)[:60]))
    return work


def command(venv: Path, cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    """Run an installed command with only the venv on PATH's front and no PYTHONPATH."""
    environ = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    environ |= {"PATH": f"{venv}{os.pathsep}{environ['PATH']}", "OMP_NUM_THREADS": "1", **env}
    return subprocess.run(
        args, cwd=cwd, env=environ, capture_output=True, text=True, timeout=TIMEOUT
    )


@pytest.fixture(scope="module")
def trained(venv, elsewhere) -> Path:
    """`gpt-oss-train` of the tiny model for two steps; the run directory it made in cwd."""
    check(command(
        venv, elsewhere, "gpt-oss-train", "model=tiny", "data=text", "logger=none", "trainer=cpu",
        f"data.train_files=[{elsewhere / 'stories.jsonl'}]", "data.val_fraction=0.2",
        f"data.cache_dir={elsewhere / 'cache'}", "trainer.max_steps=2", "trainer.batch_size=2",
        "trainer.seq_len=32", "trainer.eval_every=2", "trainer.eval_batches=1",
        "trainer.checkpoint_every=2", "trainer.progress=false",
    ))  # fmt: skip
    [run_dir] = (elsewhere / "outputs" / "runs").glob("*/*")
    return run_dir


def test_the_installed_package_is_the_wheel_with_its_configs(venv, elsewhere):
    done = check(
        command(
            venv,
            elsewhere,
            "python",
            "-c",
            "import gpt_oss.paths as p; print(p.__file__); print(p.CONF_DIR)",
        )
    )
    module, conf = done.stdout.split()
    assert str(venv.parent) in module and not module.startswith(str(ROOT))
    assert Path(conf) == Path(module).parent / "conf" and (Path(conf) / "config.yaml").is_file()


def test_console_scripts_train_generate_and_compare_from_another_directory(
    venv, elsewhere, trained
):
    assert (trained / "checkpoints" / "last.pt").is_file() and (trained / "metrics.jsonl").is_file()
    generated = check(command(venv, elsewhere, "gpt-oss-generate", f"checkpoint={trained}",
                              "prompt=Once upon a time", "max_new_tokens=5",
                              "temperature=0"))  # fmt: skip
    assert generated.stdout.startswith("Once upon a time") and "tokens/s" in generated.stderr
    compared = check(
        command(venv, elsewhere, "gpt-oss-compare", str(trained), "--out", str(elsewhere / "cmp"))
    )
    assert "| run |" in compared.stdout or "best_val_loss" in compared.stdout
    assert (elsewhere / "cmp" / "comparison.csv").is_file()


def test_every_console_script_starts(venv, tmp_path):
    for name in SCRIPTS:
        done = check(command(venv, tmp_path, f"gpt-oss-{name}", "--help"))
        assert done.stdout.strip(), name
    assert not list(tmp_path.iterdir())  # --help writes nothing


def test_export_from_the_installed_package(venv, elsewhere, trained):
    check(command(venv, elsewhere, "gpt-oss-export", str(trained), "hf"))
    assert {"config.json", "tokenizer.json", "README.md"} <= {
        p.name for p in (elsewhere / "hf").iterdir()
    }


def test_experiments_come_from_the_package_and_site_packages_is_not_searched(venv, elsewhere):
    done = check(
        command(venv, elsewhere, "gpt-oss-train", "+experiments=seed_noise", "--cfg", "job")
    )
    assert "name: seed_noise" in done.stdout and "model:" in done.stdout
    paths = check(command(venv, elsewhere, "gpt-oss-train", "--info", "searchpath")).stdout
    searched = re.findall(r"file://(\S+)", paths)
    assert searched and all(Path(p).name in ("conf", "gpt_oss") for p in searched), searched


def test_bash_completion_of_the_console_script(venv, elsewhere):
    script = (
        'eval "$(gpt-oss-train -sc install=bash)"\n'
        'COMP_LINE="gpt-oss-train model=ti"; COMP_POINT=${#COMP_LINE}\n'
        "COMP_WORDS=(gpt-oss-train model=ti); COMP_CWORD=1\n"
        'hydra_bash_completion; echo "${COMPREPLY[@]}"\n'
    )
    done = check(command(venv, elsewhere, "bash", "-c", script))
    assert "model=tiny" in done.stdout.split()


def test_a_user_config_dir_adds_options_that_extend_ours(venv, elsewhere):
    user = elsewhere / "my_conf"
    (user / "model").mkdir(parents=True)
    (user / "model" / "tiny_wide.yaml").write_text(
        "defaults:\n  - tiny\n  - _self_\nhidden_size: 96\n"
    )
    (user / "experiments").mkdir()
    (user / "experiments" / "my_study.yaml").write_text("# @package _global_\nname: my_study\n")
    done = check(command(venv, elsewhere, "gpt-oss-train", "--config-dir", str(user),
                         "model=tiny_wide", "+experiments=my_study", "--cfg", "job"))  # fmt: skip
    assert "hidden_size: 96" in done.stdout and "intermediate_size: 64" in done.stdout  # tiny's
    assert "num_hidden_layers: 2" in done.stdout and "name: my_study" in done.stdout
