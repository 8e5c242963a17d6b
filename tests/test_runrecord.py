"""The run record's schema: the trainer writes only valid records, and every reader refuses an
invalid one, or one of another format, with the file's name and the fix."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from avfl import runrecord
from avfl.report.runs_table import write_runs_csv
from avfl.train import run_job

from .conftest import quiet, run_folder, tiny_job


@pytest.fixture(scope="module")
def record_file(tiny_training, tmp_path_factory):
    out = tmp_path_factory.mktemp("records")
    run_job(tiny_job(tiny_training, out, "harmony", federated={"rounds": 2}), log=quiet)
    return out / run_folder(None, 0) / "metrics.json"


def test_a_written_record_is_valid_and_reads_back(record_file):
    record = runrecord.read(record_file)
    assert record["format_version"] == runrecord.FORMAT_VERSION and record["method"] == "harmony"


def _damaged(record_file, tmp_path, change) -> str:
    record = json.loads(record_file.read_text())
    change(record)
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps(record))
    return str(path)


def test_a_record_without_health_is_refused_not_counted_as_healthy(record_file, tmp_path):
    path = _damaged(record_file, tmp_path, lambda r: r.pop("health"))
    with pytest.raises(
        runrecord.RunRecordError, match=r"metrics.json: not a valid run record .*'health'"
    ):
        write_runs_csv([path], tmp_path / "runs.csv")
    assert not (tmp_path / "runs.csv").exists()


def test_a_mistyped_value_names_its_key(record_file, tmp_path):
    path = _damaged(record_file, tmp_path, lambda r: r["test"].update(top1="high"))
    with pytest.raises(runrecord.RunRecordError, match=r"at 'test.top1'"):
        runrecord.read(path)


@pytest.mark.slow
def test_another_format_is_a_one_line_error_with_the_fix(record_file, tmp_path):
    path = _damaged(record_file, tmp_path, lambda r: r.update(format_version=2))
    done = subprocess.run([sys.executable, "-m", "avfl", "collect", "--metrics", path, "--out", str(tmp_path / "r.csv")],
                          capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1
    assert f"{path}: a run record of format 2" in done.stderr and "rerun its job" in done.stderr
