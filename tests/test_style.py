"""Lint and format checks, run as tests so that CI runs them: ruff for the Python and snakefmt
for the Snakefile and the rules (`snakemake --lint` of every shipped config: test_workflow.py)."""

from __future__ import annotations

import subprocess

from .conftest import REPO, VENV_BIN

PYTHON = ["src", "tests", "benchmarks"]
SNAKEMAKE = ["Snakefile", "workflow/rules"]


def run(*command: str) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)


def test_ruff_finds_nothing():
    done = run(f"{VENV_BIN}/ruff", "check", *PYTHON)
    assert done.returncode == 0, done.stdout[-3000:]


def test_the_python_is_formatted():
    done = run(f"{VENV_BIN}/ruff", "format", "--check", *PYTHON)
    assert done.returncode == 0, done.stdout[-3000:]


def test_the_workflow_is_formatted():
    done = run(f"{VENV_BIN}/snakefmt", "--check", *SNAKEMAKE)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
