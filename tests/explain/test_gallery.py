"""The per-run Grad-CAM gallery: the figure, overlays on disk, the README, missing inputs."""

from __future__ import annotations

import json
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from skin_tf.data.ham10000 import CLASSES, read_metadata
from skin_tf.evaluation.metrics import PROB_COLUMNS
from skin_tf.explain.gallery import NOT_ADVICE, Example, gallery_figure, gradcam_run, update_readme
from tests.explain.test_gradcam import SIZE, widened_model


@pytest.fixture(scope="module")
def model() -> keras.Model:
    return widened_model()


def test_gallery_figure_labels_and_caption():
    probs = np.eye(len(CLASSES))[CLASSES.index("mel")] * 0.8 + 0.2 / len(CLASSES)
    picture = np.zeros((40, 50, 3), np.uint8)
    wrong = Example("ISIC_1", picture, picture, probs, "nv")
    right = Example("ISIC_2", picture, picture, probs, "mel")
    assert wrong.correct is False and "true nv" in wrong.label() and "WRONG" in wrong.label()
    fig = gallery_figure(
        [("mel", [right, None]), ("nv", [None, wrong])], title="t", caption="made by a test"
    )
    texts = [t.get_text() for t in fig.texts] + [t.get_text() for ax in fig.axes for t in ax.texts]
    assert any("made by a test" in t and NOT_ADVICE in t for t in texts)
    assert texts.count("none") == 2
    with pytest.raises(ValueError, match="caption"):
        gallery_figure([("mel", [right])], title="t", caption=" ")


def make_run(
    run_dir: Path, data_root: Path, model: keras.Model, fields: tuple[str, ...] = ()
) -> pd.DataFrame:
    """A finished run on the synthetic data: best.keras, config, meta and test predictions."""
    run_dir.mkdir(parents=True)
    model.save(run_dir / "best.keras")
    config = {"model": "efficientnet_b0", "image_size": SIZE, "resize": "squash",
              "metadata": list(fields)}  # fmt: skip
    (run_dir / "config.json").write_text(json.dumps(config))
    meta = {
        "run_name": "tiny-run", "config_name": "baseline", "profile": "smoke",
        "model": "efficientnet_b0", "weights": "none", "image_size": SIZE, "epochs": 1,
        "hardware": "CPU (2 cores)",
        "data": {"root": str(data_root), "source_size": "200x150", "n_images": 28},
    }  # fmt: skip
    (run_dir / "meta.json").write_text(json.dumps(meta))
    frame = read_metadata(data_root).groupby("dx").head(2)
    # The first image of each class is predicted right, the second as the next class.
    rows = []
    for i, (_, row) in enumerate(frame.sort_values("image_id").iterrows()):
        predicted = row["label"] if i % 2 == 0 else (row["label"] + 1) % len(CLASSES)
        probs = np.full(len(CLASSES), 0.05)
        probs[predicted] = 0.7
        rows.append(
            {
                "image_id": row["image_id"],
                "dx": row["dx"],
                **dict(zip(PROB_COLUMNS, probs, strict=True)),
            }
        )
    predictions = pd.DataFrame(rows)
    predictions.to_csv(run_dir / "predictions_test.csv", index=False)
    return predictions


@pytest.mark.slow
def test_gradcam_run_writes_overlays_gallery_and_readme(model, fake_root, tmp_path):
    run_dir = tmp_path / "runs" / "tiny"
    make_run(run_dir, fake_root, model)
    out = tmp_path / "gradcam"

    result = gradcam_run(run_dir, out_dir=out, per_class=1)
    assert Path(result["gallery"]) == out / "gallery_tiny-run_gradcam.png"
    assert Image.open(result["gallery"]).size[0] > 500
    assert len(result["overlays"]) == 2 * len(CLASSES)  # one correct + one wrong per class
    pair = Image.open(result["overlays"][0])
    assert pair.size == (2 * 200, 150)  # original | overlay, each at the image's own size
    readme = (out / "README.md").read_text()
    assert "run `tiny-run`" in readme and "gallery_tiny-run_gradcam.png" in readme
    assert "HAM10000 200x150 copy" in readme and "not medical advice" in readme

    given = sorted((fake_root / "images").glob("*.jpg"))[:2]
    again = gradcam_run(run_dir, image_paths=given, out_dir=out, method="gradcam++")
    assert len(again["overlays"]) == 2
    readme = (out / "README.md").read_text()
    assert "## Grad-CAM++ — run `tiny-run` (gallery_tiny-run_gradcampp_images.png)" in readme
    assert "given image files" in readme
    assert "gallery_tiny-run_gradcam.png" in readme  # the first gallery is still listed
    assert Path(again["gallery"]).is_file() and Path(result["gallery"]).is_file()
    assert again["overlays"][0].endswith("_gradcampp_images.png")

    # A later call replaces this gallery's overlays; the other gallery's stay.
    stale = out / "tiny-run" / "ISIC_9999999_gradcam.png"
    stale.write_bytes(b"an overlay of an earlier model")
    redone = gradcam_run(run_dir, out_dir=out, per_class=1)
    assert sorted(map(str, (out / "tiny-run").glob("*_gradcam.png"))) == sorted(redone["overlays"])
    assert all(Path(path).is_file() for path in again["overlays"])


def test_readme_sections_are_replaced_not_repeated(tmp_path):
    def write(method: str, caption: str) -> str:
        gallery = tmp_path / f"gallery_r_{method}.png"
        update_readme(tmp_path, "r", method, gallery, tmp_path / "r", caption, None)
        return (tmp_path / "README.md").read_text()

    write("gradcam", "first caption")
    write("gradcam++", "other method")
    text = write("gradcam", "second caption")
    assert text.startswith("# Grad-CAM figures")
    assert text.count("<!-- gradcam r:gradcam -->") == 1
    assert text.count("<!-- gradcam r:gradcampp -->") == 1
    assert "second caption" in text and "first caption" not in text
    assert "other method" in text


def test_gradcam_run_names_what_is_missing(model, fake_root, tmp_path):
    run_dir = tmp_path / "run"
    make_run(run_dir, fake_root, model)
    meta = json.loads((run_dir / "meta.json").read_text())
    meta["data"]["root"] = str(tmp_path / "elsewhere")
    (run_dir / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(FileNotFoundError, match="--data"):
        gradcam_run(run_dir, out_dir=tmp_path / "out")
    (run_dir / "best.keras").unlink()
    with pytest.raises(FileNotFoundError, match="best.keras"):
        gradcam_run(run_dir, out_dir=tmp_path / "out")


@pytest.mark.slow
def test_a_run_with_patient_fields_is_explained_with_each_images_recorded_fields(
    fake_root, tmp_path
):
    """Issue 31: `skin-tf gradcam` of a run trained with age, sex and site holds each test
    image's recorded fields while it maps the image, and its caption says so."""
    from skin_tf.data.meta_fields import META_FIELDS
    from skin_tf.explain.gradcam import gradcam_heatmaps
    from skin_tf.models.classifier import build_classifier

    keras.utils.set_random_seed(4)
    model = build_classifier("efficientnet_b0", SIZE, weights=None, metadata_width=20)
    run_dir = tmp_path / "runs" / "tiny-meta"
    make_run(run_dir, fake_root, model, META_FIELDS)
    result = gradcam_run(run_dir, out_dir=tmp_path / "gradcam", per_class=1)
    assert len(result["overlays"]) == 2 * len(CLASSES)
    readme = (tmp_path / "gradcam" / "README.md").read_text()
    assert "age, sex, localization held at each image's recorded values" in readme
    with pytest.raises(ValueError, match="takes patient fields"):
        gradcam_heatmaps(model, np.zeros((1, SIZE, SIZE, 3), np.float32))
