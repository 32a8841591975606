"""A tiny finished cVAE run, trained once for the cvae tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from skin_tf.cvae.config import load_vae_config
from skin_tf.cvae.model import train_vae

TINY = {"latent_dim": 8, "embed_dim": 4, "base_filters": 8}


@pytest.fixture(scope="package")
def tiny_run(tmp_path_factory) -> Path:
    """A finished 1-epoch 32 px cVAE run on a small synthetic HAM10000 copy."""
    from tests.fakes import make_fake_ham10000

    base = tmp_path_factory.mktemp("cvae")
    root = make_fake_ham10000(base / "ham", per_class=6)
    sets = [f"{k}={v}" for k, v in TINY.items()] + ["subset_per_class=null"]
    config = load_vae_config("vae", profile="smoke", overrides=sets)
    return train_vae(config, data_root=root, runs_dir=base / "runs", run_name="tiny")
