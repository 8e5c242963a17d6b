from pathlib import Path

import pytest

from avfl.config import ConfigError, deep_update, load_config, validate_config

from .conftest import REPO, tiny_config


@pytest.mark.parametrize("name", ["ucf101.yaml", "activitynet.yaml"])
def test_shipped_configs_validate(name):
    config = load_config([REPO / "config/config.yaml", REPO / "config" / name])
    dataset = config["run_datasets"][0]
    assert config["datasets"][dataset]["source"] == dataset
    # The paper's settings (Section 5.1, Appendix B).
    assert config["partition"]["n_clients"] == 100
    assert config["partition"]["alpha"] == 0.1
    assert config["federated"]["rounds"] == 200
    assert config["federated"]["clients_per_round"] == 10
    assert config["federated"]["local_epochs"] == 1
    assert config["federated"]["client_lr"] == 5e-4
    assert config["experiment"]["seeds"] == [0, 1, 2]
    assert config["experiment"]["table1_rates"] == [0.1, 0.2, 0.3, 0.4, 0.5]


def test_default_config_points_at_embedded_dataset():
    config = load_config([REPO / "config/config.yaml"])
    assert config["run_datasets"] == ["synthetic"]
    assert config["datasets"]["synthetic"]["source"] == "synthetic"


def test_defaults_are_filled():
    config = tiny_config()
    extract = config["datasets"]["tiny"]["extract"]
    assert extract["audio_seconds"] == 5.0 and extract["sample_rate"] == 16000
    assert config["partition"]["n_clients"] == 100  # schema default
    assert config["data_dir"] == "data"


def _with(update):
    config = tiny_config()
    deep_update(config, update)
    return config


@pytest.mark.parametrize(
    ("update", "fragment"),
    [
        (
            {"datasets": {"tiny": {"extract": {"fram_size": 64}}}},
            "'fram_size' (did you mean 'frame_size'?)",
        ),
        (
            {"datasets": {"tiny": {"extract": {"frame_size": "big"}}}},
            "datasets.tiny.extract.frame_size",
        ),
        (
            {"datasets": {"tiny": {"extract": {"num_mel_bins": 4}}}},
            "datasets.tiny.extract.num_mel_bins",
        ),
        ({"partition": {"alpha": 0}}, "partition.alpha"),
        ({"experiment": {"table1_rates": [0.1, 1.5]}}, "experiment.table1_rates.1"),
        ({"datasets": {"tiny": {"source": "kinetics"}}}, "datasets.tiny.source"),
        ({"run_datasets": ["nope"]}, "'nope' is not defined under 'datasets'"),
        (
            {"datasets": {"tiny": {"synthetic": {"duration_s": [5.0, 1.0]}}}},
            "datasets.tiny.synthetic.duration_s",
        ),
        (
            {"datasets": {"tiny": {"synthetic": {"n_silent_classes": 4}}}},
            "datasets.tiny.synthetic.n_silent_classes",
        ),
        (
            {"datasets": {"tiny": {"synthetic": {"n_audio_twins": 3}}}},
            "datasets.tiny.synthetic.n_audio_twins",
        ),
        ({"surprise": 1}, "unknown config key 'surprise'"),
        ({"experiment": {"methods": ["fedprox"]}}, "unknown method 'fedprox'"),
        ({"experiment": {"methods": ["modalitymirror"]}}, "consumes multifl's result"),
        (
            {"methods": {"modalitymirror": {"kl_direction": "sideways"}}},
            "methods.modalitymirror.kl_direction",
        ),
        (
            {"model": {"audio": {"weights": {"path": "x", "sha256": "xyz"}}}},
            "model.audio.weights.sha256",
        ),
    ],
)
def test_bad_values_are_rejected_naming_the_key(update, fragment):
    with pytest.raises(ConfigError) as info:
        validate_config(_with(update))
    assert fragment in str(info.value)


def test_load_config_rejects_non_mapping(tmp_path: Path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml"):
        load_config([bad])
