"""Self-describing methods: the registry is torch-free, generates the config schema and the
reports' names and colours, and takes third-party methods through an entry point."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from avfl.methods import get_method, methods, registry
from avfl.methods.spec import MethodSpec, method, setting

from .conftest import VENV_BIN
from .helpers import BUILTIN_METHODS, snakemake, tiny_workflow_config

THIRD_PARTY = '''
"""A third party's method: FedAvg of the audio model over every client."""
from avfl.methods.spec import method, setting


@method(name="plainfedavg", display="Plain FedAvg", colour="#17BECF",
        settings=[setting("unused", 1.0, "a setting, to show that the config schema carries it", type="number")])
def plainfedavg(ctx):
    """FedAvg of the audio model over every client (a third-party example)."""
    from avfl.fl.tasks import AudioTask
    from avfl.fl.types import Phase
    from avfl.methods.context import MethodResult

    result = ctx.run(Phase("plain", range(len(ctx.data.clients)), lambda c: AudioTask(),
                           ctx.federated["rounds"], ctx.federated["clients_per_round"], "audio"))
    return MethodResult(ctx.model, {"plain": result}, {"audio": result.state})
'''


def third_party_package(root: Path) -> Path:
    """A package on its own path with an `avfl.methods` entry point, as `pip install` leaves it."""
    (root / "thirdparty_methods").mkdir(parents=True)
    (root / "thirdparty_methods/__init__.py").write_text("")
    (root / "thirdparty_methods/plain.py").write_text(textwrap.dedent(THIRD_PARTY))
    info = root / "thirdparty_methods-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: thirdparty-methods\nVersion: 0.1\n"
    )
    (info / "entry_points.txt").write_text(
        "[avfl.methods]\nplainfedavg = thirdparty_methods.plain\n"
    )
    return root


def test_importing_the_registry_config_and_plan_imports_no_torch():
    code = "import sys, avfl.methods, avfl.config, avfl.plan; avfl.methods.registry(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_builtin_registry():
    assert methods("method") == BUILTIN_METHODS
    assert methods("reference") == ["centralised"]
    assert methods("ablation") == ["cmrf"]
    # Opt-in: they run only where experiment.methods names them.
    assert methods("method", opt_in=True) == [*BUILTIN_METHODS, "fssuavl", "fassl"]
    assert methods("reference", opt_in=True) == ["centralised", "ssl_random_probe"]
    assert {m for m, s in registry().items() if s.raw_inputs} == {
        "fssuavl",
        "fassl",
        "ssl_random_probe",
    }
    assert (
        get_method("fassl").settings_of == get_method("ssl_random_probe").settings_of == "fssuavl"
    )
    assert get_method("harmony").uses_rate is False
    with pytest.raises(ValueError, match="registered: unifl"):
        get_method("nope")
    colours = [spec.colour for spec in registry().values()]
    assert len(set(colours)) == len(colours)  # every line of Figure 3 is its own colour


def test_a_method_declares_itself_in_one_place():
    @method(
        name="toy",
        display="Toy",
        colour="#000000",
        settings=[setting("k", 2, "why two", type="integer")],
    )
    def toy(ctx):
        """One line on what it does."""

    assert (
        isinstance(toy, MethodSpec)
        and toy.defaults() == {"k": 2}
        and toy.summary == "One line on what it does."
    )
    with pytest.raises(ValueError, match="lower-case"):
        method(name="Bad", display="B", colour="#000")(lambda ctx: None)


def test_entry_point_methods_are_registered_in_a_fresh_process(tmp_path):
    root = third_party_package(tmp_path / "site")
    env = {**os.environ, "PYTHONPATH": str(root)}
    code = "from avfl.methods import registry; from avfl.config import load_schema; " \
           "print(list(registry())[-1], 'plainfedavg' in load_schema()['properties']['methods']['properties'])"  # fmt: skip
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )
    assert out.stdout.split() == ["plainfedavg", "True"]


@pytest.mark.slow
def test_a_third_party_method_reaches_the_dag_table_and_figure(tmp_path):
    root = third_party_package(tmp_path / "site")
    env = {"PYTHONPATH": str(root)}
    config = tiny_workflow_config(
        tmp_path / "c.yaml", seeds=(0,), experiment={"methods": None, "figure3_rates": [0.5]}
    )
    dry = snakemake(tmp_path, "all", "-n", "--configfile", str(config), env=env)
    assert dry.returncode == 0, dry.stderr[-2000:]
    assert "plainfedavg" in dry.stdout
    data = yaml.safe_load(config.read_text())
    data["experiment"]["methods"] = ["plainfedavg", "harmony"]
    data["datasets"]["tiny"]["folds"] = [1]
    config.write_text(yaml.safe_dump(data))
    run = snakemake(tmp_path, "all", "--configfile", str(config), env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    record = json.loads(
        (
            tmp_path / "results/tiny/runs/default/fold1/plainfedavg/r0.5/seed0/metrics.json"
        ).read_text()
    )
    assert record["config"]["method"] == {"unused": 1.0}
    assert "| Plain FedAvg |" in (tmp_path / "results/report/tiny/table1.md").read_text()
    assert (
        "Plain FedAvg"
        in (tmp_path / "results/logs/report/tiny/report.log")
        .read_text()
        .split("Figure 3 lines:")[1]
    )
    table = subprocess.run([f"{VENV_BIN}/python", "-m", "avfl", "methods"], capture_output=True, text=True,
                           env={**os.environ, **env}, check=True)  # fmt: skip
    assert "plainfedavg (Plain FedAvg, method, per rate)" in table.stdout
