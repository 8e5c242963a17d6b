"""ActivityNet: annotations from a local server, a fake yt-dlp (some videos gone), source_dir,
and the UCF101-layout view that extraction reads."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from avfl.data import activitynet, extract, ucf101
from avfl.data.activitynet import acquire_activitynet, class_folder

from .test_download import Server

FAKE_YTDLP = """
import shutil, sys
args = sys.argv[1:]
url, template = args[-1], args[args.index("-o") + 1]
vid = url.split("v=")[1]
if vid.startswith("gone"):
    print("ERROR: [youtube] " + vid + ": Video unavailable", file=sys.stderr)
    sys.exit(1)
assert "--continue" in args and "--retries" in args and "--limit-rate" in args
shutil.copyfile(sys.argv[0].replace("fake_ytdlp.py", "sample.mp4"), template.replace("%(ext)s", "mp4"))
"""


def annotation_file(tiny_raw: Path) -> tuple[dict, list[Path]]:
    """An ActivityNet-format annotation file over 3 labels, with some videos gone and a testing video."""
    samples = sorted(
        p for p in (tiny_raw / ucf101.VIDEO_DIR).rglob("*.mp4") if p.stat().st_size > 0
    )[:1]
    database = {}
    labels = ["Playing congas", "Playing drums", "Tug of war"]
    for i in range(12):
        vid = f"gone{i:07d}" if i % 5 == 4 else f"vid{i:08d}"
        database[vid] = {
            "subset": "training" if i % 3 else "validation",
            "url": f"https://www.youtube.com/watch?v={vid}",
            "duration": 10.0,
            "annotations": [{"segment": [1.0, 5.0], "label": labels[i % 3]}],
        }
    database["testvid0000"] = {
        "subset": "testing",
        "url": "https://www.youtube.com/watch?v=testvid0000",
        "annotations": [],
    }
    return {"version": "VERSION 1.3", "taxonomy": [], "database": database}, samples


@pytest.fixture()
def served(tmp_path, tiny_raw):
    data, samples = annotation_file(tiny_raw)
    body = json.dumps(data).encode()
    server = Server({"/activity_net.v1-3.min.json": body})
    tool = tmp_path / "tool"
    tool.mkdir()
    (tool / "fake_ytdlp.py").write_text(FAKE_YTDLP)
    (tool / "sample.mp4").write_bytes(samples[0].read_bytes())
    settings = {
        "annotations": {
            "name": "activity_net.v1-3.min.json",
            "urls": [server.url("/activity_net.v1-3.min.json")],
        },
        "downloader": [sys.executable, str(tool / "fake_ytdlp.py")],
        "retries": 2,
        "rate_limit": "1M",
        "source_dir": None,
    }
    yield settings, data
    server.close()


def test_class_folder_names():
    assert class_folder("Playing congas") == "PlayingCongas"
    assert class_folder("Rock-paper-scissors") == "RockPaperScissors"


def test_download_records_failures_and_builds_the_layout(tmp_path, served):
    settings, data = served
    n_classes, n_clips, missing = acquire_activitynet(
        tmp_path / "downloads", tmp_path / "raw", settings, log=lambda m: None
    )
    gone = sorted(v for v in data["database"] if v.startswith("gone"))
    assert (n_classes, n_clips, missing) == (3, 12 - len(gone), len(gone))
    failed = (tmp_path / "downloads/failed.tsv").read_text().splitlines()[1:]
    assert [line.split("\t")[0] for line in failed] == gone and "Video unavailable" in failed[0]
    classes, clips = ucf101.read_layout(tmp_path / "raw")
    assert classes == ["PlayingCongas", "PlayingDrums", "TugOfWar"]
    assert {c.folds[1] for c in clips} == {"train", "test"} and all(c.group == 0 for c in clips)
    ids = (tmp_path / "raw/clip_ids.tsv").read_text()
    assert "testvid0000" not in ids and "vid00000001\ttraining\tPlaying drums" in ids
    # Rerun: nothing is downloaded again (the fake would be called only for the gone ones).
    again = acquire_activitynet(
        tmp_path / "downloads", tmp_path / "raw", settings, log=lambda m: None
    )
    assert again == (n_classes, n_clips, missing)
    # Extraction reads the layout like any other dataset.
    rows = extract.extract_dataset(tmp_path / "raw", tmp_path / "features", {
        "frame_size": 32, "audio_seconds": 5.0, "sample_rate": 16000, "num_mel_bins": 64, "target_frames": 128,
        "min_clips_per_class": 1}, threads=1, progress=False)  # fmt: skip
    assert sum(r.status == "ok" for r in rows) == n_clips


def test_source_dir_is_used_instead_of_downloading(tmp_path, served, tiny_raw):
    settings, data = served
    copy = tmp_path / "official"
    copy.mkdir()
    sample = next(p for p in (tiny_raw / ucf101.VIDEO_DIR).rglob("*.mp4") if p.stat().st_size > 0)
    for vid in list(data["database"])[:5]:
        (copy / f"v_{vid}.mp4").write_bytes(sample.read_bytes())
    _n_classes, n_clips, missing = acquire_activitynet(
        tmp_path / "downloads",
        tmp_path / "raw",
        {**settings, "downloader": ["false"], "source_dir": str(copy)},
        log=lambda m: None,
    )
    assert n_clips == 5 and missing == 7
    assert not (tmp_path / "downloads/videos").exists()


def test_missing_downloader_says_what_to_install(tmp_path, served):
    settings, _ = served
    with pytest.raises(RuntimeError, match="yt-dlp"):
        acquire_activitynet(
            tmp_path / "d",
            tmp_path / "raw",
            {**settings, "downloader": ["no-such-yt-dlp"]},
            log=lambda m: None,
        )


def test_not_an_annotation_file(tmp_path):
    bad = tmp_path / "a.json"
    bad.write_text("{}")
    with pytest.raises(ValueError, match="not an ActivityNet annotation file"):
        activitynet.read_annotations(bad)


@pytest.mark.slow
def test_workflow_acquires_extracts_and_partitions_activitynet(tmp_path, served):
    import yaml

    from .conftest import REPO, TINY_EXTRACT
    from .helpers import snakemake

    settings, _ = served
    download = {k: v for k, v in settings.items() if k != "source_dir"}
    config = {
        "datasets": {"activitynet": {"extract": TINY_EXTRACT, "download": download}},
        "partition": {"n_clients": 2, "min_client_size": 1, "dev_fraction": 0.2},
        "experiment": {"seeds": [0]},
    }
    path = tmp_path / "anet.yaml"
    path.write_text(yaml.safe_dump(config))
    target = "results/activitynet/partition/default/fold1_seed0.json"
    run = snakemake(
        tmp_path, target, "--configfile", str(REPO / "config/activitynet.yaml"), str(path)
    )
    assert run.returncode == 0, run.stderr[-3000:]
    record = json.loads((tmp_path / target).read_text())
    assert len(record["classes"]) == 3 and record["test"] and record["dev"]
    assert "failures in" in (tmp_path / "results/logs/activitynet/download.log").read_text()
