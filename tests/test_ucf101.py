"""Reading the UCF101 layout, including the quirks of the official lists."""

from pathlib import Path

import pytest

from avfl.data import ucf101


def _write(root: Path, classes, train, test):
    split = root / ucf101.SPLIT_DIR
    split.mkdir(parents=True)
    (split / "classInd.txt").write_text("".join(f"{i} {c}\r\n" for i, c in enumerate(classes, 1)))
    for k in (1, 2, 3):
        (split / f"trainlist0{k}.txt").write_text("".join(f"{r} 1\r\n" for r in train))
        (split / f"testlist0{k}.txt").write_text("".join(f"{r}\r\n" for r in test))


def test_case_mismatch_between_lists_and_folders(tmp_path: Path):
    # The official lists write "HandStandPushups" while classInd and the folder say "HandstandPushups".
    _write(tmp_path, ["HandstandPushups"], ["HandStandPushups/v_HandStandPushups_g08_c01.avi"], [])
    folder = tmp_path / ucf101.VIDEO_DIR / "HandstandPushups"
    folder.mkdir(parents=True)
    (folder / "v_HandStandPushups_g08_c01.avi").write_bytes(b"x")
    classes, clips = ucf101.read_layout(tmp_path)
    assert classes == ["HandstandPushups"]
    (clip,) = clips
    assert (
        clip.class_name == "HandstandPushups"
        and clip.group == 8
        and clip.folds == {1: "train", 2: "train", 3: "train"}
    )
    assert ucf101.resolve_video(
        tmp_path, "handstandpushups/v_HandStandPushups_g08_c01.avi"
    ).exists()


def test_missing_class_index_names_the_file(tmp_path: Path):
    with pytest.raises(ucf101.LayoutError, match=r"classInd\.txt not found"):
        ucf101.read_layout(tmp_path)


def test_unknown_class_in_list_names_file_and_line(tmp_path: Path):
    _write(
        tmp_path,
        ["Archery"],
        ["Archery/v_Archery_g08_c01.avi", "Bowling/v_Bowling_g08_c01.avi"],
        [],
    )
    with pytest.raises(ucf101.LayoutError, match=r"trainlist01.txt:2: class folder 'Bowling'"):
        ucf101.read_layout(tmp_path)


def test_bad_clip_name_is_rejected():
    with pytest.raises(ucf101.LayoutError, match="does not match"):
        ucf101.parse_clip_name("Archery/clip1.avi")


def test_test_groups_follow_official_splits():
    assert list(ucf101.test_groups(1)) == list(range(1, 8))
    assert list(ucf101.test_groups(3)) == list(range(15, 22))


def test_link_layout_validates_and_links(tmp_path: Path, tiny_raw: Path):
    out = tmp_path / "linked"
    n_classes, n_clips = ucf101.link_layout(tiny_raw, out)
    assert (out / ucf101.VIDEO_DIR).is_symlink()
    assert (n_classes, n_clips) == (
        len(ucf101.read_layout(tiny_raw)[0]),
        len(ucf101.read_layout(tiny_raw)[1]),
    )
    with pytest.raises(ucf101.LayoutError, match="source_dir must hold"):
        ucf101.link_layout(tmp_path / "nowhere", tmp_path / "other")
