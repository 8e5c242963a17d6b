from pathlib import Path

import pytest

from avfl.config import ConfigError, deep_update, load_config, validate_config

from .conftest import REPO, tiny_config


@pytest.mark.parametrize("name", ["ucf101.yaml", "activitynet.yaml"])
def test_paper_configs_validate_with_the_papers_settings(name):
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
        ({"experiment": {"methods": ["fedprocs"]}}, "unknown method 'fedprocs'"),
        ({"experiment": {"methods": ["centralised"]}}, "is a reference, not a method"),
        (
            {"experiment": {"ablation_methods": ["ssl_random_probe"]}},
            "'ssl_random_probe' is a reference: name it in experiment.methods",
        ),
        ({"methods": {"fassl": {"temperature": 0.1}}}, "methods.fassl"),
        ({"methods": {"fssuavl": {"backbone": "vit"}}}, "methods.fssuavl.backbone"),
        ({"methods": {"fedprox": {"mu": -1}}}, "methods.fedprox.mu"),
        ({"methods": {"bmsfed": {"chi": 0.5}}}, "methods.bmsfed.chi"),
        (
            {"methods": {"multifl": {"federated": {"rounds": 0}}}},
            "methods.multifl.federated.rounds",
        ),
        ({"experiment": {"variants": {"v": {"datasets.tiny.folds": [1]}}}}, "cannot vary"),
        (
            {"experiment": {"variants": {"v": {"methods.modalitymirror.temperature": -2}}}},
            "experiment.variants.v",
        ),
        ({"experiment": {"variants": {"default": {"partition.alpha": 1}}}}, "experiment.variants"),
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


def test_every_registered_methods_settings_have_defaults_and_reasons():
    from avfl.config import load_schema
    from avfl.methods import registry

    blocks = load_schema()["properties"]["methods"]["properties"]
    assert set(blocks) == set(registry())
    config = tiny_config()
    for name, spec in registry().items():
        for setting in spec.settings:
            assert config["methods"][name][setting.name] == setting.default
            assert len(setting.reason) > 20, (name, setting.name)
            assert blocks[name]["properties"][setting.name]["description"] == setting.reason


def test_variants_are_overlays_validated_like_the_config():
    from avfl.config import apply_overlay, variant_configs

    config = _with({"experiment": {"variants": {"ce": {"methods.modalitymirror.ce_weight": 0.5},
                                                "budget": {"methods.multifl.federated": {"rounds": 7}}}}})  # fmt: skip
    variants = variant_configs(validate_config(config))
    assert list(variants) == ["default", "ce", "budget"]
    assert variants["ce"]["methods"]["modalitymirror"]["ce_weight"] == 0.5
    assert variants["default"]["methods"]["modalitymirror"]["ce_weight"] == 0.0
    assert variants["budget"]["methods"]["multifl"]["federated"] == {"rounds": 7}
    assert apply_overlay({"a": {"b": 1, "c": 2}}, {"a": {"b": 3}}) == {"a": {"b": 3, "c": 2}}


@pytest.mark.parametrize(
    "name", sorted(p.name for p in (REPO / "config").glob("*.yaml") if p.name != "config.yaml")
)
def test_every_shipped_config_validates_on_top_of_the_default(name):
    from avfl.config import config_layers

    load_config([REPO / "config/config.yaml", *config_layers(REPO / "config" / name)])


def test_methods_that_train_from_the_raw_inputs_are_refused_on_embeddings_only_data():
    config = validate_config(_with({}))
    assert config["methods"]["fassl"] == {}  # its settings are methods.fssuavl's
    assert "It runs with the settings of methods.fssuavl" in str(
        __import__("avfl.config", fromlist=["x"]).load_schema()["properties"]["methods"][
            "properties"
        ]["fassl"]
    )
    rehearsal = load_config([REPO / "config/config.yaml", REPO / "config/rehearsal.yaml"])
    rehearsal["experiment"]["methods"] = ["multifl", "fssuavl"]
    with pytest.raises(ConfigError, match="fssuavl train from the raw fbank and frames"):
        validate_config(rehearsal)
