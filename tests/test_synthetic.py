"""The embedded dataset: UCF101 layout, official group splits, determinism, the paper's situation."""

import hashlib
from collections import Counter
from pathlib import Path

import av

from avfl.data import synthetic, ucf101

from .conftest import TINY_SYNTHETIC


def _tree_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_layout_matches_ucf101(tiny_raw: Path):
    assert sorted(p.name for p in tiny_raw.iterdir()) == ["UCF-101", "ucfTrainTestlist"]
    lists = sorted(p.name for p in (tiny_raw / "ucfTrainTestlist").iterdir())
    assert lists == ["classInd.txt"] + [f"testlist0{k}.txt" for k in (1, 2, 3)] + [
        f"trainlist0{k}.txt" for k in (1, 2, 3)
    ]
    class_lines = (tiny_raw / "ucfTrainTestlist/classInd.txt").read_text().splitlines()
    classes = [line.split()[1] for line in class_lines]
    assert [int(line.split()[0]) for line in class_lines] == list(range(1, len(classes) + 1))
    assert classes == list(synthetic.CLASS_NAMES[: TINY_SYNTHETIC["n_classes"]])
    for video in (tiny_raw / "UCF-101").rglob("*.*"):
        cls, group, clip = ucf101.parse_clip_name(video.name)
        assert video.parent.name == cls
        assert video.name == f"v_{cls}_g{group:02d}_c{clip:02d}{video.suffix}"
        assert video.suffix in {".mp4", ".avi"}


def test_split_lists_split_by_group(tiny_raw: Path):
    split_dir = tiny_raw / "ucfTrainTestlist"
    index = {
        line.split()[1]: int(line.split()[0])
        for line in (split_dir / "classInd.txt").read_text().splitlines()
    }
    all_videos = {f"{p.parent.name}/{p.name}" for p in (tiny_raw / "UCF-101").rglob("*.*")}
    for k in (1, 2, 3):
        train_lines = (split_dir / f"trainlist0{k}.txt").read_text().splitlines()
        test_lines = (split_dir / f"testlist0{k}.txt").read_text().splitlines()
        train = {line.split()[0] for line in train_lines}
        test = set(test_lines)
        assert train.isdisjoint(test) and train | test == all_videos
        for line in train_lines:  # "<Class>/<file> <index>"
            rel, idx = line.split()
            assert index[rel.split("/")[0]] == int(idx)
            assert ucf101.parse_clip_name(rel)[1] not in ucf101.test_groups(k)
        for rel in test_lines:  # "<Class>/<file>", no index
            assert len(rel.split()) == 1
            assert ucf101.parse_clip_name(rel)[1] in range(7 * (k - 1) + 1, 7 * k + 1)


def test_generation_is_deterministic(tmp_path: Path, tiny_raw: Path):
    again = tmp_path / "again"
    synthetic.generate(TINY_SYNTHETIC, again, workers=1, progress=False)
    assert _tree_digest(again) == _tree_digest(tiny_raw)


def test_other_seed_gives_other_data(tmp_path: Path):
    settings = {**TINY_SYNTHETIC, "n_groups": 21, "clips_per_group": [1, 1], "seed": 8}
    specs_a = synthetic.plan_clips(TINY_SYNTHETIC)
    specs_b = synthetic.plan_clips(settings)
    assert [s.duration_s for s in specs_a] != [s.duration_s for s in specs_b]


def _streams(path: Path) -> tuple[list[str], list[str]]:
    with av.open(str(path)) as container:
        return (
            [s.codec_context.name for s in container.streams.video],
            [s.codec_context.name for s in container.streams.audio],
        )


def test_silent_classes_have_no_audio_track_and_others_do(tiny_raw: Path):
    identities = synthetic.class_identities(TINY_SYNTHETIC)
    silent = {i.name for i in identities if i.sound is None}
    assert len(silent) == TINY_SYNTHETIC["n_silent_classes"]
    for video in (tiny_raw / "UCF-101").rglob("*.*"):
        if video.stat().st_size == 0:
            continue
        try:
            vcodecs, acodecs = _streams(video)
        except av.error.InvalidDataError:
            continue  # the truncated clip
        assert vcodecs == (["h264"] if video.suffix == ".mp4" else ["mpeg4"])
        if video.parent.name in silent:
            assert acodecs == []
        else:
            assert acodecs == (["aac"] if video.suffix == ".mp4" else ["mp3float"])


def test_audio_formats_and_lengths_vary():
    specs = synthetic.plan_clips(TINY_SYNTHETIC)
    assert set(Counter(s.sample_rate for s in specs)) == set(TINY_SYNTHETIC["sample_rates"])
    assert set(Counter(s.channels for s in specs)) == {1, 2}
    assert {s.ext for s in specs} == {"mp4", "avi"}
    assert any(s.duration_s < 5.0 for s in specs) and any(s.duration_s > 5.0 for s in specs)
    assert sorted(s.corrupt for s in specs if s.corrupt) == ["empty", "truncated"]


def test_audio_twins_sound_alike_but_look_different():
    identities = synthetic.class_identities(TINY_SYNTHETIC)
    by_sound: dict[int, list[synthetic.ClassIdentity]] = {}
    for ident in identities:
        if ident.sound is not None:
            by_sound.setdefault(ident.sound, []).append(ident)
    twins = [group for group in by_sound.values() if len(group) == 2]
    assert len(twins) == TINY_SYNTHETIC["n_audio_twins"]
    for a, b in twins:
        assert (a.shape, a.rgb) != (b.shape, b.rgb)
        assert sorted([a.pitch, b.pitch]) == [1.0, synthetic.TWIN_PITCH]
    looks = [(i.shape, i.rgb) for i in identities]
    assert len(set(looks)) == len(looks)  # every class looks different


def test_rendered_audio_respects_snr():
    spec = synthetic.plan_clips(TINY_SYNTHETIC)[0]
    ident = synthetic.class_identities(TINY_SYNTHETIC)[spec.class_index]
    loud = synthetic.render_audio(
        synthetic.ClipSpec(**{**spec.__dict__, "snr_db": 40.0}), ident, TINY_SYNTHETIC
    )
    noisy = synthetic.render_audio(
        synthetic.ClipSpec(**{**spec.__dict__, "snr_db": -10.0}), ident, TINY_SYNTHETIC
    )
    assert loud.shape == noisy.shape == (spec.channels, round(spec.duration_s * spec.sample_rate))

    # A tonal signal is far more predictable from its previous sample than white noise.
    def lag1(x):
        x = x[0]
        return float(abs((x[1:] * x[:-1]).mean() / (x * x).mean()))

    assert lag1(loud) > 0.5 > lag1(noisy)
