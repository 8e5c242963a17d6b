"""The Snakemake workflow end to end on tiny configs, in temporary working directories."""

from __future__ import annotations

import csv
import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from avfl.data.manifest import read_manifest

from .conftest import REPO, TINY_EXTRACT, VENV_BIN
from .helpers import BUILTIN_METHODS, job_outputs, scheduled, snakemake, tiny_workflow_config

pytestmark = pytest.mark.slow

METHODS = ("unifl", "multifl", "harmony", "modalitymirror")


def test_pipeline_runs_and_reruns_only_what_changed(tmp_path: Path):
    config = tiny_workflow_config(tmp_path / "tiny.yaml")
    run = snakemake(tmp_path, "all", "--configfile", str(config))
    assert run.returncode == 0, run.stderr[-3000:]
    rows = read_manifest(tmp_path / "data/features/tiny/manifest.tsv")
    assert sum(r.status == "ok" for r in rows) > 50 and sum(r.status == "failed" for r in rows) == 2
    assert "usable" in (tmp_path / "results/logs/tiny/extract.log").read_text()
    for fold in (1, 2):
        for seed in (0, 1):
            stem = tmp_path / f"results/tiny/partition/default/fold{fold}_seed{seed}"
            record = json.loads(stem.with_suffix(".json").read_text())
            assert len(record["clients"]) == 8 and record["fold"] == fold
            assert Path(f"{stem}_heatmap.png").stat().st_size > 0
            runs = tmp_path / f"results/tiny/runs/default/fold{fold}"
            for method in ("unifl", "multifl", "modalitymirror"):
                metrics = json.loads((runs / f"{method}/r0.5/seed{seed}/metrics.json").read_text())
                assert (metrics["method"], metrics["rate"], metrics["fold"]) == (method, 0.5, fold)
                assert metrics["health"]["reference"]  # compared with the centralised reference
            for rate_free in ("harmony", "centralised"):
                assert (
                    json.loads((runs / f"{rate_free}/seed{seed}/metrics.json").read_text())["rate"]
                    is None
                )
    table = subprocess.run([f"{VENV_BIN}/python", "-m", "avfl", "table", "--runs", str(tmp_path / "results/tiny/runs")],
                           capture_output=True, text=True, check=True)  # fmt: skip
    assert (
        "ModalityMirror" in table.stdout
        and "Centralised (audio)" in table.stdout
        and "n=4" in table.stdout
    )

    # Reports under the experiment's name: Table 1 with the reference rows, figures, runs.csv.
    report = tmp_path / "results/report/tiny"
    csv_rows = (report / "table1.csv").read_text().splitlines()
    assert csv_rows[0].startswith("dataset,metric,method,model,role,rate,mean,std")
    assert len(csv_rows) == 1 + 4 + 5  # four methods and five reference rows at r = 0.5
    assert "Centralised (audio-visual)" in (report / "table1.md").read_text()
    assert "\\toprule" in (report / "table1.tex").read_text()
    assert "Figure 3 lines:" in (tmp_path / "results/logs/report/tiny/report.log").read_text()
    files = [
        report / f"{stem}.{ext}"
        for stem in ("fig2_label_f1", "fig3_missing_rate")
        for ext in ("pdf", "svg", "png")
    ]
    files += [report / f"table1.{ext}" for ext in ("csv", "md", "tex")] + [report / "runs.csv"]
    files += [report / f"claims.{ext}" for ext in ("csv", "md", "tex")]
    # The paper's claims beside Table 1: every claim at the one Table 1 rate has its paired runs.
    claims = list(csv.DictReader((report / "claims.csv").open()))
    assert {r["claim"] for r in claims} >= {
        "mm_gt_harmony@0.5",
        "mm_gt_multifl@0.5",
        "mm_gt_unifl@0.5",
    }
    assert all(int(r["n"]) == 4 for r in claims if r["claim"].startswith("mm_gt_"))
    assert "ModalityMirror > Harmony" in (report / "claims.md").read_text()
    before = {f: f.read_bytes() for f in files}
    rerun = snakemake(
        tmp_path, "all", "--forcerun", "report", "collect", "--configfile", str(config)
    )
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert {f: f.read_bytes() for f in before} == before
    html = snakemake(
        tmp_path, "--report", str(tmp_path / "report.html"), "--configfile", str(config)
    )
    assert html.returncode == 0 and (tmp_path / "report.html").stat().st_size > 10_000
    page = " ".join((tmp_path / "report.html").read_text().replace("\\n", " ").split())
    # The captions say what ran, not what the config left unset.
    assert "methods unifl, multifl, harmony, modalitymirror" in page and "methods None" not in page
    assert (
        "video-missing rate (50 %)" in page
        and "16 runs of UniFL, MultiFL, Harmony, ModalityMirror at video-missing rates 50 %" in page
    )
    runs_csv = (report / "runs.csv").read_text().splitlines()
    # folds x seeds x (UniFL, MultiFL, ModalityMirror: audio + av; Harmony: audio; centralised: 5 models)
    assert len(runs_csv) == 1 + 2 * 2 * (3 * 2 + 1 + 5)

    again = snakemake(tmp_path, "all", "-n", "--configfile", str(config))
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr

    # A new extraction setting reruns extraction and what follows, not the dataset generation.
    dry = snakemake(
        tmp_path,
        "all",
        "-n",
        "--configfile",
        str(tiny_workflow_config(tmp_path / "c.yaml", frame_size=48)),
    )
    assert dry.returncode == 0, dry.stderr[-2000:]
    assert scheduled(dry) == {
        "extract_features",
        "partition",
        "embed_audio",
        "embed_visual",
        "train",
        "collect",
        "report",
        "all",
    }

    # A new alpha reruns the partitions and training, not extraction or embeddings.
    dry = snakemake(
        tmp_path,
        "all",
        "-n",
        "--configfile",
        str(tiny_workflow_config(tmp_path / "a.yaml", {"alpha": 2.0})),
    )
    assert scheduled(dry) == {"partition", "train", "collect", "report", "all"}
    assert len(job_outputs(dry, "partition")) == 3 * 4  # json, stats, heatmap x (2 folds x 2 seeds)

    # A new seed runs only that seed's jobs.
    dry = snakemake(
        tmp_path,
        "all",
        "-n",
        "--configfile",
        str(tiny_workflow_config(tmp_path / "s.yaml", seeds=(0, 1, 2))),
    )
    assert scheduled(dry) == {"partition", "train", "collect", "report", "all"}
    assert {Path(o).name for o in job_outputs(dry, "partition") if o.endswith(".json")} == {
        "fold1_seed2.json",
        "fold2_seed2.json",
    }
    assert all("seed2" in out for out in job_outputs(dry, "train"))

    # A ModalityMirror setting reruns only ModalityMirror's runs.
    mm = tiny_workflow_config(tmp_path / "m.yaml", methods={"modalitymirror": {"temperature": 4.0}})
    dry = snakemake(tmp_path, "all", "-n", "--configfile", str(mm))
    assert scheduled(dry) == {"train", "collect", "report", "all"}
    outputs = [o for o in job_outputs(dry, "train") if o.endswith("metrics.json")]
    assert len(outputs) == 4 and all(
        "/modalitymirror/" in o for o in outputs
    )  # 2 folds x 2 seeds at r = 0.5

    # An ablation variant on top trains only what it changes, under its own name, and writes
    # the ablation table beside the experiment's Table 1.
    ablation = tiny_workflow_config(tmp_path / "v.yaml", experiment={
        "name": "ablation", "variants": {"hot": {"methods.modalitymirror.temperature": 4.0},
                                         "same": {"methods.modalitymirror.temperature": 2.0}}})  # fmt: skip
    dry = snakemake(tmp_path, "all", "-n", "--configfile", str(ablation))
    assert scheduled(dry) == {"train", "collect", "report", "all"}
    outputs = [o for o in job_outputs(dry, "train") if o.endswith("metrics.json")]
    assert len(outputs) == 4 and all("/runs/hot/" in o and "/modalitymirror/" in o for o in outputs)
    run = snakemake(tmp_path, "all", "--configfile", str(ablation))
    assert run.returncode == 0, run.stderr[-3000:]
    table = (tmp_path / "results/report/ablation/ablations.md").read_text()
    assert "| hot | ModalityMirror |" in table and "| same |" not in table
    assert (tmp_path / "results/report/ablation/fig3_variants.png").stat().st_size > 1000
    # Running another experiment invalidated nothing of the first one.
    after = snakemake(tmp_path, "all", "-n", "--configfile", str(config))
    assert after.returncode == 0 and "Nothing to be done" in after.stdout + after.stderr

    # Other datasets under the same experiment name (an overlay that points at a copy through
    # source_dir and keeps the name) would replace its report: refused before any job.
    other = yaml.safe_load(config.read_text())
    other["run_datasets"] = ["mine"]
    other["datasets"]["mine"] = {"source": "ucf101", "source_dir": str(tmp_path / "data/raw/tiny"),
                                 "folds": [1, 2], "extract": other["datasets"]["tiny"]["extract"]}  # fmt: skip
    (tmp_path / "o.yaml").write_text(yaml.safe_dump(other))
    refused = snakemake(tmp_path, "all", "-n", "--configfile", str(tmp_path / "o.yaml"))
    assert refused.returncode != 0
    assert "holds the report of experiment 'tiny' on tiny" in refused.stderr + refused.stdout
    assert "experiment.name" in refused.stderr + refused.stdout
    other["experiment"]["name"] = "mine"
    (tmp_path / "o.yaml").write_text(yaml.safe_dump(other))
    own = snakemake(tmp_path, "all", "-n", "--configfile", str(tmp_path / "o.yaml"))
    assert own.returncode == 0 and "results/report/mine/table1.csv" in own.stdout
    assert (report / "table1.csv").read_bytes() == before[report / "table1.csv"]


def test_bad_config_is_rejected_before_any_job(tmp_path: Path):
    bad = tiny_workflow_config(tmp_path / "bad.yaml", frame_size=2)
    run = snakemake(tmp_path, "all", "--configfile", str(bad))
    assert run.returncode != 0
    assert "datasets.tiny.extract.frame_size" in run.stderr + run.stdout
    assert not (tmp_path / "data").exists()


def test_parsing_the_workflow_needs_no_torch(tmp_path: Path):
    """`snakemake -n all` where importing torch fails: the scheduler needs no ML stack."""
    fake = tmp_path / "fake"
    (fake / "torch").mkdir(parents=True)
    (fake / "torch" / "__init__.py").write_text(
        "raise ImportError('torch is not installed in this environment')\n"
    )
    env = {"PYTHONPATH": str(fake)}
    dry = snakemake(tmp_path, "-n", "all", env=env)
    assert dry.returncode == 0, dry.stderr[-2000:]
    assert {
        "generate_synthetic",
        "extract_features",
        "partition",
        "embed_audio",
        "train",
        "collect",
        "report",
        "all",
    } <= scheduled(dry)
    probe = subprocess.run(
        [f"{VENV_BIN}/python", "-c", "import torch"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
    )
    assert probe.returncode != 0  # the fake really blocks torch


def test_every_method_learns_a_dataset_whose_audio_hides_in_silence(tmp_path: Path):
    """Clean tones in long digital silence, read through source_dir: every method's audio
    model reaches 80 % of the centralised audio reference (it sat at chance before inputs
    were standardised); M3Fed's clients' own models do."""
    from .media import write_silent_tone_dataset

    source = write_silent_tone_dataset(tmp_path / "mine")
    config = tiny_workflow_config(
        tmp_path / "silence.yaml", seeds=(0,), partition={"n_clients": 8, "alpha": 1.0},
        experiment={"name": "silence", "methods": None, "table1_rates": [0.5], "figure2_rate": 0.5},
        dataset={"source": "ucf101", "source_dir": str(source), "folds": [1], "extract": TINY_EXTRACT},
    )  # fmt: skip
    data = yaml.safe_load(config.read_text())
    data["run_datasets"] = ["mine"]
    data["datasets"] = {"mine": data["datasets"]["tiny"]}
    data["federated"].update(rounds=30, eval_every=5)
    config.write_text(yaml.safe_dump(data))
    run = snakemake(tmp_path, "all", "--configfile", str(config))
    assert run.returncode == 0, run.stderr[-3000:]
    records = [
        json.loads(p.read_text()) for p in (tmp_path / "results/mine/runs").rglob("metrics.json")
    ]
    (reference,) = [r for r in records if r["method"] == "centralised"]
    assert reference["test_by_model"]["probe_audio"]["top1"] > 0.9
    from avfl.methods import get_method

    # M3Fed's result is its clients' own models (its Table 1 cell is a server-built consensus
    # model, MethodSpec.table1_note): their mean score on their own label mixes.
    methods = {
        r["method"]: r["personalised"]["k0"]["mean"]
        if get_method(r["method"]).table1_note
        else r["test"]["top1"]
        for r in records
        if r["role"] == "method"
    }
    assert set(methods) == set(BUILTIN_METHODS)
    for method, top1 in methods.items():
        assert top1 >= 0.8 * reference["test"]["top1"], (method, top1, reference["test"]["top1"])


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

        config = {"datasets": {"ucf101": {"extract": TINY_EXTRACT, "download": {
            "splits": remote("splits.zip", split_bytes), "videos": remote("videos.zip", video_bytes)}}}}  # fmt: skip
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
    assert sum(r.status == "ok" for r in read_manifest(tmp_path / target)) > 50
    assert (
        tmp_path / "data/downloads/ucf101/videos.zip"
    ).exists()  # kept: a rerun needs no new download


def test_ucf101_from_an_existing_copy(tmp_path: Path, tiny_raw: Path):
    config = {"run_datasets": ["ucf101"], "datasets": {"ucf101": {"source_dir": str(tiny_raw), "extract": TINY_EXTRACT}},
              "partition": {"n_clients": 5}, "experiment": {"seeds": [0]}}  # fmt: skip
    path = tmp_path / "ucf.yaml"
    path.write_text(yaml.safe_dump(config))
    target = "data/features/ucf101/manifest.tsv"
    run = snakemake(tmp_path, target, "--configfile", str(REPO / "config/ucf101.yaml"), str(path))
    assert run.returncode == 0, run.stderr[-3000:]
    assert sum(r.status == "ok" for r in read_manifest(tmp_path / target)) > 50


@pytest.mark.parametrize(
    "configfile",
    [
        "",
        *sorted(
            str(p.relative_to(REPO))
            for p in (REPO / "config").glob("*.yaml")
            if p.name != "config.yaml"
        ),
    ],
)
def test_dry_runs_plan_every_shipped_config_and_lint_is_clean(tmp_path: Path, configfile: str):
    from avfl.config import config_layers

    layers = config_layers(REPO / configfile) if configfile else []
    args = ["--configfile", *map(str, layers)] if configfile else []
    dry = snakemake(tmp_path, "-n", "all", *args)
    assert dry.returncode == 0, dry.stderr[-2000:]
    assert {"partition", "train", "collect", "report", "all"} <= scheduled(dry)
    lint = snakemake(tmp_path, "--lint", *args)
    assert lint.returncode == 0 and "Lints for" not in lint.stdout + lint.stderr, lint.stdout[
        -3000:
    ]


def test_cremad_fixture_runs_end_to_end(tmp_path: Path):
    """CREMA-D in its official layout (FLV video, 16 kHz WAV), through the whole DAG."""
    from .cremad_fixture import write_cremad

    source = tmp_path / "CREMA-D"
    write_cremad(source)
    config = tmp_path / "cremad.yaml"
    config.write_text(yaml.safe_dump({
        "datasets": {"cremad": {"source_dir": str(source), "folds": [1], "extract": {**TINY_EXTRACT, "frame_size": 32}}},
        "model": {"audio": {"backbone": "fbank_stats"}, "visual": {"backbone": "color_stats"}, "hidden_dim": 32},
        "partition": {"n_clients": 6, "alpha": 3.0},
        "federated": {"rounds": 4, "clients_per_round": 3, "eval_every": 2, "device": "cpu"},
        "experiment": {"seeds": [0], "methods": ["multifl", "harmony", "modalitymirror", "bmsfed", "dimml"],
                       "ablation_methods": ["cmrf"], "table1_rates": [0.5], "figure3_rates": [0.5], "figure2_rate": 0.5},
    }))  # fmt: skip
    run = snakemake(tmp_path, "all", "--configfile", str(REPO / "config/cremad.yaml"), str(config))
    assert run.returncode == 0, run.stderr[-3000:]
    rows = read_manifest(tmp_path / "data/features/cremad/manifest.tsv")
    assert {r.class_name for r in rows if r.status == "ok"} == {
        "Anger",
        "Disgust",
        "Fear",
        "Happy",
        "Neutral",
        "Sad",
    }
    table1 = (tmp_path / "results/report/cremad/table1.md").read_text()
    assert "CREMA-D (top1)" in table1 and "DI-MML" in table1 and "CMRF" not in table1
    # The ablation method's table alone (no variants): CMRF beside MultiFL, audio and AV.
    ablations = (tmp_path / "results/report/cremad/ablations.md").read_text()
    assert ablations.startswith("## Methods run as ablations")
    assert (
        "| CREMA-D | CMRF | audio |" in ablations
        and "| CREMA-D | CMRF | audio-visual |" in ablations
    )


def test_the_self_supervised_methods_run_through_the_dag_to_table1_figure3_and_the_claims(
    tmp_path: Path,
):
    """FSSUAVL, FASSL and the random-init probe, opt-in, read the fbank and frames in frozen
    mode, and reach Table 1, Figure 3 and the FSSUAVL > FASSL claim; the other methods' jobs
    are those of the configuration without them."""
    ssl = {"image_size": 16, "pretrain_rounds": 2, "pretrain_local_epochs": 1}
    methods = ["multifl", "fssuavl", "fassl", "ssl_random_probe"]
    config = tiny_workflow_config(
        tmp_path / "ssl.yaml", seeds=(0,), methods={"fssuavl": ssl},
        experiment={"methods": methods, "figure3_rates": [0.5]},
    )  # fmt: skip
    run = snakemake(tmp_path, "all", "--configfile", str(config))
    assert run.returncode == 0, run.stderr[-3000:]
    table1 = (tmp_path / "results/report/tiny/table1.md").read_text()
    for name in ("FSSUAVL", "FASSL", "*Random-init probe (audio)*", "MultiFL"):
        assert f"| {name} |" in table1, table1
    claims = (tmp_path / "results/report/tiny/claims.csv").read_text()
    assert "fssuavl_gt_fassl@0.5" in claims
    record = json.loads(
        (tmp_path / "results/tiny/runs/default/fold1/fssuavl/r0.5/seed0/metrics.json").read_text()
    )
    assert record["embeddings"] is None and set(record["rounds"]) == {"simclr", "probe"}
    assert record["config"]["method"]["image_size"] == 16
    probe = json.loads(
        (
            tmp_path / "results/tiny/runs/default/fold1/ssl_random_probe/seed0/metrics.json"
        ).read_text()
    )
    assert probe["config"]["method"] == record["config"]["method"]  # FSSUAVL's block, shared
    without = tiny_workflow_config(
        tmp_path / "plain.yaml",
        seeds=(0,),
        experiment={"methods": ["multifl"], "figure3_rates": [0.5]},
    )
    dry = snakemake(tmp_path, "-n", "all", "--configfile", str(without))
    assert dry.returncode == 0 and not job_outputs(dry, "train"), dry.stdout[-2000:]
