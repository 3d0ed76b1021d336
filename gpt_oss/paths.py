"""Where the Hydra config tree lives: the checkout's conf/ and experiments/, or their copy
installed in the package.

The repository keeps conf/ and experiments/ at its top level (DESIGN.md). A wheel or a
`pip install .` maps them into the package (`gpt_oss/conf/`, `gpt_oss/experiments/`, see
pyproject.toml), so an installed package finds its configs from any working directory, and the
folder Hydra searches for experiments is our own package folder, never site-packages itself.
"""

from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent


def config_root() -> Path:
    """The folder holding conf/ and experiments/: the installed package folder when the configs
    were installed with it, else the source checkout (editable installs and PYTHONPATH runs)."""
    if (PACKAGE_DIR / "conf" / "config.yaml").is_file():
        return PACKAGE_DIR
    return PACKAGE_DIR.parent


def conf_dir() -> Path:
    """The primary config directory (config.yaml, generate.yaml, ... and the groups)."""
    return config_root() / "conf"


# Absolute, for hydra.main(config_path=...): a relative "../conf" is read against the module,
# which for an installed package is site-packages/conf.
CONF_DIR = str(conf_dir())
