"""The verdict every client shows for an image (issue 34): the rule, and every client of every
engine following it on a real export."""

from __future__ import annotations

import io
import json

import numpy as np
import pandas as pd
import pytest

from skin_tf.serving.served import load_served
from skin_tf.serving.verdict import (
    COLOUR_REASON,
    NO_THRESHOLD_REASON,
    REJECTED_REASON,
    Verdict,
    verdict,
)
from tests.serving.test_served import copy_export


def test_the_verdict_answers_only_an_image_that_was_read_and_not_rejected():
    probs = np.array([0.05, 0.05, 0.1, 0.0, 0.3, 0.5, 0.0])
    assert verdict(probs, 0.3) == Verdict("answer", "nv", True, 0.3, 0.3, None)  # P >= t
    assert verdict(probs, 0.31).mel_flag is False
    assert verdict(probs, 0.3, in_distribution=True).mel_flag is True  # a guard that kept it
    assert verdict(probs, None) == Verdict("answer", "nv", None, 0.3, None, NO_THRESHOLD_REASON)
    rejected = verdict(probs, 0.3, in_distribution=False)
    assert rejected == Verdict("out_of_distribution", reason=REJECTED_REASON)
    assert not rejected.answered and "no melanoma flag" in rejected.reason
    # Why: a score above the engine's threshold, or (within it) the guard's colour check.
    assert verdict(probs, 0.3, False, None, 41.7, 3.05).reason == REJECTED_REASON
    greyscale = verdict(probs, 0.3, False, None, 1.2, 3.05)
    assert greyscale == Verdict("out_of_distribution", reason=COLOUR_REASON)
    assert verdict(None, 0.3, error="empty file (0 bytes)") == Verdict(
        "error", reason="empty file (0 bytes)"
    )
    with pytest.raises(ValueError, match="probabilities or the error"):
        verdict(None, 0.3)


@pytest.mark.slow
def test_no_client_of_any_engine_flags_an_image_the_guard_rejects(
    real_export, real_data_root, tmp_path, capsys
):
    """Issue 34, on the real miniature run's export with every melanoma threshold set to 0, so
    that every P(mel) reaches it: a real lesion is answered and flagged by every client, while a
    photo of a cat and a portrait, which the guard rejects, get no class and no flag from
    `skin-tf predict --json`, its text, the page's melanoma box, its table or its CSV."""
    import skimage.data
    from PIL import Image

    from skin_tf.cli.main import main
    from skin_tf.serving import table
    from skin_tf.serving.page import mel_flag_text
    from skin_tf.serving.upload import analyse_upload

    def every_p_mel_reaches_the_threshold(metadata):
        metadata["mel_threshold"]["value"] = 0.0
        metadata["engines"]["tflite-int8"]["mel_threshold"]["value"] = 0.0

    export = copy_export(real_export, tmp_path, every_p_mel_reaches_the_threshold)
    files = [real_data_root / "images" / "ISIC_0024306.jpg"]
    for name, pixels in (
        ("cat.png", skimage.data.chelsea()),
        ("portrait.png", skimage.data.astronaut()),
    ):
        Image.fromarray(pixels).save(tmp_path / name)
        files.append(tmp_path / name)
    paths = [str(f) for f in files]
    for engine in ("savedmodel", "tflite", "tflite-int8"):
        assert main(["predict", str(export), *paths, "--json", "--engine", engine]) == 0
        records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        assert [r["in_distribution"] for r in records] == [True, False, False], engine
        assert [r["mel_flag"] for r in records] == [True, None, None], engine
        assert [r["verdict"] for r in records[1:]] == ["out_of_distribution"] * 2
        assert records[1]["top_class"] is None and records[1]["probs"]["mel"] >= 0.0
        assert main(["predict", str(export), *paths, "--engine", engine]) == 0
        text = capsys.readouterr().out.splitlines()
        assert "melanoma flag: YES" in text[0], engine
        assert all("no melanoma flag" in line and "YES" not in line for line in text[1:])

        served = load_served(export, engine=engine)
        uploads = [analyse_upload(served, f.name, f.read_bytes()) for f in files]
        boxes = [mel_flag_text(u.probs, served.mel_point, None, u.in_distribution) for u in uploads]
        assert boxes[0].startswith("**Melanoma flag raised**"), engine
        assert all(box.startswith("**No melanoma flag**") for box in boxes[1:]), engine
        frame = table.predictions_frame(uploads, served.threshold, export.name, engine)
        assert frame["mel_flag"].tolist() == [True, None, None], engine
        assert frame["top_class"].isna().tolist() == [False, True, True]
        csv = pd.read_csv(io.BytesIO(table.predictions_csv(frame)), dtype=str,
                          keep_default_na=False)  # fmt: skip
        assert csv["mel_flag"].tolist() == ["True", "", ""]
