"""Grad-CAM: heatmap shape and range, overlays at the image's own size, the per-run gallery."""

from __future__ import annotations

import json
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from skin_tf.data import CLASSES, read_metadata
from skin_tf.gradcam import (
    NOT_ADVICE,
    Example,
    gallery_figure,
    gradcam_heatmaps,
    gradcam_run,
    heatmap_to_input,
    overlay,
    update_readme,
)
from skin_tf.metrics import PROB_COLUMNS
from skin_tf.models import build_classifier

SIZE = 64


def widened_model(size: int = SIZE) -> keras.Model:
    """B0 without pretrained weights, its head scaled so classes and gradients differ."""
    keras.utils.set_random_seed(1)
    model = build_classifier("efficientnet_b0", size, weights=None)
    head = model.get_layer("predictions")
    probe = np.random.default_rng(0).uniform(0, 255, (1, size, size, 3)).astype("float32")
    features = keras.Model(model.inputs[0], head.input)(probe)
    rms = float(np.sqrt(np.mean(np.square(features)))) + 1e-12
    kernel = np.random.default_rng(0).normal(0, 1, head.kernel.shape)
    head.kernel.assign(kernel * 2.0 / (rms * np.sqrt(kernel.shape[0])))
    return model


@pytest.fixture(scope="module")
def model() -> keras.Model:
    return widened_model()


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    rng = np.random.default_rng(4)
    return rng.uniform(0, 255, (2, SIZE, SIZE, 3)).astype("float32")


@pytest.mark.parametrize("method", ["gradcam", "gradcam++"])
def test_heatmaps_have_the_input_grid_and_lie_in_0_1(model, images, method):
    maps = gradcam_heatmaps(model, images, method=method)
    assert maps.shape == (2, SIZE, SIZE) and maps.dtype == np.float32
    assert maps.min() >= 0.0 and maps.max() <= 1.0
    assert (maps.reshape(2, -1).max(axis=1) > 0.9).all()  # each map is scaled to reach ~1


def test_class_index_chooses_the_explained_class(model, images):
    predicted = model.predict(images, verbose=0).argmax(axis=1)
    default = gradcam_heatmaps(model, images)
    np.testing.assert_allclose(gradcam_heatmaps(model, images, predicted.tolist()), default)
    other = int((predicted[0] + 1) % len(CLASSES))
    assert not np.allclose(gradcam_heatmaps(model, images[:1], other), default[:1], atol=1e-3)
    with pytest.raises(ValueError, match="class_index"):
        gradcam_heatmaps(model, images, class_index=[0])
    with pytest.raises(ValueError, match="load_image"):
        gradcam_heatmaps(model, np.zeros((1, 32, 32, 3)))
    with pytest.raises(ValueError, match="unknown method"):
        gradcam_heatmaps(model, images, method="lime")


@pytest.mark.slow
def test_scorecam_runs(model, images):
    maps = gradcam_heatmaps(model, images[:1], method="scorecam")
    assert maps.shape == (1, SIZE, SIZE) and 0.0 <= maps.min() <= maps.max() <= 1.0


def test_overlay_is_drawn_at_the_original_size():
    image = np.full((150, 200, 3), 100, np.uint8)
    heat = np.array([[0.0, 1.0], [0.0, 0.0]], np.float32)  # model-grid map: hot top-right
    blended = overlay(image, heat)
    assert blended.shape == (150, 200, 3) and blended.dtype == np.uint8
    np.testing.assert_array_equal(overlay(image, heat, alpha=0.0), image)
    pure = overlay(image, heat, alpha=1.0)
    np.testing.assert_array_equal(pure[0, -1], [128, 0, 0])  # jet(1.0) is dark red
    np.testing.assert_array_equal(pure[-1, 0], [0, 0, 128])  # jet(0.0) is dark blue
    full = overlay(image, np.ones((150, 200)), alpha=1.0)  # already at image size: used as is
    assert (full == [128, 0, 0]).all()
    with pytest.raises(ValueError, match="uint8"):
        overlay(image.astype(np.float32), heat)


def test_crop_heatmaps_cover_only_the_centre_square():
    mapped = heatmap_to_input(np.ones((1, 4, 4)), (100, 200), (SIZE, SIZE), "crop").numpy()[0]
    assert mapped.shape == (100, 200)
    assert (mapped[:, 50:150] == 1).all()
    assert (mapped[:, :50] == 0).all() and (mapped[:, 150:] == 0).all()


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


def make_run(run_dir: Path, data_root: Path, model: keras.Model) -> pd.DataFrame:
    """A finished run on the synthetic data: best.keras, config, meta and test predictions."""
    run_dir.mkdir(parents=True)
    model.save(run_dir / "best.keras")
    config = {"model": "efficientnet_b0", "image_size": SIZE, "resize": "squash"}
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
