"""Command-line inference: per-file results and errors, text and JSON output (reading an image
and its errors: tests/data/test_images.py)."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from skin_tf.cli.model_commands import _predict as predict_command
from skin_tf.data.ham10000 import CLASSES, MEL_INDEX
from skin_tf.data.pipeline import load_image
from skin_tf.serving.predict import format_predictions, predict_files
from skin_tf.serving.served import Assessment
from skin_tf.serving.verdict import COLOUR_REASON
from tests.data.test_images import encoded, png_header, rgb


class FakeServed:
    """Stands in for ServedModel: fixed probabilities, records what it was given."""

    image_size = (64, 64)
    resize = "squash"
    disclaimer = "research use only"
    engine = "tflite"
    engine_note = "the fake's default"

    guard_note = None
    ood_threshold = 1.0  # the fake guard's threshold (see assess)
    fields: tuple[str, ...] = ()  # an image-only export
    path = Path("fake_export")

    def __init__(
        self, threshold: float | None = 0.3, p_mel: float = 0.4, ood: list[float] | None = None
    ):
        self.threshold = threshold
        self.ood = ood  # ood_score per image in call order (> 1.0: out of distribution)
        self.probs = np.full(len(CLASSES), (1 - p_mel - 0.35) / 5)
        self.probs[[MEL_INDEX, CLASSES.index("nv")]] = p_mel, 0.35
        self.inputs: list[np.ndarray] = []
        self.batches: list[int] = []

    def assess(self, images: list[np.ndarray], fields=None) -> Assessment:
        assert fields is None  # an image-only export is never given fields
        start = len(self.inputs)
        self.inputs.extend(images)
        self.batches.append(len(images))
        probs = np.stack([self.probs for _ in images])
        if self.ood is None:
            return Assessment(probs)
        scores = np.array(self.ood[start : start + len(images)])
        return Assessment(probs, scores, scores <= 1.0)


# ---------------------------------------------------------------- predict_files / formatting


@pytest.fixture()
def image_folder(tmp_path) -> Path:
    folder = tmp_path / "images"
    folder.mkdir()
    for name in ("b.jpg", "a.png"):
        (folder / name).write_bytes(encoded(rgb(), "JPEG" if name.endswith("jpg") else "PNG"))
    (folder / "notes.txt").write_text("not an image, and not picked up from a folder")
    return folder


def test_bad_files_are_reported_and_the_rest_still_run(image_folder, tmp_path):
    fake = tmp_path / "fake.jpg"
    fake.write_text("plain text with a .jpg name")
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(encoded(rgb(), "JPEG")[:300])
    served = FakeServed()
    paths = [image_folder, fake, tmp_path / "missing.jpg", cut, image_folder / "a.png"]
    results = predict_files(served, paths, top_k=2)

    assert [Path(r["image"]).name for r in results] == [
        "a.png", "b.jpg", "fake.jpg", "missing.jpg", "cut.jpg", "a.png",
    ]  # fmt: skip
    errors = {Path(r["image"]).name: r["error"] for r in results if r["error"]}
    assert errors["fake.jpg"].startswith("not an image")
    assert errors["missing.jpg"] == "file not found"
    assert errors["cut.jpg"] == "truncated or damaged JPEG file: re-export or re-download it"
    good = [r for r in results if r["error"] is None]
    assert len(good) == 3 == len(served.inputs)
    assert all(x.shape == (64, 64, 3) for x in served.inputs)  # decoded by the pipeline
    first = good[0]
    assert first["top"] == [("mel", pytest.approx(0.4)), ("nv", pytest.approx(0.35))]
    assert first["top_class"] == "mel" and first["mel_flag"] is True
    assert sum(first["probs"].values()) == pytest.approx(1.0)


def test_images_are_scored_in_batches_and_results_keep_the_file_order(image_folder, tmp_path):
    for name in ("c.jpg", "d.jpg", "e.jpg"):
        (image_folder / name).write_bytes(encoded(rgb(), "JPEG"))
    junk = tmp_path / "junk.jpg"
    junk.write_text("not an image")
    served = FakeServed()
    results = predict_files(served, [image_folder, junk], batch_size=2)
    names = [Path(r["image"]).name for r in results]
    assert names == ["a.png", "b.jpg", "c.jpg", "d.jpg", "e.jpg", "junk.jpg"]
    assert served.batches == [2, 2, 1]  # five readable images, two per call
    assert [r["error"] is None for r in results] == [True] * 5 + [False]
    assert {r["engine"] for r in results[:5]} == {"tflite"} and results[5]["engine"] is None
    with pytest.raises(ValueError, match="batch_size"):
        predict_files(served, [image_folder], batch_size=0)


def test_mel_flag_follows_the_threshold_or_is_absent(image_folder):
    below = predict_files(FakeServed(threshold=0.5), [image_folder])[0]
    assert below["mel_flag"] is False
    none = predict_files(FakeServed(threshold=None), [image_folder])[0]
    assert none["mel_flag"] is None and "no melanoma operating threshold" in none["reason"]
    assert none["verdict"] == "answer" and none["top_class"] == "mel"  # answered, no flag


def test_text_and_json_output(image_folder, tmp_path):
    missing = tmp_path / "gone.png"
    results = predict_files(FakeServed(), [image_folder / "a.png", missing], top_k=3)
    text = format_predictions(results).splitlines()
    assert text[0].endswith("a.png: mel 0.400 | nv 0.350 | akiec 0.050 | melanoma flag: YES "
                            "(P(mel) 0.400 >= 0.300)")  # fmt: skip
    assert text[1] == f"{missing}: ERROR file not found"
    lines = [json.loads(line) for line in format_predictions(results, json=True).splitlines()]
    assert set(lines[0]) >= {"image", "probs", "top", "top_class", "mel_flag", "error"}
    assert (lines[0]["verdict"], lines[0]["mel_threshold"], lines[0]["reason"]) == (
        "answer", 0.3, None
    )  # fmt: skip
    assert (lines[1]["verdict"], lines[1]["reason"]) == ("error", "file not found")
    assert list(lines[0]["probs"]) == list(CLASSES)
    assert lines[0]["top"][0] == {"class": "mel", "p": pytest.approx(0.4)}
    assert lines[1]["error"] == "file not found" and lines[1]["probs"] is None
    assert lines[0]["ood_score"] is None and lines[0]["in_distribution"] is None  # no guard


def test_the_guards_verdict_is_in_every_result(image_folder, tmp_path):
    """ood_score and in_distribution per image (JSON), and a plain-words line for an image the
    guard rejects (text); files that fail have neither."""
    missing = tmp_path / "gone.png"
    served = FakeServed(ood=[0.4, 7.5])
    results = predict_files(served, [image_folder / "a.png", missing, image_folder / "b.jpg"])
    lines = [json.loads(line) for line in format_predictions(results, json=True).splitlines()]
    assert (lines[0]["ood_score"], lines[0]["in_distribution"]) == (0.4, True)
    assert (lines[2]["ood_score"], lines[2]["in_distribution"]) == (7.5, False)
    assert lines[1]["ood_score"] is None and lines[1]["in_distribution"] is None
    text = format_predictions(results).splitlines()
    assert "out of distribution" not in text[0]
    assert text[2].startswith(f"{image_folder / 'b.jpg'}: out of distribution (ood_score 7.5): not")
    assert "no melanoma flag is given (the model's output anyway: mel 0.400" in text[2]
    assert "melanoma flag: YES" not in text[2]


def test_an_image_the_colour_check_refuses_says_so_in_json_and_text(image_folder):
    """An image rejected although its score is within the threshold was refused by the guard's
    colour check: the verdict's reason says so, and the text line carries the same words."""

    class Greyscale(FakeServed):
        def assess(self, images, fields=None):
            out = super().assess(images, fields)
            return Assessment(out.probs, out.ood_score, np.zeros(len(images), bool))

    results = predict_files(Greyscale(ood=[0.4, 0.5]), [image_folder / "a.png"])
    line = json.loads(format_predictions(results, json=True))
    assert line["verdict"] == "out_of_distribution" and line["reason"] == COLOUR_REASON
    assert line["top_class"] is None and line["mel_flag"] is None
    text = format_predictions(results)
    assert "(ood_score 0.4): it has far less colour than any dermatoscopic image" in text


def test_an_image_the_guard_rejects_gets_no_class_and_no_flag_in_json_as_in_text(image_folder):
    """Issue 34: `--json` raised the melanoma flag (P(mel) 0.4 >= 0.3) for an image the guard
    rejected, while the text said "no melanoma flag". Now both follow the one verdict."""
    served = FakeServed(threshold=0.3, p_mel=0.4, ood=[0.4, 7.5])
    results = predict_files(served, [image_folder / "a.png", image_folder / "b.jpg"])
    kept, rejected = (
        json.loads(line) for line in format_predictions(results, json=True).split("\n")
    )
    assert (kept["verdict"], kept["top_class"], kept["mel_flag"]) == ("answer", "mel", True)
    assert rejected["in_distribution"] is False and rejected["verdict"] == "out_of_distribution"
    assert rejected["mel_flag"] is None and rejected["top_class"] is None
    assert rejected["mel_threshold"] is None and "no melanoma flag" in rejected["reason"]
    assert rejected["probs"]["mel"] == pytest.approx(0.4)  # what the engine computed, kept
    assert "melanoma flag: YES" in format_predictions(results).splitlines()[0]
    assert "melanoma flag: YES" not in format_predictions(results).splitlines()[1]


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # refused anyway
def test_empty_and_huge_files_are_named_as_on_the_page(tmp_path):
    """The same words as the Streamlit page (both read through skin_tf.data.images)."""
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    huge = tmp_path / "huge.png"
    huge.write_bytes(png_header(12_000, 12_000))
    results = predict_files(FakeServed(), [empty, huge])
    assert format_predictions(results).splitlines() == [
        f"{empty}: ERROR empty file (0 bytes)",
        f"{huge}: ERROR too large: 144 megapixels (max 40 megapixels)",
    ]


def test_top_k_and_empty_folders_are_checked(tmp_path):
    with pytest.raises(ValueError, match="top_k"):
        predict_files(FakeServed(), [], top_k=9)
    with pytest.raises(ValueError, match="has no image files"):
        predict_files(FakeServed(), [tmp_path])


def test_predict_command_exit_code_and_json(image_folder, tmp_path, monkeypatch, capsys):
    import skin_tf.serving.served

    engines = []

    def fake_load(path, engine=None):
        engines.append(engine)
        return FakeServed()

    monkeypatch.setattr(skin_tf.serving.served, "load_served", fake_load)
    args = argparse.Namespace(
        model=tmp_path, images=[str(image_folder)], json=True, top_k=3, engine=None,
        batch_size=32, meta=None,
    )  # fmt: skip
    assert predict_command(args) == 0
    captured = capsys.readouterr()
    assert len(captured.out.splitlines()) == 2
    assert json.loads(captured.out.splitlines()[0])["engine"] == "tflite"
    assert "engine: tflite (the fake's default)" in captured.err  # the engine is stated
    args.engine = "savedmodel"
    args.images.append(str(tmp_path / "nope.jpg"))
    args.json = False
    assert predict_command(args) == 1
    assert "ERROR file not found" in capsys.readouterr().out
    assert engines == [None, "savedmodel"]  # --engine reaches load_served


# ---------------------------------------------------------------- a real exported model


@pytest.mark.slow
def test_real_images_through_an_exported_model(real_frame, tmp_path):
    import keras

    from skin_tf.models.classifier import build_classifier
    from skin_tf.serving.archive import export_model
    from skin_tf.serving.served import load_served

    keras.utils.set_random_seed(0)
    model = build_classifier("efficientnet_b0", 64, weights=None)
    served = load_served(export_model(model, tmp_path / "b0"))
    paths = [Path(p) for p in real_frame["path"].iloc[:3]]
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(paths[0].read_bytes()[:2000])
    junk = tmp_path / "junk.jpg"
    junk.write_text("not a picture")
    results = predict_files(served, [paths[0], junk, paths[1], cut, paths[2]])

    assert [r["error"] is None for r in results] == [True, False, True, False, True]
    assert results[1]["error"].startswith("not an image")
    assert results[3]["error"] == "truncated or damaged JPEG file: re-export or re-download it"
    # The CLI scores a file exactly as evaluation did: pipeline decode + the Keras model.
    expected = model.predict(load_image(paths[1], 64)[None].astype("float32"), verbose=0)[0]
    np.testing.assert_allclose(list(results[2]["probs"].values()), expected, atol=1e-5)
    objects = [json.loads(line) for line in format_predictions(results, json=True).splitlines()]
    assert len(objects) == 5 and objects[0]["mel_flag"] is None  # no threshold: no flag


@pytest.mark.slow
def test_predict_over_a_real_folder_with_each_engine(real_export, real_frame, tmp_path, capsys):
    """`skin-tf predict FOLDER --engine E`: LiteRT float equals the SavedModel to 1e-4, int8 flags
    melanoma with its own threshold, and without --engine the export's default is used and said."""
    from skin_tf.cli.main import main

    folder = tmp_path / "lesions"
    folder.mkdir()
    for path in real_frame.groupby("dx")["path"].head(2):
        (folder / Path(path).name).symlink_to(path)
    metadata = json.loads((real_export / "metadata.json").read_text())
    runs = {}
    for engine in (None, "savedmodel", "tflite", "tflite-int8"):
        extra = [] if engine is None else ["--engine", engine]
        assert main(["predict", str(real_export), str(folder), "--json", *extra]) == 0
        out, err = capsys.readouterr()
        runs[engine] = [json.loads(line) for line in out.splitlines()]
        assert len(runs[engine]) == 14 and all(r["error"] is None for r in runs[engine])
        stated = engine or metadata["engines"]["default"]
        assert f"engine: {stated}" in err and {r["engine"] for r in runs[engine]} == {stated}
        assert ("default of this export" in err) == (engine is None)
        assert all(isinstance(r["in_distribution"], bool) for r in runs[engine])  # guarded

    def probs(engine):
        return np.array([list(r["probs"].values()) for r in runs[engine]])

    assert np.abs(probs("tflite") - probs("savedmodel")).max() <= 1e-4
    int8_threshold = metadata["engines"]["tflite-int8"]["mel_threshold"]["value"]
    assert [r["mel_flag"] for r in runs["tflite-int8"]] == [
        r["probs"]["mel"] >= int8_threshold for r in runs["tflite-int8"]
    ]
    assert runs[None] == runs[metadata["engines"]["default"]]


@pytest.mark.slow
def test_predict_on_a_real_image_says_only_what_it_has_to_say(real_export, real_data_root):
    """Issue 34: `skin-tf predict`, run as a user runs it (a new process, no TF_CPP_MIN_LOG_LEVEL
    of ours), writes no line of TensorFlow's or LiteRT's C++ log and no CUDA error; --verbose
    brings that log back (so the quiet run is quiet because of the filter, not by chance)."""
    from tests.cli.test_quiet import C_LOG_LINE

    image = real_data_root / "images" / "ISIC_0024306.jpg"
    command = [str(Path(sys.executable).with_name("skin-tf")), "predict", str(real_export)]
    unset = ("TF_CPP_MIN_LOG_LEVEL", "SKIN_TF_VERBOSE")
    env = {key: value for key, value in os.environ.items() if key not in unset}
    runs = {
        flag: subprocess.run(
            [*command, str(image), *flag], env=env, capture_output=True, text=True, timeout=600
        )
        for flag in ((), ("--verbose",))
    }
    quiet, verbose = runs[()], runs[("--verbose",)]
    assert quiet.returncode == 0 == verbose.returncode, quiet.stderr + verbose.stderr
    assert f"{image}: " in quiet.stdout and "melanoma flag" in quiet.stdout
    assert not C_LOG_LINE.search(quiet.stderr), quiet.stderr
    assert "CUDA error" not in quiet.stderr and "cuInit" not in quiet.stderr
    assert quiet.stderr.splitlines()[0].startswith("engine: ")  # its own first line
    assert C_LOG_LINE.search(verbose.stderr), verbose.stderr


def test_an_image_only_export_refuses_a_fields_file(image_folder, tmp_path):
    """--meta with a model trained on images alone is an error, not silently ignored."""
    table = tmp_path / "fields.csv"
    table.write_text("image,age\nb.jpg,55\n")
    with pytest.raises(ValueError, match="takes images alone"):
        predict_files(FakeServed(), [image_folder], meta=table)


@pytest.mark.slow
def test_predict_with_patient_fields_echoes_what_it_used(
    real_meta_export, real_export, real_frame, tmp_path, capsys
):
    """Issue 31: `skin-tf predict MODEL IMAGES --meta FILE.csv` on an export trained with age,
    sex and site. Every engine gives what the SavedModel gives with the same fields; the JSON
    echoes the fields each image was scored with; an image without a row is scored as one with
    nothing given (the same as no --meta at all); an unknown site is an error naming the valid
    ones; the text says which fields were used."""
    from skin_tf.cli.main import main

    folder = tmp_path / "lesions"
    folder.mkdir()
    rows = real_frame.groupby("dx").head(2)
    for path in rows["path"]:
        (folder / Path(path).name).symlink_to(path)
    table = rows.assign(image=[Path(p).stem for p in rows["path"]])[
        ["image", "age", "sex", "localization"]
    ].iloc[:-3]  # the last three images have no row: nothing given
    fields_csv = tmp_path / "fields.csv"
    table.to_csv(fields_csv, index=False)

    def run(*extra: str) -> list[dict]:
        assert main(["predict", str(real_meta_export), str(folder), "--json", *extra]) == 0
        return [json.loads(line) for line in capsys.readouterr().out.splitlines()]

    given = {e: run("--meta", str(fields_csv), "--engine", e)
             for e in ("savedmodel", "tflite", "tflite-int8")}  # fmt: skip
    by_name = {Path(r["image"]).stem: r for r in given["savedmodel"]}
    for _, row in table.iterrows():
        used = by_name[row["image"]]["patient_fields"]
        assert used["localization"] == (None if row["localization"] == "unknown"
                                        else row["localization"])  # fmt: skip
        assert used["age"] == (None if np.isnan(row["age"]) else row["age"])
    unlisted = [r for r in given["savedmodel"] if Path(r["image"]).stem not in set(table["image"])]
    assert len(unlisted) == 3
    assert all(
        r["patient_fields"] == dict.fromkeys(("age", "sex", "localization")) for r in unlisted
    )

    def probs(results):
        return np.array([list(r["probs"].values()) for r in results])

    assert np.abs(probs(given["tflite"]) - probs(given["savedmodel"])).max() <= 1e-4
    # int8 is not faithful to the digit (this probe's export: top-1 agreement 0.9 on val)
    top = {e: probs(r).argmax(axis=1) for e, r in given.items()}
    assert np.mean(top["tflite-int8"] == top["savedmodel"]) >= 0.7
    blank = run("--engine", "savedmodel")
    blank_by = {r["image"]: r for r in blank}
    for r in unlisted:
        assert np.allclose(list(blank_by[r["image"]]["probs"].values()), list(r["probs"].values()),
                           atol=1e-6)  # fmt: skip
    listed = [r for r in given["savedmodel"] if r not in unlisted]
    assert max(np.abs(np.subtract(list(r["probs"].values()),
                                  list(blank_by[r["image"]]["probs"].values()))).max()
               for r in listed) > 1e-3  # the fields change the answer  # fmt: skip
    assert [r["ood_score"] for r in blank] == pytest.approx(
        [r["ood_score"] for r in given["savedmodel"]], rel=1e-5
    )  # the guard judges the image alone

    assert main(["predict", str(real_meta_export), str(folder), "--meta", str(fields_csv)]) == 0
    text = capsys.readouterr().out
    assert "no patient fields given" in text and "site " in text

    bad = tmp_path / "bad.csv"
    bad.write_text(f"image,localization\n{table['image'].iloc[0]},elbow\n")
    assert main(["predict", str(real_meta_export), str(folder), "--meta", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "elbow" in err and "upper extremity" in err
    assert main(["predict", str(real_export), str(folder), "--meta", str(fields_csv)]) == 2
    assert "takes images alone" in capsys.readouterr().err
