"""Packages for setuptools; everything else is in pyproject.toml.

conf/ and experiments/ stay at the repository's top level (DESIGN.md) and install inside the
package as gpt_oss/conf/ and gpt_oss/experiments/ (gpt_oss/paths.py finds either place).
pyproject.toml alone cannot list found packages plus mapped ones, hence this file.
"""

from setuptools import find_packages, setup

setup(
    packages=[
        *find_packages(include=["gpt_oss", "gpt_oss.*"]),
        "gpt_oss.conf",
        "gpt_oss.experiments",
    ],
    package_dir={"gpt_oss.conf": "conf", "gpt_oss.experiments": "experiments"},
    # Configs only: the studies' READMEs, tables and plots stay in the repository.
    package_data={"gpt_oss.conf": ["**/*.yaml"], "gpt_oss.experiments": ["**/*.yaml"]},
)
