"""The environment is reproducible: one lock of exact versions that pyproject, the conda
environment and the installed packages agree with."""

from __future__ import annotations

import re
import tomllib
from importlib.metadata import version

import yaml
from packaging.requirements import Requirement

from .conftest import REPO


def locked() -> dict[str, str]:
    pins = {}
    for line in (REPO / "requirements.lock").read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9_.\-]+)==([^\s;]+)", line)
        if match:
            pins[match[1].lower().replace("_", "-")] = match[2]
    return pins


def test_every_dependency_is_locked_to_a_version_its_range_allows():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pins = locked()
    requirements = [Requirement(r) for r in project["dependencies"]]
    requirements += [
        Requirement(r) for extra in project["optional-dependencies"].values() for r in extra
    ]
    for req in requirements:
        name = req.name.lower().replace("_", "-")
        assert name in pins, (
            f"{req.name} is not in requirements.lock: rerun pip-compile (see README)"
        )
        assert req.specifier.contains(pins[name], prereleases=True), (req, pins[name])


def test_conda_environment_installs_the_lock():
    env = yaml.safe_load((REPO / "envs/avfl.yaml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert pip == ["-r ../requirements.lock"]
    assert "python=3.11" in env["dependencies"]


def test_the_installed_ml_stack_is_the_locked_one():
    pins = locked()
    for name in ("torch", "torchvision", "torchaudio", "numpy", "snakemake", "scikit-learn"):
        assert version(name) == pins[name], name


def test_readme_commands_are_the_ones_ci_runs():
    """The README's first code block holds the newcomer's two commands; .ci/run runs the second."""
    readme = (REPO / "README.md").read_text()
    block = re.search(r"```bash\n(.*?)```", readme, re.S)
    assert block and readme.index("```bash") < 200, "the README must open with the two commands"
    run_pipeline, run_tests = block[1].strip().splitlines()
    assert run_pipeline.endswith("snakemake --cores 2 all") and run_tests.endswith("pytest")
    install = run_tests.removesuffix(".venv/bin/pytest")
    assert run_pipeline.startswith(install), "both commands must install the same environment"
    ci = (REPO / ".ci/run").read_text().splitlines()
    assert run_tests in ci, f".ci/run must run the README's test command: {run_tests}"
