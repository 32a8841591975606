"""Config loading, profiles, `--set` overrides and validation (no TensorFlow needed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from skin_tf import config_files
from skin_tf.config_files import ConfigError
from skin_tf.training import config as config_module
from skin_tf.training.config import (
    CPU_PROFILE_IMAGE_SIZE,
    CPU_PROFILE_MAX_EPOCHS,
    CPU_PROFILE_MODELS,
    MODELS,
    PROFILES,
    REFERENCE_AUGMENT,
    SMOKE_IMAGES_PER_CLASS,
    AugmentConfig,
    TrainConfig,
    config_from_dict,
    config_names,
    load_config,
    parse_overrides,
)

REFERENCE_EXPERIMENTS = {
    "baseline",
    "imbalance_sampler",
    "mel_sensitive",
    "baseline_with_synth",
    "effnetb2_mel_select",
    "effnetb2_260_acc_select",
    "effnetb2_260_mel_sampler_select",
    "long_mel_select",
    "tuned_mel_recall",
}


def test_the_nine_reference_experiments_are_shipped():
    # demo: `make demo`; baseline_meta: the baseline with the patient fields (issue 31)
    assert set(config_names()) == REFERENCE_EXPERIMENTS | {"demo", "baseline_meta"}


@pytest.mark.parametrize("profile", list(PROFILES))
@pytest.mark.parametrize("name", sorted(REFERENCE_EXPERIMENTS | {"baseline_meta"}))
def test_every_shipped_config_loads_under_every_profile(name, profile):
    config = load_config(name, profile=profile)
    assert config.name == name
    assert config.profile == profile
    assert config.fractions == (0.8, 0.1, 0.1) and config.seed == 42


def test_shipped_json_files_spell_out_every_field():
    folder = Path(str(config_files.configs_folder()))
    fields = set(TrainConfig().to_dict()) - {"profile"}
    for name in REFERENCE_EXPERIMENTS | {"baseline_meta"}:
        assert set(json.loads((folder / f"{name}.json").read_text())) == fields, name


def test_baseline_hyper_parameters_are_the_dataclass_defaults():
    baseline = load_config("baseline")
    assert baseline == TrainConfig()
    assert (baseline.model, baseline.image_size, baseline.epochs, baseline.batch_size) == (
        "efficientnet_b0",
        224,
        10,
        32,
    )
    assert (baseline.learning_rate, baseline.weight_decay, baseline.dropout) == (3e-4, 1e-4, 0.2)
    assert baseline.loss == "ce" and baseline.class_weights and baseline.weights == "imagenet"


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("imbalance_sampler", {"epochs": 15, "balance": "sampler", "class_weights": False}),
        ("mel_sensitive", {"mel_multiplier": 3.0, "epochs": 15, "class_weights": True}),
        ("baseline_with_synth", {"synthetic_dir": "artifacts/synth", "epochs": 10}),
        (
            "effnetb2_mel_select",
            {
                "model": "efficientnet_b2",
                "image_size": 224,
                "epochs": 20,
                "batch_size": 24,
                "learning_rate": 2e-4,
                "mel_multiplier": 2.0,
            },
        ),
        (
            "effnetb2_260_acc_select",
            {
                "model": "efficientnet_b2",
                "image_size": 260,
                "epochs": 30,
                "batch_size": 16,
                "label_smoothing": 0.1,
                "dropout": 0.3,
                "select_metric": "val_acc",
            },
        ),
        (
            "effnetb2_260_mel_sampler_select",
            {
                "balance": "sampler",
                "class_weights": True,
                "mel_multiplier": 3.0,
                "label_smoothing": 0.05,
            },
        ),
        (
            "long_mel_select",
            {"model": "efficientnet_b0", "epochs": 30, "mel_multiplier": 2.0},
        ),
        ("tuned_mel_recall", {"loss": "focal", "focal_gamma": 2.0, "mel_multiplier": 5.0}),
    ],
)
def test_reference_hyper_parameters(name, expected):
    config = load_config(name)
    assert {key: getattr(config, key) for key in expected} == expected


MELANOMA_SELECTING = [
    "effnetb2_mel_select",
    "effnetb2_260_mel_sampler_select",
    "long_mel_select",
    "tuned_mel_recall",
]


@pytest.mark.parametrize("name", MELANOMA_SELECTING)
def test_melanoma_configs_keep_the_epoch_with_the_best_operating_point(name):
    # The reference kept the best argmax melanoma recall; one override restores it.
    assert load_config(name).select_metric == "val_mel_spec_at_sens85"
    restored = load_config(name, overrides=["select_metric=val_mel_recall"])
    assert restored.select_metric == "val_mel_recall"


def test_only_the_melanoma_configs_select_by_a_melanoma_metric():
    by_melanoma = [n for n in config_names() if load_config(n).select_metric.startswith("val_mel")]
    assert sorted(by_melanoma) == sorted(MELANOMA_SELECTING)


def test_random_resized_crop_only_where_the_reference_used_it():
    assert load_config("effnetb2_260_acc_select").augment.crop_scale == (0.6, 1.0)
    assert load_config("baseline").augment.crop_scale is None


def test_cpu_profile_fine_tunes_the_pretrained_lite_of_about_the_same_size():
    b2 = load_config("effnetb2_260_acc_select", profile="cpu")
    assert (b2.model, b2.weights) == ("efficientnet_lite2", "imagenet")
    assert b2.image_size == CPU_PROFILE_IMAGE_SIZE
    assert (b2.learning_rate, b2.lr_schedule, b2.freeze_epochs) == (1e-3, "cosine", 0)
    assert load_config("baseline", profile="cpu").model == "efficientnet_lite0"
    assert set(CPU_PROFILE_MODELS) == {m for m in MODELS if m.startswith("efficientnet_b")}


def test_cpu_profile_set_still_wins_over_the_model_swap():
    scratch = load_config("baseline", profile="cpu", overrides=["weights=null"])
    assert (scratch.model, scratch.weights) == ("efficientnet_lite0", None)
    b0 = load_config("baseline", profile="cpu", overrides=["model=efficientnet_b0"])
    assert b0.model == "efficientnet_b0"
    # an explicit Lite in a config is kept as it is
    assert load_config("demo", profile="cpu").model == "efficientnet_lite0"


def test_cpu_profile_caps_long_configs_and_set_still_wins():
    assert load_config("effnetb2_260_acc_select").epochs == 30
    assert load_config("effnetb2_260_acc_select", profile="cpu").epochs == CPU_PROFILE_MAX_EPOCHS
    assert load_config("baseline", profile="cpu").epochs == 10  # shorter configs as written
    as_set = load_config("effnetb2_260_acc_select", profile="cpu", overrides=["epochs=30"])
    assert as_set.epochs == 30


def test_smoke_profile_is_tiny():
    config = load_config("long_mel_select", profile="smoke")
    assert (config.image_size, config.epochs, config.weights) == (64, 1, None)
    assert config.subset_per_class == SMOKE_IMAGES_PER_CLASS
    assert config.mel_multiplier == 2.0  # everything else as written


def test_overrides_apply_after_the_profile_and_parse_json():
    config = load_config(
        "baseline",
        profile="smoke",
        overrides=[
            "image_size=96",
            "epochs=3",
            "learning_rate=1",
            "weights=null",
            "model=efficientnet_b2",
            "augment.crop_scale=[0.6, 1.0]",
            "augment.hflip=false",
            "tta=true",
        ],
    )
    assert config.image_size == 96 and config.epochs == 3
    assert config.learning_rate == 1.0 and isinstance(config.learning_rate, float)
    assert config.weights is None and config.model == "efficientnet_b2"
    assert config.augment.crop_scale == (0.6, 1.0) and config.augment.hflip is False
    assert config.augment.vflip is True  # untouched siblings keep their value
    assert config.tta is True


def test_augment_null_turns_augmentation_off():
    assert load_config("baseline", overrides=["augment=null"]).augment is None


def test_config_augmentation_is_the_reference_without_crop_not_make_datasets_default():
    assert TrainConfig().augment == REFERENCE_AUGMENT == AugmentConfig(crop_scale=None)
    assert AugmentConfig().crop_scale == (0.75, 1.0)  # pipeline.DEFAULT_AUGMENT keeps the crop
    partial = config_from_dict({"augment": {"hue": 0.05}}).augment
    assert partial == AugmentConfig(hue=0.05, crop_scale=None)  # unnamed keys: the reference
    assert TrainConfig().to_dict()["augment"]["crop_scale"] is None
    assert load_config("effnetb2_260_acc_select").to_dict()["augment"]["crop_scale"] == [0.6, 1.0]


def test_augment_config_names_the_bad_field_when_built_directly():
    with pytest.raises(ConfigError, match=r"^augment\.hue=0\.7 must be in \[0, 0\.5\]"):
        AugmentConfig(hue=0.7)
    with pytest.raises(ValueError, match="augment.crop_scale"):  # ConfigError is a ValueError
        AugmentConfig(crop_scale=(0.9, 0.5))


def test_parse_overrides_nests_dotted_keys_and_keeps_plain_strings():
    assert parse_overrides(["augment.hue=0.05", "description=two words"]) == {
        "augment": {"hue": 0.05},
        "description": "two words",
    }


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("epoch=3", r"unknown key 'epoch' \(did you mean 'epochs'\?\)"),
        ("learnig_rate=0.1", r"did you mean 'learning_rate'"),
        ("augment.hflp=false", r"unknown key 'augment.hflp' \(did you mean 'hflip'\?\)"),
    ],
)
def test_unknown_keys_are_named_with_a_suggestion(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config("baseline", overrides=[override])


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("epochs=ten", "epochs"),
        ("epochs=2.5", "epochs"),
        ("epochs=true", "epochs"),
        ("class_weights=1", "class_weights"),
        ("learning_rate=fast", "learning_rate"),
        ("fractions=[0.8, 0.2]", "fractions"),
        ("weights=3", "weights"),
        ("augment=[1]", "augment"),
        ("augment.crop_scale=0.5", "augment.crop_scale"),
    ],
)
def test_wrong_types_are_rejected_naming_the_key(override, key):
    with pytest.raises(ConfigError, match=key):
        load_config("baseline", overrides=[override])


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("epochs=0", "epochs"),
        ("batch_size=0", "batch_size"),
        ("learning_rate=0", "learning_rate"),
        ("learning_rate=-0.1", "learning_rate"),
        ("weight_decay=-1", "weight_decay"),
        ("fractions=[0.5, 0.3, 0.3]", "fractions"),
        ("fractions=[1.0, 0.0, 0.0]", "fractions"),
        ("model=resnet50", "model"),
        ("model=efficientnet_b7", "model"),
        ("select_metric=val_f1", "select_metric"),
        ("balance=oversample", "balance"),
        ("loss=hinge", "loss"),
        ("lr_schedule=step", "lr_schedule"),
        ("precision=float16", "precision"),
        ("resize=pad", "resize"),
        ("dropout=1.0", "dropout"),
        ("label_smoothing=1", "label_smoothing"),
        ("mel_multiplier=0", "mel_multiplier"),
        ("sampler_power=2", "sampler_power"),
        ("image_size=16", "image_size"),
        ("image_size=[16, 200]", "image_size"),
        ("image_size=[150, 0]", "image_size"),
        ("ema_momentum=1", "ema_momentum"),
        ("ema_momentum=0", "ema_momentum"),
        ("freeze_epochs=11", "freeze_epochs"),
        ("warmup_epochs=10", "warmup_epochs"),
        ("fine_tune_lr_factor=0", "fine_tune_lr_factor"),
        ("augment.crop_scale=[0, 1]", "augment.crop_scale"),
        ("augment.crop_scale=[0.9, 0.5]", "augment.crop_scale"),
        ("augment.crop_scale=[0.5, 1.5]", "augment.crop_scale"),
        ("augment.brightness=1.5", "augment.brightness"),
        ("augment.hue=0.7", "augment.hue"),
        ("subset_per_class=1", "subset_per_class"),
        ("weights=model.pt", "weights"),
        ("bootstrap=-1", "bootstrap"),
    ],
)
def test_impossible_values_are_rejected_naming_the_key(override, key):
    with pytest.raises(ConfigError, match=key):
        load_config("baseline", overrides=[override])


def test_patient_fields_are_off_by_default_named_by_list_and_never_a_leak():
    assert all(not load_config(name).metadata for name in REFERENCE_EXPERIMENTS | {"demo"})
    # baseline_meta is the baseline plus the three fields, and nothing else.
    with_fields = load_config("baseline_meta").to_dict()
    assert with_fields.pop("metadata") == ["age", "sex", "localization"]
    image_only = load_config("baseline").to_dict()
    image_only.pop("metadata")
    assert {k: v for k, v in with_fields.items() if image_only[k] != v} == {
        "name": "baseline_meta", "description": with_fields["description"]
    }  # fmt: skip
    config = load_config("baseline", overrides=['metadata=["sex","age"]', "metadata_dropout=0"])
    assert config.metadata == ("sex", "age") and config.metadata_dropout == 0.0
    assert config_from_dict(config.to_dict()) == config  # a run's config.json reads back
    for override, message in [
        ('metadata=["dx_type"]', "metadata: 'dx_type' can never be a model input: .*leak"),
        ('metadata=["site"]', "metadata: unknown metadata field 'site'"),
        ('metadata=["age","age"]', r"\['age'\] listed twice"),
        ("metadata=age", "metadata: expected a list"),
        ("metadata_dropout=1", "metadata_dropout=1.0 must be in"),
        ("metadata_fusion=sum", "'sum' is not one of 'concat', 'metablock'"),
    ]:
        with pytest.raises(ConfigError, match=message):
            load_config("baseline", overrides=[override])


def test_a_non_square_size_and_a_weight_average_read_back():
    config = load_config(
        "baseline", profile="cpu", overrides=["image_size=[150,200]", "ema_momentum=0.998"]
    )
    assert (config.image_size, config.ema_momentum) == ((150, 200), 0.998)
    assert config.to_dict()["image_size"] == [150, 200]  # JSON-ready, read back as a tuple
    assert config_from_dict(config.to_dict()) == config


def test_the_retired_progressive_resizing_reads_when_off_and_is_refused_when_used():
    """A run's config.json from before the removal (the fields at their off values) still
    reads; a config that used progressive resizing is refused with the reason."""
    old = {**load_config("baseline").to_dict(), "low_res_size": None, "low_res_epochs": 0}
    assert config_from_dict(old) == load_config("baseline")
    for used in ({"low_res_size": [112, 150]}, {"low_res_epochs": 7}):
        with pytest.raises(ConfigError, match="progressive resizing .* was removed"):
            config_from_dict({**old, **used})
    with pytest.raises(ConfigError, match="low_res_size=96: progressive resizing"):
        load_config("baseline", profile="cpu", overrides=["low_res_size=96", "low_res_epochs=2"])


def test_unknown_choice_suggests_the_closest():
    with pytest.raises(ConfigError, match="did you mean 'val_mel_recall'"):
        load_config("baseline", overrides=["select_metric=val_mel_recal"])


def test_freezing_needs_pretrained_weights_and_a_warmup_inside_phase_one():
    config = load_config("baseline", overrides=["freeze_epochs=2", "warmup_epochs=1"])
    assert config.freeze_epochs == 2
    with pytest.raises(ConfigError, match="freeze_epochs.*randomly initialised"):
        load_config("baseline", profile="full", overrides=["freeze_epochs=2", "weights=null"])
    with pytest.raises(ConfigError, match="warmup_epochs"):
        load_config("baseline", overrides=["freeze_epochs=2", "warmup_epochs=2"])


def test_profiles_switch_off_freezing_so_any_config_stays_valid():
    frozen = {"freeze_epochs": 2, "name": "frozen"}
    for profile in ("cpu", "smoke"):
        merged = {**frozen, **PROFILES[profile], "profile": profile}
        assert config_from_dict(merged).freeze_epochs == 0


def test_unknown_profile_is_named_with_the_choices():
    # Malformed --set items and unknown config names: tests/test_config_files.py.
    with pytest.raises(ConfigError, match="unknown profile 'gpu'.*choose one of full, cpu, smoke"):
        load_config("baseline", profile="gpu")


def test_config_file_by_path(tmp_path: Path):
    path = tmp_path / "my_experiment.json"
    path.write_text(json.dumps({"epochs": 4, "augment": {"crop_scale": [0.8, 1.0]}}))
    config = load_config(path, profile="smoke")
    assert config.name == "my_experiment"
    assert config.epochs == 1  # the profile applies to any config
    assert config.augment.crop_scale == (0.8, 1.0)
    assert load_config(str(path), overrides=["epochs=7"]).epochs == 7


def test_config_file_errors_name_the_file_and_key(tmp_path: Path):
    # Files that are missing or not JSON objects: tests/test_config_files.py.
    bad_key = tmp_path / "bad.json"
    bad_key.write_text(json.dumps({"epochz": 4}))
    with pytest.raises(ConfigError, match=r"bad.json: unknown key 'epochz'"):
        load_config(bad_key)


def test_to_dict_round_trips():
    config = load_config("effnetb2_260_mel_sampler_select", profile="cpu", overrides=["tta=true"])
    data = json.loads(json.dumps(config.to_dict()))
    assert config_from_dict(data) == config


def test_select_metrics_constant_matches_the_field():
    import typing

    hint = typing.get_type_hints(TrainConfig)["select_metric"]
    assert typing.get_args(hint) == config_module.SELECT_METRICS


def test_select_mode():
    assert TrainConfig(select_metric="val_loss").select_mode == "min"
    assert TrainConfig(select_metric="val_mel_recall").select_mode == "max"


def test_other_commands_configs_are_not_classifier_configs(tmp_path: Path, monkeypatch):
    folder = tmp_path / "configs"
    folder.mkdir()
    (folder / "baseline.json").write_text(json.dumps({"epochs": 2}))
    (folder / "vae_quick.json").write_text(json.dumps({"latent_dim": 8, "epochs": 2}))
    monkeypatch.setattr(config_files, "configs_folder", lambda: folder)
    assert config_names() == ["baseline"]
    with pytest.raises(ConfigError, match="not a classifier config"):
        load_config("vae_quick")
