"""cVAE experiment configs: a typed dataclass, shipped JSON (`vae`, `vae_quick`), profiles, `--set`.

Same shape as the classifier's `skin_tf.training.config` (and the same JSON reading, merging and
type checks, from skin_tf.config_files): a config is data, a profile adapts it, `--set key=value`
changes one field, and every error names the key.

    >>> load_vae_config("vae_quick", profile="smoke", overrides=["latent_dim=32"]).latent_dim
    32

Profiles: `full` (the JSON as written) and `smoke` (32 px, 1 epoch, a lesion-complete subset of
SMOKE_LESIONS_PER_CLASS lesions per class: the whole train → sample path in seconds).
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

SMOKE_LESIONS_PER_CLASS = 10
IMAGE_SIZES = (32, 64, 128, 256)


@dataclass(frozen=True)
class VaeConfig:
    """Every hyper-parameter of one cVAE run; the defaults are the `vae` experiment."""

    name: str = "vae"
    description: str = "Conditional VAE, 64 px, latent 128, class embedding 16, 30 epochs."
    profile: Literal["full", "smoke"] = "full"  # set by load_vae_config
    image_size: int = 64  # 32, 64, 128 or 256: the convolutions halve it down to 4×4
    latent_dim: int = 128
    embed_dim: int = 16  # class embedding joined to the encoder features and to the latent
    base_filters: int = 32  # first conv width; doubles per stage, capped at 8× this
    epochs: int = 30
    batch_size: int = 64
    learning_rate: float = 1e-3  # Adam
    beta: float = 1.0  # KL weight after the warm-up
    kl_warmup_epochs: int = 5  # β ramps linearly from 0 to `beta` over these epochs
    augment: bool = True  # random flips and 90° turns (lesions have no canonical orientation)
    cache: bool = True  # keep decoded images in memory after the first epoch
    seed: int = 42
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)  # same lesion split as the classifier
    subset_per_class: int | None = None  # lesions per class to keep (smoke runs); None = all

    # Read by skin_tf.runs.collect_meta/provenance, which describe classifier runs by these names.
    model = "cvae"
    weights = None  # trained from scratch
    precision = "float32"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (tuples become lists) that `vae_config_from_dict` reads back."""
        return json.loads(json.dumps(dataclasses.asdict(self)))


VAE_PROFILES: dict[str, dict[str, Any]] = {
    "full": {},
    "smoke": {
        "image_size": 32,
        "epochs": 1,
        "batch_size": 16,
        "kl_warmup_epochs": 0,
        "subset_per_class": SMOKE_LESIONS_PER_CLASS,
    },
}


def load_vae_config(
    name_or_path: str | Path, profile: str = "full", overrides: typing.Iterable[str] = ()
) -> VaeConfig:
    """Read a shipped cVAE config (`vae`, `vae_quick`) or a JSON path; apply profile, `--set`s.

    >>> load_vae_config("vae_quick", profile="smoke", overrides=["latent_dim=32"]).latent_dim
    32
    """
    raw, source = read_config_json(name_or_path)
    if source in shipped_config_names() and source not in vae_config_names():
        raise ConfigError(
            f"{source!r} is a classifier config (for `skin-tf train`); cVAE configs: "
            f"{', '.join(vae_config_names())}"
        )
    if profile not in VAE_PROFILES:
        raise ConfigError(
            f"unknown cVAE profile {profile!r}{did_you_mean(profile, VAE_PROFILES)}; "
            f"choose one of {', '.join(VAE_PROFILES)}"
        )
    merged = merge_settings(merge_settings(raw, VAE_PROFILES[profile]), parse_set_values(overrides))
    merged.setdefault("name", Path(str(source)).stem)
    merged["profile"] = profile
    return vae_config_from_dict(merged, source=str(source))


def vae_config_names() -> list[str]:
    """Names of the shipped cVAE configs: JSON files in skin_tf/configs/ of VaeConfig keys only.

    >>> vae_config_names()
    ['vae', 'vae_quick']
    """
    return shipped_names_for(VaeConfig)


def vae_config_from_dict(data: dict[str, Any], source: str = "config") -> VaeConfig:
    """Validate a (possibly partial) dict into a VaeConfig; each error names the key.

    >>> vae_config_from_dict({"epochs": 2, "kl_warmup_epochs": 1}).epochs
    2
    """
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: a cVAE config must be a JSON object of key: value pairs")
    known = [f.name for f in dataclasses.fields(VaeConfig)]
    hints = typing.get_type_hints(VaeConfig)
    values = {}
    for key, value in data.items():
        if key not in known:
            raise ConfigError(f"{source}: unknown cVAE key {key!r}{did_you_mean(key, known)}")
        values[key] = coerce_value(value, hints[key], f"{source}: {key}")
    config = VaeConfig(**values)
    _check_values(config, source)
    return config


def _check_values(c: VaeConfig, source: str) -> None:
    def fail(key: str, why: str) -> None:
        raise ConfigError(f"{source}: {key}={getattr(c, key)!r} {why}")

    if c.image_size not in IMAGE_SIZES:
        fail("image_size", f"must be one of {', '.join(map(str, IMAGE_SIZES))}")
    for key in ("latent_dim", "embed_dim", "base_filters", "epochs", "batch_size"):
        if getattr(c, key) < 1:
            fail(key, "must be at least 1")
    if c.learning_rate <= 0:
        fail("learning_rate", "must be > 0")
    if c.beta < 0:
        fail("beta", "must be >= 0 (1 = the plain VAE objective)")
    if not 0 <= c.kl_warmup_epochs <= c.epochs:
        fail("kl_warmup_epochs", f"must be in [0, epochs={c.epochs}]")
    if any(f <= 0 for f in c.fractions) or not math.isclose(sum(c.fractions), 1.0, abs_tol=1e-6):
        fail("fractions", "must be three positive numbers (train, val, test) summing to 1")
    if c.subset_per_class is not None and c.subset_per_class < 3:
        fail("subset_per_class", "must be null or at least 3 lesions (one per split)")
