"""The cVAE's configs: shipped files, profiles, and errors that name the key."""

from __future__ import annotations

import pytest

from skin_tf.config_files import ConfigError
from skin_tf.cvae.config import load_vae_config, vae_config_names

# ------------------------------------------------------------------------------ config


def test_shipped_configs_and_profiles():
    assert vae_config_names() == ["vae", "vae_quick"]
    full, quick = load_vae_config("vae"), load_vae_config("vae_quick")
    assert (full.epochs, quick.epochs) == (30, 10)
    assert (full.latent_dim, full.embed_dim, full.image_size) == (128, 16, 64)
    smoke = load_vae_config("vae", profile="smoke", overrides=["latent_dim=32"])
    assert (smoke.profile, smoke.image_size, smoke.epochs, smoke.latent_dim) == ("smoke", 32, 1, 32)
    assert smoke.subset_per_class is not None


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["latnt_dim=3"], "did you mean 'latent_dim'"),
        (["image_size=100"], "image_size=100"),
        (["kl_warmup_epochs=99"], "kl_warmup_epochs"),
        (["beta=-1"], "beta"),
        (["epochs"], "expected key=value"),
        (["augment=maybe"], "augment"),
    ],
)
def test_bad_overrides_name_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_vae_config("vae", overrides=overrides)


def test_classifier_config_and_unknown_profile_are_refused():
    with pytest.raises(ConfigError, match="classifier config"):
        load_vae_config("baseline")
    with pytest.raises(ConfigError, match="choose one of full, smoke"):
        load_vae_config("vae", profile="cpu")
