"""The Streamlit page: skin_tf.serving.page's helpers (fast) and the page itself under
streamlit.testing AppTest (slow). Starting it (`skin-tf app`, the settings) is test_launch.py.

The slow tests export a tiny real SavedModel once per session (`export_demo_model`: an untrained
flat EfficientNetB0 at 128 px, 25-50 s on 2 busy cores) and upload real HAM10000 images plus bad
and unusual files built with PIL.
"""

from __future__ import annotations

import io
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from skin_tf.data.ham10000 import CLASSES, MEL_INDEX
from skin_tf.serving import launch as launch
from skin_tf.serving import page as support
from skin_tf.serving.verdict import REJECTED_REASON, verdict
from tests.data.test_images import png_header

SAMPLE_IMAGE = "ISIC_0024306.jpg"  # a real HAM10000 image (nv) of the shared 200x150 copy
DEMO_THRESHOLD = 0.15
DEMO_NOTE = "illustrative operating point for the page tests: not measured on any data"
APP_TIMEOUT = 180  # first run imports TensorFlow and loads the SavedModel


# ---------------------------------------------------------------- a tiny exported model


def export_demo_model(root: Path, name: str = "tiny-b0", image_size: int = 128) -> Path:
    """Export an untrained flat EfficientNetB0 via a fake run dir; returns the model folder.

    Untrained pre-logit features are ~1e-6, so every class would get 1/7: the head kernel is
    rescaled to give logits of order 1 (distinct classes, real Grad-CAM gradients). 128 px
    gives a 4x4 Grad-CAM grid. Provenance says plainly that the model is untrained.
    """
    import keras

    from skin_tf.models.classifier import build_classifier
    from skin_tf.serving.export import export_run

    keras.utils.set_random_seed(3)
    model = build_classifier("efficientnet_b0", image_size, weights=None)
    head = model.get_layer("predictions")
    features = keras.Model(model.inputs, head.input)
    probe = np.random.default_rng(0).uniform(0, 255, (4, image_size, image_size, 3))
    scale = float(np.abs(features([probe.astype("float32")], training=False)).mean())
    n_features = head.kernel.shape[0]
    kernel = np.random.default_rng(0).normal(0, 1.5 / (scale * n_features**0.5), head.kernel.shape)
    head.kernel.assign(kernel.astype("float32"))
    run = root / "runs" / "20250101T000000Z__ui-demo-untrained"
    run.mkdir(parents=True)
    model.save(run / "best.keras")
    files = {
        "config.json": {"model": "efficientnet_b0", "image_size": image_size, "resize": "squash"},
        "meta.json": {
            "run_name": "ui-demo-untrained",
            "model": "efficientnet_b0",
            "weights": "none",
            "image_size": image_size,
            "epochs": 0,
            "hardware": "CPU",
            "data": {"source_size": "200x150"},
        },
        "operating_point.json": {
            "threshold": DEMO_THRESHOLD,
            "target_sensitivity": 0.85,
            "calibrated": False,
            "temperature": None,
            "chosen_on": "val",
            "val": {"sensitivity": 0.9, "specificity": 0.5},
            "test": {"sensitivity": 0.8, "specificity": 0.5},
            "note": DEMO_NOTE,
        },
    }
    for file_name, content in files.items():
        (run / file_name).write_text(json.dumps(content))
    return export_run(run, root / "saved_models" / name)


@pytest.fixture(scope="session")
def demo_model(tmp_path_factory) -> Path:
    return export_demo_model(tmp_path_factory.mktemp("app"))


# ---------------------------------------------------------------- upload files


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


@pytest.fixture(scope="session")
def sample_bytes(real_data_root: Path) -> bytes:
    return (real_data_root / "images" / SAMPLE_IMAGE).read_bytes()


@pytest.fixture(scope="session")
def sample_image(sample_bytes: bytes) -> Image.Image:
    return Image.open(io.BytesIO(sample_bytes)).convert("RGB")


def bad_upload(kind: str, sample_bytes: bytes) -> tuple[str, bytes]:
    """(file name, bytes) of a file the page must refuse with a clear message."""
    if kind == "empty":
        return "empty.jpg", b""
    if kind == "not_an_image":
        return "notes.jpg", b"patient notes, not a picture\n" * 20
    if kind == "truncated_jpeg":  # the real HAM10000 JPEG, cut in the middle of its pixel data
        return "truncated.jpg", sample_bytes[: len(sample_bytes) // 2]
    if kind == "one_pixel":
        return "dot.png", encode(Image.new("RGB", (1, 1), (200, 120, 100)), "PNG")
    if kind == "bomb":  # a real, decodable 20000x20000 PNG (48 kB compressed, 400 Mpx)
        return "huge.png", encode(Image.new("1", (20_000, 20_000)), "PNG")
    if kind == "huge_header":  # 144 Mpx: under PIL's own limit, over skin_tf's 40
        return "scan.png", png_header(12_000, 12_000)
    raise ValueError(kind)


BAD_UPLOADS = {  # kind → the message (`skin-tf predict` says the same: test_predict.py)
    "empty": "empty file (0 bytes)",
    "not_an_image": "not an image (no known image format)",
    "truncated_jpeg": "truncated or damaged JPEG file: re-export or re-download it",
    "one_pixel": "too small: 1x1 (min 32 px)",
    "bomb": "too large: 400 megapixels (max 40 megapixels)",
    "huge_header": "too large: 144 megapixels (max 40 megapixels)",
}


def converted_upload(kind: str, image: Image.Image) -> tuple[str, bytes]:
    """(file name, bytes) of a valid but unusual image the page must convert and predict."""
    if kind == "greyscale":
        return "grey.jpg", encode(image.convert("L"), "JPEG", quality=95)
    if kind == "rgba":
        rgba = image.convert("RGBA")
        rgba.putalpha(200)
        return "alpha.png", encode(rgba, "PNG")
    if kind == "cmyk":
        return "cmyk.jpg", encode(image.convert("CMYK"), "JPEG", quality=95)
    if kind == "png16":
        grey = np.asarray(image.convert("L"), np.uint16) * 257  # full 16-bit range
        return "deep.png", encode(Image.fromarray(grey), "PNG")
    if kind == "palette":
        return "palette.png", encode(image.convert("P"), "PNG")
    if kind == "exif_rotated":
        exif = Image.Exif()
        exif[0x0112] = 6  # "rotate 90° clockwise to display"
        return "rotated.jpg", encode(image, "JPEG", quality=95, exif=exif.tobytes())
    raise ValueError(kind)


CONVERTED_UPLOADS = {  # kind → what the note must say
    "greyscale": "greyscale image",
    "rgba": "transparency",
    "cmyk": "CMYK image",
    "png16": "16-bit greyscale",
    "palette": "palette",
    "exif_rotated": "EXIF orientation",
}


# ---------------------------------------------------------------- model discovery (fast)


def fake_export(folder: Path, run: str = "r1") -> Path:
    folder.mkdir(parents=True)
    (folder / "saved_model.pb").write_bytes(b"")
    (folder / "metadata.json").write_text(
        json.dumps({"run": run, "model": "efficientnet_b0", "input_size": [224, 224]})
    )
    return folder


def test_find_models_lists_exports_and_skips_the_rest(tmp_path):
    fake_export(tmp_path / "b1")
    fake_export(tmp_path / "a0")
    (tmp_path / "notes").mkdir()
    (tmp_path / "only_pb").mkdir()
    (tmp_path / "only_pb" / "saved_model.pb").write_bytes(b"")
    fake_export(tmp_path / ".a0.tmp123")  # an export still being written
    (tmp_path / "file.txt").write_text("x")
    exported, skipped = support.find_models(tmp_path)
    assert [p.name for p in exported] == ["a0", "b1"]
    assert [p.name for p in skipped] == ["notes", "only_pb"]
    assert support.find_models(tmp_path / "missing") == ([], [])


def test_model_choices_put_the_requested_model_first(tmp_path):
    models = tmp_path / "saved_models"
    a, b = fake_export(models / "a"), fake_export(models / "b")
    elsewhere = fake_export(tmp_path / "other" / "c")
    assert support.model_choices(launch.PageSettings(models)) == ([a, b], 0, [])
    assert support.model_choices(launch.PageSettings(models, b)) == ([a, b], 1, [])
    relative_b = Path(*b.parts)  # the same folder given another way still matches
    assert support.model_choices(launch.PageSettings(models, relative_b))[1] == 1
    assert support.model_choices(launch.PageSettings(models, elsewhere)) == (
        [elsewhere, a, b],
        0,
        [],
    )


def test_model_label_reads_metadata_without_loading(tmp_path):
    folder = fake_export(tmp_path / "b0", run="baseline")
    assert support.model_label(folder) == "b0 · B0 224 px"
    assert support.model_label(tmp_path / "nothing") == "nothing (not an exported model)"


def test_model_version_changes_when_a_model_is_exported_again(tmp_path):
    folder = fake_export(tmp_path / "b0")
    before = support.model_version(folder)
    os.utime(folder / "metadata.json", (before + 60, before + 60))
    assert support.model_version(folder) == before + 60
    assert support.model_version(tmp_path / "missing") is None


def test_no_model_instructions_name_the_folder_and_the_commands(tmp_path):
    missing = support.no_model_instructions(launch.PageSettings(tmp_path / "nope"))
    assert "does not exist" in missing
    assert f"skin-tf export RUN_DIR --out {tmp_path / 'nope'}/NAME" in missing
    (tmp_path / "half").mkdir()
    text = support.no_model_instructions(launch.PageSettings(tmp_path))
    assert "`half`" in text and "does not exist" not in text


# ---------------------------------------------------------------- page text and CSV (fast)


def test_top_k_frame_is_sorted_and_named():
    probs = np.array([0.05, 0.1, 0.2, 0.0, 0.4, 0.25, 0.0])
    top = support.top_k_frame(probs, 3)
    assert top["class"].tolist() == ["mel", "nv", "bkl"]
    assert top["name"].tolist()[0] == "Melanoma"
    np.testing.assert_allclose(top["probability"], [0.4, 0.25, 0.2])
    assert len(support.top_k_frame(probs, 7)) == 7
    with pytest.raises(ValueError, match="between 1 and 7"):
        support.top_k_frame(probs, 0)


def mel_probs(p_mel: float) -> np.ndarray:
    probs = np.full(len(CLASSES), (1 - p_mel) / (len(CLASSES) - 1))
    probs[MEL_INDEX] = p_mel
    return probs


METADATA = {
    "mel_threshold": {
        "value": 0.3,
        "val_sensitivity": 0.861,
        "val_specificity": 0.702,
        "target_sensitivity": 0.85,
        "chosen_on": "val",
        "test": {"sensitivity": 0.8, "specificity": 0.71},
    }
}


def test_mel_flag_uses_greater_or_equal_and_quotes_validation_figures():
    assert verdict(mel_probs(0.3), 0.3).mel_flag is True  # the exported rule is P >= t
    assert verdict(mel_probs(0.29), 0.3).mel_flag is False
    assert verdict(mel_probs(0.9), None).mel_flag is None
    point = METADATA["mel_threshold"]
    raised = support.mel_flag_text(mel_probs(0.5), point)
    assert raised.startswith("**Melanoma flag raised**: P(mel) = 0.500 ≥ threshold 0.300")
    assert "validation sensitivity 0.861, specificity 0.702" in raised
    assert support.mel_flag_text(mel_probs(0.1), point).startswith(
        "**Below the melanoma threshold**, which is not an all-clear: P(mel) = 0.100 < threshold "
        "0.300"
    )  # what else it says: test_page.py
    none = support.mel_flag_text(mel_probs(0.9), {"value": None})
    assert "no validated operating point" in none and "skin-tf threshold" in none


def test_provenance_markdown_shows_threshold_calibration_and_test_figures():
    text = support.provenance_markdown(
        {
            **METADATA,
            "run": "baseline",
            "model": "efficientnet_b0",
            "input_size": [224, 224],
            "resize": "squash",
            "temperature": 1.5,
            "test_metrics": {"balanced_accuracy": 0.7123, "confusion_matrix": [[1]]},
            "provenance": {"caption": "HAM10000 200x150 copy · weights: imagenet"},
            "exported_utc": "2025-01-01T00:00:00Z",
        }
    )
    assert "- Run: `baseline` (efficientnet_b0)" in text
    assert "temperature 1.500" in text
    assert "threshold 0.300, chosen on val for sensitivity ≥ 0.85" in text
    assert "validation sensitivity 0.861, specificity 0.702" in text
    assert "Same threshold on test: sensitivity 0.800" in text
    assert "balanced accuracy 0.712" in text and "confusion" not in text
    bare = support.provenance_markdown({})
    assert "Melanoma threshold: none" in bare and "Calibration: none" in bare


# ---------------------------------------------------------------- the page under AppTest


def page(monkeypatch, models_dir: Path, model: Path | None = None):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv(launch.ENV_MODELS_DIR, str(models_dir))
    if model is None:
        monkeypatch.delenv(launch.ENV_MODEL, raising=False)
    else:
        monkeypatch.setenv(launch.ENV_MODEL, str(model))
    at = AppTest.from_file(str(launch.APP_PATH), default_timeout=APP_TIMEOUT)
    at.run()
    assert not at.exception, at.exception
    return at


def upload(at, *files: tuple[str, bytes]):
    mime = {".png": "image/png"}
    at.file_uploader[0].set_value(
        [(n, d, mime.get(Path(n).suffix, "image/jpeg")) for n, d in files]
    )
    at.run()
    assert not at.exception, at.exception
    return at


def values(elements) -> list[str]:
    return [str(e.value) for e in elements]


def test_page_without_models_gives_instructions(tmp_path, monkeypatch):
    at = page(monkeypatch, tmp_path / "saved_models")
    (message,) = values(at.error)
    assert "No exported model found" in message and "skin-tf export RUN_DIR" in message
    assert "Not medical advice" in values(at.warning)[0]
    assert not at.file_uploader  # nothing to upload to


@pytest.mark.slow
def test_page_reports_a_broken_model_folder(tmp_path, monkeypatch):
    broken = fake_export(tmp_path / "saved_models" / "broken")  # empty saved_model.pb
    (tmp_path / "saved_models" / "notes").mkdir()
    at = page(monkeypatch, broken.parent)
    assert "Not exported models, skipped: notes" in values(at.sidebar.caption)
    (message,) = values(at.error)
    assert "Could not load the model" in message and "broken" in message
    assert "--overwrite" in message
    assert not at.file_uploader


def top_k_lines(at) -> list[str]:
    return [
        line
        for text in values(at.markdown)
        for line in text.splitlines()
        if line[:1].isdigit() and ". **" in line
    ]


@pytest.mark.slow
def test_real_image_gets_top_k_chart_gradcam_flag_and_csv(demo_model, sample_bytes, monkeypatch):
    at = page(monkeypatch, demo_model.parent)
    # This export has no guard (its fake run has no images to fit one on): the sidebar says so.
    assert any("no out-of-distribution guard" in c for c in values(at.sidebar.caption))
    assert "ui-demo-untrained" in " ".join(values(at.sidebar.markdown))  # provenance
    assert any("not medical advice" in w for w in values(at.sidebar.warning))
    upload(at, (SAMPLE_IMAGE, sample_bytes))
    assert not at.error
    lines = top_k_lines(at)
    assert len(lines) == 3 and lines[0].startswith("1. **")
    assert len(at.get("vega_lite_chart")) == 1  # the top-k bar chart
    captions = [c for image in at.image for c in image.captions]
    assert captions[0] == "Original, 200×150 px"
    assert captions[1].startswith(f"Grad-CAM for the top class ({lines[0].split('**')[1]})")
    flag_texts = [t for t in values(at.info) + values(at.warning) if "threshold 0.150" in t]
    assert len(flag_texts) == 1
    assert (
        "test sensitivity 0.800, specificity 0.500; validation sensitivity 0.900" in flag_texts[0]
    )
    table = at.dataframe[0].value
    assert table["image"].tolist() == [SAMPLE_IMAGE]
    # Seven probabilities rounded to 4 decimals: the sum is off by at most 7 x 0.00005.
    np.testing.assert_allclose(table[[f"p_{c}" for c in CLASSES]].sum(axis=1), 1.0, atol=3.5e-4)
    assert table["mel_flag"][0] == (table["p_mel"][0] >= DEMO_THRESHOLD)
    assert at.get("download_button")[0].label == "Download predictions (CSV)"

    at.sidebar.slider[0].set_value(5).run()  # top-k
    assert len(top_k_lines(at)) == 5
    original, overlay = (image.value for image in at.image)
    at.sidebar.slider[1].set_value(0.9).run()  # overlay alpha: same results, overlay redrawn
    assert not at.exception and len(top_k_lines(at)) == 5
    assert at.image[0].value == original and at.image[1].value != overlay


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # refused anyway
@pytest.mark.parametrize("kind", sorted(BAD_UPLOADS))
def test_bad_upload_gets_its_message(kind, demo_model, sample_bytes, monkeypatch):
    name, data = bad_upload(kind, sample_bytes)
    at = upload(page(monkeypatch, demo_model.parent), (name, data))
    (message,) = values(at.error)
    assert message.startswith(f"**{name}** cannot be analysed: {BAD_UPLOADS[kind]}")
    assert "Upload a JPG or PNG photo" in message
    assert top_k_lines(at) == []
    table = at.dataframe[0].value
    assert table["image"].tolist() == [name] and table["error"][0] == BAD_UPLOADS[kind]
    assert table[["mel_threshold", "mel_flag", "p_mel"]].iloc[0].isna().all()


@pytest.mark.slow
@pytest.mark.parametrize("kind", sorted(CONVERTED_UPLOADS))
def test_unusual_but_valid_image_is_converted_and_predicted(
    kind, demo_model, sample_image, monkeypatch
):
    name, data = converted_upload(kind, sample_image)
    at = upload(page(monkeypatch, demo_model.parent), (name, data))
    assert not at.error
    assert any(CONVERTED_UPLOADS[kind] in t for t in values(at.info))
    shown = "150×200" if kind == "exif_rotated" else "200×150"  # upright, as a viewer shows it
    assert at.image[0].captions == [f"Original, {shown} px"]
    assert len(top_k_lines(at)) == 3
    table = at.dataframe[0].value
    assert table["error"].isna().all() and CONVERTED_UPLOADS[kind] in table["notes"][0]


@pytest.mark.slow
def test_several_uploads_bad_ones_do_not_stop_the_others(
    demo_model, sample_bytes, real_data_root, monkeypatch
):
    second = "ISIC_0024307.jpg"
    files = [
        (SAMPLE_IMAGE, sample_bytes),
        bad_upload("not_an_image", sample_bytes),
        (second, (real_data_root / "images" / second).read_bytes()),
        bad_upload("truncated_jpeg", sample_bytes),
        bad_upload("empty", sample_bytes),
    ]
    at = upload(page(monkeypatch, demo_model.parent), *files)
    assert len(at.error) == 3 and len(top_k_lines(at)) == 6
    table = at.dataframe[0].value
    assert table["image"].tolist() == [name for name, _ in files]
    assert table["error"].notna().tolist() == [False, True, False, True, True]
    assert table["mel_threshold"].notna().tolist() == [True, False, True, False, False]
    shown = at.dataframe[0].proto  # what the browser's grid is told
    assert shown.placeholder == ""  # empty cells stay blank instead of a grey "None"
    columns = json.loads(shown.columns)
    assert columns["error"]["width"] >= 7 * table["error"].str.len().max()  # whole, not cut
    assert columns["p_mel"]["type_config"]["format"] == "%.4f"
    assert list(shown.column_order)[:2] == ["image", "p_akiec"]  # the answer first (issue 34)


@pytest.mark.slow
def test_model_picker_offers_the_requested_model_and_the_exports(
    demo_model, sample_bytes, tmp_path, monkeypatch
):
    no_threshold = shutil.copytree(demo_model, tmp_path / "elsewhere" / "no_threshold")
    metadata = json.loads((no_threshold / "metadata.json").read_text())
    metadata["mel_threshold"] = {"value": None, "note": "no operating_point.json"}
    (no_threshold / "metadata.json").write_text(json.dumps(metadata))

    at = page(monkeypatch, demo_model.parent, model=no_threshold)  # via SKIN_TF_MODEL
    picker = at.sidebar.selectbox[0]
    assert list(picker.options) == ["no_threshold · B0 128 px", "tiny-b0 · B0 128 px"]
    assert picker.value == no_threshold
    assert "Melanoma threshold: none" in " ".join(values(at.sidebar.markdown))
    upload(at, (SAMPLE_IMAGE, sample_bytes))
    assert any("no validated operating point" in t for t in values(at.info))

    picker.set_value(demo_model).run()
    assert not at.exception
    assert any("threshold 0.150" in t for t in values(at.info) + values(at.warning))


@pytest.mark.slow
def test_a_map_that_did_not_beat_a_centred_blob_is_shown_only_on_request(
    demo_model, sample_bytes, tmp_path, monkeypatch
):
    """An export whose `skin-tf explain-check` found no method better than a centred blob: the
    page says so plainly where the map was, and keeps the map in an expander, labelled."""
    checked = shutil.copytree(demo_model, tmp_path / "models" / "checked")
    metadata = json.loads((checked / "metadata.json").read_text())
    headline = "No heatmap method beat a centred blob on this model: the best that passes …"
    metadata["explain"] = {
        "method": "gradcam", "title": "Grad-CAM", "checked": True, "explanation": False,
        "deletion_auc": 0.362, "centre_deletion_auc": 0.332, "n_images": 200,
        "headline": headline,
    }  # fmt: skip
    (checked / "metadata.json").write_text(json.dumps(metadata))
    at = page(monkeypatch, checked.parent, model=checked)
    upload(at, (SAMPLE_IMAGE, sample_bytes))
    assert not at.exception
    notes = [text for text in values(at.info) if text.startswith(headline)]
    assert len(notes) == 1 and "only on request" in notes[0]
    assert "The map anyway (not an explanation)" in [e.label for e in at.expander]
    captions = [c for image in at.image for c in image.captions]
    assert "Deletion AUC 0.362 vs 0.332 for a centred blob" in captions[1]
    assert captions[1].endswith("Not an explanation.")


@pytest.mark.slow
def test_page_scores_with_the_chosen_engine_and_explains_with_the_savedmodel(
    real_export, sample_bytes, monkeypatch
):
    """The engine picker starts at the export's default (or SKIN_TF_ENGINE); the probabilities,
    the melanoma threshold and the CSV follow the engine, Grad-CAM stays the SavedModel's."""
    metadata = json.loads((real_export / "metadata.json").read_text())
    default = metadata["engines"]["default"]
    at = upload(page(monkeypatch, real_export.parent), (SAMPLE_IMAGE, sample_bytes))
    picker = at.sidebar.selectbox[1]
    assert picker.label == "Engine for the probabilities" and picker.value == default
    assert [o.split(" ")[0] for o in picker.options] == ["tflite-int8", "tflite", "savedmodel"]
    sidebar = " ".join(values(at.sidebar.markdown))
    assert "Heatmap: SavedModel `explain`" in sidebar and "Probabilities: LiteRT" in sidebar
    table = at.dataframe[0].value
    assert table["engine"].tolist() == [default]
    engine_point = metadata["engines"][default]["mel_threshold"]  # the int8 model has its own
    assert table["mel_threshold"][0] == engine_point["value"]

    picker.set_value("savedmodel").run()
    assert not at.exception and not at.error
    table_saved = at.dataframe[0].value
    assert table_saved["engine"].tolist() == ["savedmodel"]
    assert table_saved["mel_threshold"][0] == metadata["mel_threshold"]["value"]
    columns = [f"p_{c}" for c in CLASSES]
    diff = np.abs(table_saved[columns].to_numpy() - table[columns].to_numpy()).max()
    assert diff < 0.5  # another engine, the same model
    if default == "tflite-int8":  # the float LiteRT model can match to the table's 4 decimals
        assert diff > 0

    monkeypatch.setenv(launch.ENV_ENGINE, "tflite")
    at = upload(page(monkeypatch, real_export.parent), (SAMPLE_IMAGE, sample_bytes))
    assert at.sidebar.selectbox[1].value == "tflite"
    assert at.dataframe[0].value["engine"].tolist() == ["tflite"]


@pytest.mark.slow
def test_page_says_an_old_export_has_only_the_savedmodel(demo_model, tmp_path, monkeypatch):
    old = shutil.copytree(demo_model, tmp_path / "saved_models" / "old")
    metadata = json.loads((old / "metadata.json").read_text())
    metadata.pop("engines")
    (old / "metadata.json").write_text(json.dumps(metadata))
    for name in ("model.tflite", "model_int8.tflite"):
        (old / name).unlink(missing_ok=True)
    at = page(monkeypatch, old.parent)
    assert list(at.sidebar.selectbox[1].options) == ["savedmodel"]
    assert any("re-run `skin-tf export" in c for c in values(at.sidebar.caption))


@pytest.mark.slow
def test_page_with_a_damaged_tflite_names_the_fix_and_offers_the_other_engines(
    demo_model, tmp_path, monkeypatch
):
    broken = shutil.copytree(demo_model, tmp_path / "saved_models" / "broken")
    (broken / "model.tflite").write_bytes(b"not a flatbuffer")  # the default engine's file
    at = page(monkeypatch, broken.parent)
    (message,) = values(at.error)
    assert "Could not load the tflite engine" in message and "skin-tf export" in message
    assert "Pick another engine" in message and "savedmodel" in at.sidebar.selectbox[1].options[-1]
    at.sidebar.selectbox[1].set_value("savedmodel").run()
    assert not at.exception and not at.error and at.file_uploader


@pytest.mark.slow
def test_an_upload_that_is_no_lesion_image_gets_a_notice_not_an_answer(
    real_export, sample_bytes, monkeypatch
):
    """With a guarded export (the real miniature run's, tests/serving/conftest.py): a photo of a
    cat gets the notice, its numbers folded away and no melanoma box; the real lesion beside it
    is answered as before; the table (and so its CSV) carries ood_score and in_distribution."""
    import skimage.data

    cat = encode(Image.fromarray(skimage.data.chelsea()), "PNG")
    at = page(monkeypatch, real_export.parent)
    assert any("Out-of-distribution guard" in c for c in values(at.sidebar.caption))
    upload(at, (SAMPLE_IMAGE, sample_bytes), ("cat.png", cat))
    assert not at.error
    (notice,) = [t for t in values(at.info) if "does not look like a dermatoscopic image" in t]
    assert "no answer" in notice and "not a result" in notice
    assert len(top_k_lines(at)) == 3  # the lesion's top-k list only
    assert len([t for t in values(at.info) + values(at.warning) if "P(mel)" in t]) == 1
    folded = [e.label for e in at.expander if "not an answer" in e.label]
    assert folded == ["What the model computed anyway (not an answer)"]  # the cat's only
    assert "no melanoma flag" in " ".join(values(at.caption))
    table = at.dataframe[0].value
    assert table["image"].tolist() == [SAMPLE_IMAGE, "cat.png"]
    assert table["in_distribution"].tolist() == [True, False]
    assert table["ood_score"][1] > table["ood_score"][0]
    assert pd.isna(table["mel_flag"][1]) and not pd.isna(table["mel_flag"][0])
    assert table["notes"][1] == REJECTED_REASON + "."


@pytest.mark.slow
def test_a_model_with_patient_fields_offers_them_per_upload(
    real_meta_export, sample_bytes, monkeypatch
):
    """Issue 31: for an export trained with age, sex and site, each upload gets the three
    optional inputs; with none given the page says so, and the answer, the map and the table
    follow the fields once given (the SavedModel engine, whose probabilities the table shows)."""
    at = page(monkeypatch, real_meta_export.parent)
    assert any("also takes the patient's age, sex, localization" in c
               for c in values(at.sidebar.caption))  # fmt: skip
    at.sidebar.selectbox[1].set_value("savedmodel").run()
    upload(at, (SAMPLE_IMAGE, sample_bytes))
    assert "Scored with: no patient fields given." in values(at.caption)
    before = at.dataframe[0].value
    assert before["patient_fields"].tolist() == ["no patient fields given"]
    at.number_input[0].set_value(70).run()
    at.selectbox(key=f"fields:0:{SAMPLE_IMAGE}:localization").set_value("face").run()
    assert not at.exception, at.exception
    assert "Scored with: age 70, site face (sex not given)." in values(at.caption)
    captions = [c for image in at.image for c in image.captions]
    assert any("the answer also used age 70, site face (sex not given)" in c for c in captions)
    after = at.dataframe[0].value
    assert after["patient_fields"].tolist() == ["age 70, site face (sex not given)"]
    probabilities = [f"p_{c}" for c in CLASSES]
    assert np.abs(after[probabilities].to_numpy() - before[probabilities].to_numpy()).max() > 1e-3
