"""The UCF101 layout: `UCF-101/<Class>/v_<Class>_g<GG>_c<CC>.<ext>` plus `ucfTrainTestlist/`.

Every folder-of-videos dataset (the embedded one included) is read through this module,
so the UCF101 code path is exercised end to end on every run.

Official splits: split k uses groups 7(k-1)+1 .. 7k as test groups, the rest for training.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from avfl.errors import UserError

VIDEO_DIR = "UCF-101"
SPLIT_DIR = "ucfTrainTestlist"
N_SPLITS = 3
GROUPS_PER_SPLIT = 7
_NAME_RE = re.compile(r"^v_(?P<cls>[A-Za-z0-9]+)_g(?P<group>\d+)_c(?P<clip>\d+)\.[A-Za-z0-9]+$")


class LayoutError(UserError, ValueError):
    """The dataset folder does not follow the UCF101 layout; the message names the file."""


@dataclass(frozen=True)
class ClipRef:
    """One listed clip: where it is and which split of which fold it belongs to."""

    rel_path: str  # "<Class>/<file>", as in the split lists
    class_name: str
    class_index: int  # 1-based, as in classInd.txt
    group: int
    clip: int
    folds: dict[int, str] = field(default_factory=dict, hash=False, compare=False)

    @property
    def clip_id(self) -> str:
        return Path(self.rel_path).stem


def clip_file_name(class_name: str, group: int, clip: int, ext: str) -> str:
    return f"v_{class_name}_g{group:02d}_c{clip:02d}.{ext}"


def test_groups(split: int) -> range:
    """Groups held out for testing in official split `split` (1-based)."""
    first = GROUPS_PER_SPLIT * (split - 1) + 1
    return range(first, first + GROUPS_PER_SPLIT)


def parse_clip_name(name: str) -> tuple[str, int, int]:
    """(class, group, clip) from `v_<Class>_g<GG>_c<CC>.<ext>`."""
    match = _NAME_RE.match(Path(name).name)
    if not match:
        raise LayoutError(f"clip name {name!r} does not match v_<Class>_g<GG>_c<CC>.<ext>")
    return match["cls"], int(match["group"]), int(match["clip"])


def write_split_lists(
    split_dir: Path, classes: Sequence[str], entries: Iterable[tuple[str, int, str]]
) -> None:
    """Write classInd.txt, trainlist0k.txt and testlist0k.txt exactly as UCF101 ships them.

    entries: (class name, group, "<Class>/<file>") per clip.
    """
    split_dir.mkdir(parents=True, exist_ok=True)
    index = {name: i + 1 for i, name in enumerate(classes)}
    with open(split_dir / "classInd.txt", "w", newline="\r\n") as fh:
        fh.writelines(f"{i} {name}\n" for name, i in index.items())
    entries = list(entries)
    for split in range(1, N_SPLITS + 1):
        held = test_groups(split)
        with (
            open(split_dir / f"trainlist0{split}.txt", "w", newline="\r\n") as train,
            open(split_dir / f"testlist0{split}.txt", "w", newline="\r\n") as test,
        ):
            for name, group, rel in entries:
                if group in held:
                    test.write(f"{rel}\n")
                else:
                    train.write(f"{rel} {index[name]}\n")


def read_layout(root: str | Path) -> tuple[list[str], list[ClipRef]]:
    """Class names (classInd order) and the listed clips with their fold membership."""
    root = Path(root)
    split_dir = root / SPLIT_DIR
    class_file = split_dir / "classInd.txt"
    if not class_file.is_file():
        raise LayoutError(
            f"{class_file} not found: expected the UCF101 layout "
            f"({VIDEO_DIR}/<Class>/*.avi and {SPLIT_DIR}/classInd.txt, trainlist0k.txt, testlist0k.txt)"
        )
    classes: list[str] = []
    for n, line in enumerate(class_file.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2 or not parts[0].isdigit() or int(parts[0]) != len(classes) + 1:
            raise LayoutError(
                f"{class_file}:{n}: expected '<index> <Class>' with consecutive indices, got {line!r}"
            )
        classes.append(parts[1])
    by_lower = {c.lower(): i for i, c in enumerate(classes)}
    clips: dict[str, ClipRef] = {}
    for split in range(1, N_SPLITS + 1):
        for kind in ("train", "test"):
            list_file = split_dir / f"{kind}list0{split}.txt"
            if not list_file.is_file():
                raise LayoutError(
                    f"{list_file} not found: the UCF101 split lists come in pairs for splits 1-3"
                )
            for n, line in enumerate(list_file.read_text().splitlines(), start=1):
                if not line.strip():
                    continue
                rel = line.split()[0]
                folder = rel.split("/")[0]
                # UCF101's own lists spell some class folders differently from classInd
                # (e.g. HandStandPushups vs HandstandPushups): match case-insensitively.
                if folder.lower() not in by_lower:
                    raise LayoutError(
                        f"{list_file}:{n}: class folder {folder!r} is not in classInd.txt"
                    )
                cls_idx = by_lower[folder.lower()]
                _, group, clip = parse_clip_name(rel)
                canonical = f"{classes[cls_idx]}/{Path(rel).name}"
                ref = clips.get(canonical)
                if ref is None:
                    ref = ClipRef(canonical, classes[cls_idx], cls_idx + 1, group, clip, {})
                    clips[canonical] = ref
                ref.folds[split] = kind
    return classes, sorted(
        clips.values(), key=lambda r: (r.class_index, r.group, r.clip, r.rel_path)
    )


def resolve_video(root: str | Path, rel_path: str) -> Path:
    """The file of a listed clip, tolerating UCF101's case mismatches in folder names."""
    path = Path(root) / VIDEO_DIR / rel_path
    if path.exists():
        return path
    folder, name = rel_path.split("/", 1)
    parent = Path(root) / VIDEO_DIR
    if parent.is_dir():
        for candidate in parent.iterdir():
            if candidate.name.lower() == folder.lower():
                return candidate / name
    return path


def link_layout(source: str | Path, out: str | Path) -> tuple[int, int]:
    """Make `out` a UCF101-layout folder that points at an existing copy (no data copied).

    Validates the copy first, so a wrong `source_dir` fails here and not mid-extraction.
    Returns (classes, listed clips).
    """
    source = Path(source).expanduser().resolve()
    for part in (VIDEO_DIR, SPLIT_DIR):
        if not (source / part).is_dir():
            raise LayoutError(
                f"{source / part} not found: source_dir must hold {VIDEO_DIR}/ and {SPLIT_DIR}/ "
                f"as the official UCF101 archives unpack"
            )
    classes, clips = read_layout(source)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for part in (VIDEO_DIR, SPLIT_DIR):
        link = out / part
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(source / part, target_is_directory=True)
    return len(classes), len(clips)
