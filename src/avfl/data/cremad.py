"""CREMA-D (Cao et al., 2014) from its official copy, laid out in UCF101 layout.

The official copy is a git-lfs repository (`git lfs clone` SOURCE_URL): `VideoFlash/*.flv`
(video with audio) and `AudioWAV/*.wav` (16 kHz mono), both named
`<ActorID>_<Sentence>_<Emotion>_<Level>`, e.g. `1001_DFA_ANG_XX`: 91 actors (1001-1091),
12 sentences, 6 emotions, levels LO/MD/HI/XX; 7,442 clips. The label is the acted emotion.

`link_cremad` writes, without copying any media:

- `UCF-101/<Class>/v_<Class>_g<GG>_c<CC>.flv`: link to the FLV (the clip's video);
- `UCF-101/<Class>/v_<Class>_g<GG>_c<CC>.wav`: link to the WAV, a sidecar that extraction
  takes the audio from (CREMA-D practice: audio from the WAV, a frame from the video);
- `ucfTrainTestlist/`: classInd.txt (CLASSES order) and three speaker-independent folds;
- `clip_ids.tsv`: each clip's CREMA-D name, actor, sentence, emotion, level and test fold;
- `skipped.tsv`: each file left out and why (git-lfs pointer, missing counterpart, bad name).

Groups are actors (group = ActorID - 1000), so the dev split is speaker-independent too.
Clip numbers count an actor's clips of one emotion in sentence, then level, order, over
every well-formed name found, so a clip keeps its id when a skipped file is later fixed.

Known faulty clips upstream (1076_MTI_SAD_XX and 1076_MTI_NEU_XX near-empty, 1064_TIE_SAD_XX
without duration, 1064_IEO_DIS_MD a minute long) are linked like the rest: extraction
records the unusable ones in its manifest.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from avfl.data import ucf101
from avfl.errors import UserError

SOURCE_URL = "https://github.com/CheyneyComputerScience/CREMA-D"
VIDEO_FOLDER = "VideoFlash"
AUDIO_FOLDER = "AudioWAV"
VIDEO_SUFFIX = ".flv"
AUDIO_SUFFIX = ".wav"  # the sidecar suffix extraction looks for (extract.SIDECAR_AUDIO_SUFFIX)

EMOTIONS = {  # code -> class folder, in classInd.txt order (fixed, whatever the copy holds)
    "ANG": "Anger",
    "DIS": "Disgust",
    "FEA": "Fear",
    "HAP": "Happy",
    "NEU": "Neutral",
    "SAD": "Sad",
}
CLASSES = tuple(EMOTIONS.values())
SENTENCES = ("IEO", "TIE", "IOM", "IWW", "TAI", "MTI", "IWL", "ITH", "DFA", "ITS", "TSI", "WSI")
LEVELS = ("LO", "MD", "HI", "XX")
FIRST_ACTOR, LAST_ACTOR = 1001, 1091
N_FOLDS = ucf101.N_SPLITS

LFS_POINTER_PREFIX = b"version https://git-lfs.github.com/spec/v1"
LFS_POINTER_MAX_BYTES = 1024  # pointers are ~130 bytes; the media files are far larger
MAX_POINTER_SHARE = 0.5  # above this the copy is a zip download or an un-pulled clone
POINTER_REASON = "git-lfs pointer, not media: run `git lfs pull` in the clone"
MISSING_REASON = "missing: the clip's other file (FLV or WAV) is present"
SKIPPED_FILE = "skipped.tsv"
CLIP_IDS_FILE = "clip_ids.tsv"
_NAME_RE = re.compile(
    r"^(?P<actor>\d{4})_(?P<sentence>[A-Z]{3})_(?P<emotion>[A-Z]{3})_(?P<level>[A-Z]{2})$"
)


class CremaDError(UserError, ValueError):
    """The CREMA-D copy cannot be used; the message names the file or folder and the fix."""


@dataclass(frozen=True)
class Utterance:
    """One CREMA-D clip, as its file name describes it."""

    name: str  # "1001_DFA_ANG_XX"
    actor: int
    sentence: str
    emotion: str
    level: str

    @property
    def class_name(self) -> str:
        return EMOTIONS[self.emotion]

    @property
    def group(self) -> int:
        """The UCF101-layout group: the actor, 1..91."""
        return self.actor - FIRST_ACTOR + 1

    @property
    def test_fold(self) -> int:
        return actor_test_fold(self.actor)


@dataclass(frozen=True)
class LinkSummary:
    """What `link_cremad` laid out and what it left out (one row per file in `skipped_file`)."""

    classes: int
    clips: int
    actors: int
    skipped_clips: int
    pointer_files: int
    reasons: dict[str, int]  # skipped files per reason
    skipped_file: Path


def _name_problem(stem: str) -> str | None:
    match = _NAME_RE.match(stem)
    if not match:
        return "is not <ActorID>_<Sentence>_<Emotion>_<Level>"
    if not FIRST_ACTOR <= int(match["actor"]) <= LAST_ACTOR:
        return f"has actor {match['actor']}, outside {FIRST_ACTOR}-{LAST_ACTOR}"
    for field, allowed in (("sentence", SENTENCES), ("emotion", EMOTIONS), ("level", LEVELS)):
        if match[field] not in allowed:
            return f"has {field} {match[field]}, not one of {', '.join(allowed)}"
    return None


def parse_name(name: str) -> Utterance:
    """`1001_DFA_ANG_XX[.ext]` -> its fields; CremaDError naming the file if it is not one."""
    stem = Path(name).name.split(".")[0]
    problem = _name_problem(stem)
    if problem:
        raise CremaDError(f"{name}: CREMA-D file name {problem} (e.g. 1001_DFA_ANG_XX)")
    actor, sentence, emotion, level = stem.split("_")
    return Utterance(stem, int(actor), sentence, emotion, level)


def actor_test_fold(actor: int) -> int:
    """Fold (1..3) whose test set holds `actor`: actors dealt round-robin by ActorID.

    Round-robin rather than contiguous thirds so that any drift along the ID order
    (recording sessions) is spread over the folds; keyed on the ID, not on the actors
    present, so a partial copy keeps every actor in the same fold.
    """
    return (actor - FIRST_ACTOR) % N_FOLDS + 1


def is_lfs_pointer(path: Path) -> bool:
    """A git-lfs pointer file (a zip download or an un-pulled clone) instead of the media."""
    try:
        if path.stat().st_size > LFS_POINTER_MAX_BYTES:
            return False
        with open(path, "rb") as handle:
            return handle.read(len(LFS_POINTER_PREFIX)) == LFS_POINTER_PREFIX
    except OSError:
        return False


def check_source(source: Path) -> None:
    """Fail in one line unless `source` holds the official copy's two media folders."""
    missing = [f"{part}/" for part in (VIDEO_FOLDER, AUDIO_FOLDER) if not (source / part).is_dir()]
    if missing:
        raise CremaDError(
            f"{source}: source_dir must hold {VIDEO_FOLDER}/ and {AUDIO_FOLDER}/ as the official "
            f"copy does (missing: {', '.join(missing)}); get it with `git lfs clone {SOURCE_URL}`"
        )


def _media_files(folder: Path, suffix: str) -> dict[str, Path]:
    """{stem: path} of the folder's files ending in `suffix` (any case), hidden files aside."""
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() == suffix and not path.name.startswith("."):
            found.setdefault(path.stem, path)
    return found


def _number_clips(utterances: Iterable[Utterance]) -> dict[str, int]:
    """Clip number (1-based) within (emotion, actor): sentence order, then level order."""
    by_key: dict[tuple[str, int], list[Utterance]] = defaultdict(list)
    for u in utterances:
        by_key[(u.emotion, u.actor)].append(u)
    numbers: dict[str, int] = {}
    for items in by_key.values():
        items.sort(key=lambda u: (SENTENCES.index(u.sentence), LEVELS.index(u.level)))
        numbers.update({u.name: i for i, u in enumerate(items, start=1)})
    return numbers


def _rel(path: Path) -> str:
    return f"{path.parent.name}/{path.name}"


def build_layout(source: Path, out: Path) -> LinkSummary:
    """Write the UCF101-layout view of the CREMA-D copy `source` into the new folder `out`."""
    videos = _media_files(source / VIDEO_FOLDER, VIDEO_SUFFIX)
    audios = _media_files(source / AUDIO_FOLDER, AUDIO_SUFFIX)
    if not videos:
        raise CremaDError(
            f"{source / VIDEO_FOLDER}: no *{VIDEO_SUFFIX} files; get the copy with `git lfs clone {SOURCE_URL}`"
        )
    files = [*videos.values(), *audios.values()]
    pointers = {p for p in files if is_lfs_pointer(p)}
    if len(pointers) > MAX_POINTER_SHARE * len(files):
        raise CremaDError(
            f"{source}: {len(pointers)} of {len(files)} media files are git-lfs pointers, not media "
            f"(a zip download, or a clone without git-lfs): run `git lfs install && git lfs pull` in {source}"
        )
    skipped: list[tuple[str, str]] = []
    utterances: list[Utterance] = []
    for stem in sorted(videos.keys() | audios.keys()):
        problem = _name_problem(stem)
        if problem is None:
            utterances.append(parse_name(stem))
            continue
        found = [p for p in (videos.get(stem), audios.get(stem)) if p is not None]
        skipped += [(_rel(p), f"CREMA-D file name {problem}") for p in found]
    numbers = _number_clips(utterances)
    usable: list[tuple[Utterance, Path, Path]] = []
    for u in utterances:
        video, wav = videos.get(u.name), audios.get(u.name)
        reasons = [
            (f"{folder}/{u.name}{suffix}", MISSING_REASON)
            for path, folder, suffix in (
                (video, VIDEO_FOLDER, VIDEO_SUFFIX),
                (wav, AUDIO_FOLDER, AUDIO_SUFFIX),
            )
            if path is None
        ]
        reasons += [(_rel(p), POINTER_REASON) for p in (video, wav) if p in pointers]
        skipped += reasons
        if not reasons:
            usable.append((u, video, wav))
    reasons = dict(sorted(Counter(reason for _, reason in skipped).items()))
    if not usable:
        raise CremaDError(
            f"{source}: no clip has both its FLV and its WAV as media (files skipped: {reasons})"
        )
    _write_lists(out, usable, numbers)
    _write_skipped(out / SKIPPED_FILE, skipped)
    return LinkSummary(
        classes=len({u.emotion for u, _, _ in usable}),
        clips=len(usable),
        actors=len({u.actor for u, _, _ in usable}),
        skipped_clips=len(utterances) - len(usable),
        pointer_files=len(pointers),
        reasons=reasons,
        skipped_file=out / SKIPPED_FILE,
    )


def _write_lists(
    out: Path, usable: list[tuple[Utterance, Path, Path]], numbers: dict[str, int]
) -> None:
    """Links (FLV + sidecar WAV), split lists (test = the fold's actors) and clip_ids.tsv."""
    index = {name: i for i, name in enumerate(CLASSES, start=1)}
    split_dir = out / ucf101.SPLIT_DIR
    split_dir.mkdir(parents=True)
    (split_dir / "classInd.txt").write_text("".join(f"{i} {c}\n" for c, i in index.items()))
    lists: dict[str, list[str]] = defaultdict(list)
    ids = ["clip_id\tname\tactor\tsentence\temotion\tlevel\ttest_fold\n"]
    for u, video, wav in usable:
        name = ucf101.clip_file_name(u.class_name, u.group, numbers[u.name], VIDEO_SUFFIX[1:])
        link = out / ucf101.VIDEO_DIR / u.class_name / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(video)
        link.with_suffix(AUDIO_SUFFIX).symlink_to(wav)
        rel = f"{u.class_name}/{name}"
        for fold in range(1, N_FOLDS + 1):
            if fold == u.test_fold:
                lists[f"testlist0{fold}.txt"].append(f"{rel}\n")
            else:
                lists[f"trainlist0{fold}.txt"].append(f"{rel} {index[u.class_name]}\n")
        fields = (link.stem, u.name, u.actor, u.sentence, u.emotion, u.level, u.test_fold)
        ids.append("\t".join(map(str, fields)) + "\n")
    for fold in range(1, N_FOLDS + 1):
        for kind in ("train", "test"):
            name = f"{kind}list0{fold}.txt"
            (split_dir / name).write_text("".join(lists[name]))
    (out / CLIP_IDS_FILE).write_text("".join(ids))


def _write_skipped(path: Path, skipped: list[tuple[str, str]]) -> None:
    with open(path, "w") as handle:
        handle.write("file\treason\n")
        handle.writelines(f"{name}\t{reason}\n" for name, reason in sorted(skipped))


def link_cremad(
    source_dir: str | Path | None, out_dir: str | Path, log: Callable[[str], None] = print
) -> LinkSummary:
    """Validate the CREMA-D copy `source_dir` and lay it out under `out_dir` (staged, then renamed)."""
    if not source_dir:
        raise CremaDError(
            f"CREMA-D is not downloaded by the pipeline: `git lfs clone {SOURCE_URL}` and set source_dir to the clone"
        )
    source = Path(source_dir).expanduser().resolve()
    check_source(source)
    out = Path(out_dir)
    staging = out.with_name(out.name + ".staging")
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    try:
        summary = build_layout(source, staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if out.exists():
        shutil.rmtree(out)
    os.replace(staging, out)
    summary = dataclasses.replace(summary, skipped_file=out / SKIPPED_FILE)
    log(
        f"CREMA-D in {out}: {summary.classes} classes, {summary.clips} clips, {summary.actors} actors; "
        f"{summary.skipped_clips} clips skipped (files and reasons in {summary.skipped_file})"
    )
    for reason, n in summary.reasons.items():
        log(f"  skipped: {reason} x{n}")
    return summary
