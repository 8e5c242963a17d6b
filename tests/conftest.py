"""Shared fixtures: a tiny embedded dataset, generated once per test session."""

from __future__ import annotations

import copy
import shutil
import sys
from pathlib import Path

import pytest

from avfl.config import validate_config
from avfl.data import extract, synthetic

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = str(Path(sys.executable).parent)

TINY_SYNTHETIC = {
    "seed": 7,
    "n_classes": 5,
    "n_silent_classes": 1,
    "n_audio_twins": 1,
    "n_groups": 21,
    "clips_per_group": [1, 1],
    "duration_s": [0.8, 6.0],
    "frame_width": 64,
    "frame_height": 48,
    "fps": 10,
    "gop": 4,
    "sample_rates": [8000, 22050, 48000],
    "channels": [1, 2],
    "snr_db": [0.0, 10.0],
    "avi_fraction": 0.3,
    "n_corrupt": 2,
}
TINY_EXTRACT = {"frame_size": 32, "target_frames": 256, "num_mel_bins": 64}


def tiny_config() -> dict:
    """A complete, validated config for the tiny dataset (as the workflow would see it)."""
    return validate_config(
        {
            "run_datasets": ["tiny"],
            "datasets": {
                "tiny": {
                    "source": "synthetic",
                    "synthetic": copy.deepcopy(TINY_SYNTHETIC),
                    "extract": copy.deepcopy(TINY_EXTRACT),
                }
            },
        }
    )


@pytest.fixture(scope="session")
def tiny_settings() -> dict:
    return tiny_config()["datasets"]["tiny"]


@pytest.fixture(scope="session")
def tiny_raw(tmp_path_factory, tiny_settings) -> Path:
    root = tmp_path_factory.mktemp("raw")
    synthetic.generate(tiny_settings["synthetic"], root, workers=2, progress=False)
    return root


@pytest.fixture(scope="session")
def tiny_features(tmp_path_factory, tiny_raw, tiny_settings) -> Path:
    out = tmp_path_factory.mktemp("features")
    extract.extract_dataset(tiny_raw, out, tiny_settings["extract"], threads=2, progress=False)
    return out


@pytest.fixture()
def raw_copy(tmp_path, tiny_raw) -> Path:
    """A writable copy of the tiny dataset, for tests that damage files."""
    dest = tmp_path / "raw"
    shutil.copytree(tiny_raw, dest)
    return dest
