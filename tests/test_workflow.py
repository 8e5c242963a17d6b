"""The Snakemake workflow end to end on a tiny config, in a temporary working directory."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from avfl.data.manifest import read_manifest

from .conftest import REPO, TINY_EXTRACT, TINY_SYNTHETIC, VENV_BIN

pytestmark = pytest.mark.slow


def snakemake(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": VENV_BIN + os.pathsep + os.environ.get("PATH", "")}
    return subprocess.run(
        [
            f"{VENV_BIN}/snakemake",
            "--snakefile",
            str(REPO / "Snakefile"),
            "--directory",
            str(workdir),
            "--cores",
            "2",
            *args,
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )


def write_config(
    path: Path,
    partition: dict | None = None,
    seeds: tuple = (0, 1),
    methods: dict | None = None,
    **extract,
) -> Path:
    config = {
        "run_datasets": ["tiny"],
        "partition": {"n_clients": 8, "alpha": 0.5, **(partition or {})},
        "experiment": {
            "seeds": list(seeds),
            "table1_rates": [0.5],
            "figure3_rates": [],
            "figure2_rate": 0.5,
        },
        "federated": {"rounds": 3, "clients_per_round": 4, "eval_every": 1, "device": "cpu"},
        "methods": methods or {},
        "datasets": {
            "tiny": {
                "source": "synthetic",
                "folds": [1, 2],
                "synthetic": TINY_SYNTHETIC,
                "extract": {**TINY_EXTRACT, **extract},
            }
        },
    }
    path.write_text(yaml.safe_dump(config))
    return path


def scheduled(result: subprocess.CompletedProcess) -> set[str]:
    """Rule names a dry run would execute (from its job-stats table)."""
    rules, in_table = set(), False
    for line in result.stdout.splitlines():
        if line.startswith("job "):
            in_table = True
        elif in_table and line.strip() and not line.startswith("-"):
            name = line.split()[0]
            if name == "total":
                break
            rules.add(name)
    return rules


def job_outputs(result: subprocess.CompletedProcess, rule: str) -> list[str]:
    """Output files of the jobs of `rule` that a dry run would execute."""
    outputs, current = [], None
    for line in result.stdout.splitlines():
        if line.startswith(("rule ", "localrule ")):
            current = line.split()[1].rstrip(":")
        elif current == rule and line.strip().startswith("output:"):
            outputs += [item.strip() for item in line.split(":", 1)[1].split(",")]
    return outputs


def test_pipeline_runs_and_reruns_only_what_changed(tmp_path: Path):
    config = write_config(tmp_path / "tiny.yaml")
    run = snakemake(tmp_path, "all", "--configfile", str(config))
    assert run.returncode == 0, run.stderr[-3000:]
    features = tmp_path / "data/features/tiny"
    rows = read_manifest(features / "manifest.tsv")
    assert sum(r.status == "ok" for r in rows) > 50
    assert sum(r.status == "failed" for r in rows) == 2  # the deliberately broken clips
    assert "usable" in (tmp_path / "results/logs/tiny/extract.log").read_text()
    assert (tmp_path / "results/benchmarks/tiny/extract.tsv").exists()
    for fold in (1, 2):
        for seed in (0, 1):
            stem = tmp_path / f"results/tiny/partition/fold{fold}_seed{seed}"
            record = json.loads(stem.with_suffix(".json").read_text())
            assert len(record["clients"]) == 8 and record["fold"] == fold
            assert Path(f"{stem}_heatmap.png").stat().st_size > 0
            runs = tmp_path / f"results/tiny/runs/fold{fold}"
            for method in ("unifl", "multifl", "modalitymirror"):
                metrics = json.loads((runs / f"{method}/r0.5/seed{seed}/metrics.json").read_text())
                assert (metrics["method"], metrics["rate"], metrics["fold"]) == (method, 0.5, fold)
            assert (
                json.loads((runs / f"harmony/seed{seed}/metrics.json").read_text())["rate"] is None
            )
    table = subprocess.run(
        [f"{VENV_BIN}/python", "-m", "avfl", "table", "--runs", str(tmp_path / "results/tiny/runs")],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert "ModalityMirror" in table.stdout and "n=4" in table.stdout

    # Reports: Table 1 from the runs, figures in three formats, the same bytes on rerun.
    report = tmp_path / "results/report"
    csv_rows = (report / "table1.csv").read_text().splitlines()
    assert csv_rows[0].startswith("dataset,metric,method,rate,mean,std,n_runs")
    assert len(csv_rows) == 1 + 4  # four methods at r = 0.5
    assert "\\toprule" in (report / "table1.tex").read_text()
    figures = [
        report / f"{stem}.{ext}"
        for stem in ("fig2_label_f1", "fig3_missing_rate")
        for ext in ("pdf", "svg", "png")
    ]
    before = {
        f: f.read_bytes()
        for f in [*figures, report / "table1.csv", report / "table1.md", report / "table1.tex"]
    }
    assert all(len(b) > 1000 for f, b in before.items() if f.suffix in (".pdf", ".svg", ".png"))
    rerun = snakemake(tmp_path, "all", "--forcerun", "report", "--configfile", str(config))
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert {f: f.read_bytes() for f in before} == before
    html = snakemake(
        tmp_path, "--report", str(tmp_path / "report.html"), "--configfile", str(config)
    )
    assert html.returncode == 0 and (tmp_path / "report.html").stat().st_size > 10_000
    runs_csv = (tmp_path / "results/tiny/runs.csv").read_text().splitlines()
    assert len(runs_csv) == 1 + 2 * 2 * 4  # folds x seeds x methods

    again = snakemake(tmp_path, "all", "-n", "--configfile", str(config))
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr

    # A new extraction setting reruns extraction, not the dataset generation.
    changed = write_config(tmp_path / "changed.yaml", frame_size=48)
    dry = snakemake(tmp_path, "all", "-n", "--configfile", str(changed))
    assert dry.returncode == 0, dry.stderr[-2000:]
    training = {"train", "train_rate_free"}
    reports = {"collect", "report"}
    assert (
        scheduled(dry)
        == {"extract_features", "partition", "embed_audio", "embed_visual", "all"}
        | training
        | reports
    )

    # A new alpha reruns the partitions and training, not extraction or embeddings.
    dry = snakemake(
        tmp_path,
        "all",
        "-n",
        "--configfile",
        str(write_config(tmp_path / "a.yaml", {"alpha": 2.0})),
    )
    assert scheduled(dry) == {"partition", "all"} | training | reports
    assert len(job_outputs(dry, "partition")) == 3 * 4  # json, stats, heatmap x (2 folds x 2 seeds)

    # A new seed runs only that seed's jobs.
    dry = snakemake(
        tmp_path,
        "all",
        "-n",
        "--configfile",
        str(write_config(tmp_path / "s.yaml", seeds=(0, 1, 2))),
    )
    assert scheduled(dry) == {"partition", "all"} | training | reports
    assert {Path(out).name for out in job_outputs(dry, "partition") if out.endswith(".json")} == {
        f"fold{fold}_seed2.json" for fold in (1, 2)
    }
    assert all(
        "seed2" in out for out in job_outputs(dry, "train") + job_outputs(dry, "train_rate_free")
    )

    # A ModalityMirror knob reruns only ModalityMirror's runs.
    mm = write_config(tmp_path / "m.yaml", methods={"modalitymirror": {"temperature": 4.0}})
    dry = snakemake(tmp_path, "all", "-n", "--configfile", str(mm))
    assert scheduled(dry) == {"train", "collect", "report", "all"}
    outputs = job_outputs(dry, "train")
    assert outputs and all("/modalitymirror/" in out for out in outputs)
    assert (
        len([o for o in outputs if o.endswith("metrics.json")]) == 4
    )  # 2 folds x 2 seeds at r = 0.5


def test_bad_config_is_rejected_before_any_job(tmp_path: Path):
    bad = write_config(tmp_path / "bad.yaml", frame_size=2)
    run = snakemake(tmp_path, "all", "--configfile", str(bad))
    assert run.returncode != 0
    assert "datasets.tiny.extract.frame_size" in run.stderr + run.stdout
    assert not (tmp_path / "data").exists()


def test_ucf101_is_downloaded_by_the_workflow(tmp_path: Path, tiny_raw: Path):
    import hashlib

    from .test_download import Server, ucf101_archives

    split_bytes, video_bytes = ucf101_archives(tiny_raw, tmp_path)
    server = Server({"/splits.zip": split_bytes, "/videos.zip": video_bytes})
    try:

        def remote(name, body):
            return {
                "name": name,
                "urls": [server.url(f"/{name}")],
                "size": len(body),
                "sha256": hashlib.sha256(body).hexdigest(),
            }

        config = {
            "datasets": {
                "ucf101": {
                    "extract": TINY_EXTRACT,
                    "download": {
                        "splits": remote("splits.zip", split_bytes),
                        "videos": remote("videos.zip", video_bytes),
                    },
                }
            }
        }
        path = tmp_path / "ucf.yaml"
        path.write_text(yaml.safe_dump(config))
        target = "data/features/ucf101/manifest.tsv"
        run = snakemake(
            tmp_path, target, "--configfile", str(REPO / "config/ucf101.yaml"), str(path)
        )
    finally:
        server.close()
    assert run.returncode == 0, run.stderr[-3000:]
    assert "listed clips" in (tmp_path / "results/logs/ucf101/download.log").read_text()
    rows = read_manifest(tmp_path / target)
    assert sum(r.status == "ok" for r in rows) > 50
    assert (
        tmp_path / "data/downloads/ucf101/videos.zip"
    ).exists()  # kept: a rerun needs no new download


def test_ucf101_from_an_existing_copy(tmp_path: Path, tiny_raw: Path):
    config = {
        "run_datasets": ["ucf101"],
        "datasets": {"ucf101": {"source_dir": str(tiny_raw), "extract": TINY_EXTRACT}},
        "partition": {"n_clients": 5},
        "experiment": {"seeds": [0]},
    }
    path = tmp_path / "ucf.yaml"
    path.write_text(yaml.safe_dump(config))
    target = "data/features/ucf101/manifest.tsv"
    run = snakemake(tmp_path, target, "--configfile", str(REPO / "config/ucf101.yaml"), str(path))
    assert run.returncode == 0, run.stderr[-3000:]
    rows = read_manifest(tmp_path / "data/features/ucf101/manifest.tsv")
    assert sum(r.status == "ok" for r in rows) > 50


def test_default_dry_run_lists_the_stages_and_lint_is_clean(tmp_path: Path):
    dry = snakemake(tmp_path, "-n", "all")
    assert dry.returncode == 0, dry.stderr[-2000:]
    assert {"generate_synthetic", "extract_features", "partition", "embed_audio", "train", "train_rate_free",
            "collect", "report", "all"} <= scheduled(dry)  # fmt: skip
    lint = snakemake(tmp_path, "--lint")
    assert lint.returncode == 0 and "Lints for" not in lint.stdout + lint.stderr, lint.stdout[
        -3000:
    ]
