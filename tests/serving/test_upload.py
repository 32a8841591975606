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


CHECKED = {"method": "gradcam@block5", "title": "Grad-CAM on block5", "checked": True,
           "deletion_auc": 0.362, "centre_deletion_auc": 0.332, "n_images": 200}  # fmt: skip


def test_the_caption_says_what_the_map_is_and_how_it_scored():
    result = analysis.UploadResult("a", probs=np.eye(7)[4], heatmap_class="mel")
    good = analysis.gradcam_caption(result, {**CHECKED, "explanation": True})
    assert good.startswith("Grad-CAM on block5 for the top class (mel): where the model looked")
    assert good.endswith(
        "Deletion AUC 0.362 vs 0.332 for a centred blob on 200 test images (lower is better)."
    )
    bad = analysis.gradcam_caption(result, {**CHECKED, "explanation": False})
    assert bad.endswith("(lower is better). Not an explanation.")
    unchecked = analysis.gradcam_caption(result, {"title": "Grad-CAM", "checked": False})
    assert "Not checked (skin-tf explain-check)" in unchecked


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
    # Rejected with a score within the threshold: the colour check refused it, and both the
    # notice and the verdict (which the flag text and the table read) say so.
    grey = UploadResult("grey.jpg", probs=np.eye(7)[4], ood_score=1.2, in_distribution=False,
                        ood_threshold=2.01)  # fmt: skip
    assert ood_notice(grey).startswith("This picture has far less colour than any dermatoscopic")
    assert "2.01" not in ood_notice(grey) and "not a result" in ood_notice(grey)
    assert grey.verdict(0.3).reason.startswith("out of distribution: it has far less colour")
