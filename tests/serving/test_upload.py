"""One upload: the notes on what reading it changed, the Grad-CAM caption and the notice for a
picture the guard rejects (the page around it:
test_app.py, which also holds the upload files these tests reuse)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from skin_tf.serving import upload as analysis
from tests.serving.test_app import CONVERTED_UPLOADS, converted_upload, encode


@pytest.fixture(scope="module")
def synthetic_image() -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 255, (60, 80, 3), dtype=np.uint8))


@pytest.mark.parametrize("kind", sorted(CONVERTED_UPLOADS))
def test_conversion_notes_say_what_was_changed(kind, synthetic_image):
    _, data = converted_upload(kind, synthetic_image)
    notes = " ".join(analysis.conversion_notes(data))
    assert CONVERTED_UPLOADS[kind] in notes
    grey = kind in {"greyscale", "png16"}
    assert ("trained on colour" in notes) == grey


def test_plain_rgb_and_unreadable_files_get_no_notes(synthetic_image):
    assert analysis.conversion_notes(encode(synthetic_image, "JPEG")) == []
    assert analysis.conversion_notes(b"not an image") == []


def test_gradcam_caption_names_the_class_the_map_is_for():
    same = analysis.UploadResult("a", probs=np.eye(7)[4], heatmap_class="mel")
    assert analysis.gradcam_caption(same).startswith("Grad-CAM for the top class (mel)")
    other = analysis.UploadResult("a", probs=np.eye(7)[4], heatmap_class="nv")
    text = analysis.gradcam_caption(other)
    assert text.startswith("Grad-CAM for nv, the SavedModel's top class")
    assert "this engine's top class is mel" in text


def test_a_rejected_upload_gets_a_plain_notice_and_the_others_none():
    UploadResult, ood_notice = analysis.UploadResult, analysis.ood_notice
    rejected = UploadResult("cat.jpg", probs=np.eye(7)[4], ood_score=41.7, in_distribution=False,
                            ood_threshold=2.01)  # fmt: skip
    notice = ood_notice(rejected)
    assert notice.startswith("This does not look like a dermatoscopic image of a skin lesion")
    assert "41.7" in notice and "2.01" in notice and "not a result" in notice
    assert rejected.rejected
    kept = UploadResult("a.jpg", probs=np.eye(7)[5], ood_score=1.0, in_distribution=True)
    assert ood_notice(kept) is None and ood_notice(UploadResult("b.jpg")) is None
    assert not UploadResult("b.jpg", probs=np.eye(7)[5]).rejected  # no guard: never rejected
