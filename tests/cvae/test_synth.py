"""Synthetic images: the folder and manifest contract, refusals."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from skin_tf.cvae.config import VaeConfig
from skin_tf.cvae.model import load_vae
from skin_tf.cvae.synth import MANIFEST, read_manifest, sample_images, synth_to_folder
from skin_tf.data.ham10000 import CLASSES


def test_manifest_contract(tiny_run, tmp_path):
    out = tmp_path / "synth"
    manifest = synth_to_folder(tiny_run, per_class=3, out=out, classes=["nv", "mel"], seed=5)
    assert list(manifest.columns) == ["file", "dx", "seed", "vae_run"]
    assert manifest.equals(pd.read_csv(out / MANIFEST))
    assert list(manifest["dx"]) == ["mel"] * 3 + ["nv"] * 3  # CLASSES order
    assert {p.name for p in out.iterdir()} == {MANIFEST, "mel", "nv"}
    assert set(manifest["vae_run"]) == {tiny_run.name}
    assert manifest["seed"].is_unique
    for row in manifest.itertuples():
        assert row.file.startswith(f"{row.dx}/") and row.file.endswith(".png")
        with Image.open(out / row.file) as image:
            assert image.size == (32, 32) and image.mode == "RGB"
    # The manifest's seed redraws the stored image exactly.
    vae, _ = load_vae(tiny_run)
    first = manifest.iloc[0]
    stored = np.asarray(Image.open(out / first["file"]))
    np.testing.assert_array_equal(sample_images(vae, [CLASSES.index(first["dx"])],
                                                [first["seed"]])[0], stored)  # fmt: skip
    checked = read_manifest(out)
    assert {"path", "label"} <= set(checked.columns)


def test_synth_refuses_to_overwrite(tiny_run, tmp_path):
    out = tmp_path / "synth"
    synth_to_folder(tiny_run, per_class=2, out=out, classes=["df"])
    with pytest.raises(FileExistsError, match="not empty"):
        synth_to_folder(tiny_run, per_class=2, out=out, classes=["mel"])
    assert {p.name for p in out.iterdir()} == {MANIFEST, "df"}
    synth_to_folder(tiny_run, per_class=1, out=out, classes=["mel"], overwrite=True)
    assert {p.name for p in out.iterdir()} == {MANIFEST, "mel"}  # old set replaced
    (out / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="notes.txt"):
        synth_to_folder(tiny_run, per_class=1, out=out, overwrite=True)
    assert (out / "notes.txt").read_text() == "mine"


def test_synth_rejects_bad_arguments(tiny_run, tmp_path):
    with pytest.raises(ValueError, match="per_class"):
        synth_to_folder(tiny_run, per_class=0, out=tmp_path / "a")
    with pytest.raises(ValueError, match="melanoma"):
        synth_to_folder(tiny_run, per_class=1, out=tmp_path / "b", classes=["melanoma"])
    with pytest.raises(FileNotFoundError, match="has not finished"):
        (tmp_path / "unfinished").mkdir()
        (tmp_path / "unfinished" / "config.json").write_text(json.dumps(VaeConfig().to_dict()))
        synth_to_folder(tmp_path / "unfinished", per_class=1, out=tmp_path / "c")
