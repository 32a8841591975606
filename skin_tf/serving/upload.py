"""One upload on the Streamlit page: read and checked, scored by the served engine, explained by
the SavedModel's `explain` endpoint, with notes on what reading it changed (colour mode, EXIF).

Images are read and validated by `skin_tf.data.images.prepare_image`; nothing here loads the
Keras training model. What the page writes about the result is in `skin_tf.serving.page`.

Example:
    >>> analyse_upload(served, "a.jpg", b"hello").error  # doctest: +SKIP
    'not an image (no known image format)'
    >>> conversion_notes(_png_bytes(np.zeros((40, 40), np.uint8)))[0][:15]
    'greyscale image'
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from skin_tf.data.ham10000 import CLASSES
from skin_tf.serving.patient import Given, describe_used, fields_used
from skin_tf.serving.verdict import Verdict, refused_by_colour, verdict

if TYPE_CHECKING:
    from skin_tf.serving.served import ServedModel

UPLOAD_TYPES = ["jpg", "jpeg", "png"]
MAX_DISPLAY_SIDE = 1024  # pictures shown in the browser; the model always sees the full image
_GREY_CAUTION = (
    "The model was trained on colour photographs, so treat its output on a greyscale image "
    "with extra caution."
)
_MODE_NOTES = {
    "1": "1-bit black-and-white image: converted to RGB. " + _GREY_CAUTION,
    "L": "greyscale image: converted to RGB (three equal channels). " + _GREY_CAUTION,
    "LA": "greyscale image with transparency: composited on white, converted to RGB. "
    + _GREY_CAUTION,
    "I": "32-bit greyscale image: converted to 8-bit RGB. " + _GREY_CAUTION,
    "I;16": "16-bit greyscale image: its range rescaled to 8 bits, converted to RGB. "
    + _GREY_CAUTION,
    "F": "floating-point greyscale image: converted to 8-bit RGB. " + _GREY_CAUTION,
    "RGBA": "image with transparency (alpha channel): composited on a white background.",
    "PA": "palette image with transparency: composited on a white background.",
    "P": "palette (indexed-colour) image: converted to RGB.",
    "CMYK": "CMYK image (print colours): converted to RGB; colours may differ slightly from "
    "the original camera's.",
    "YCbCr": "YCbCr image: converted to RGB.",
    "LAB": "Lab image: converted to RGB.",
}
for _mode in ("I;16B", "I;16L"):
    _MODE_NOTES[_mode] = _MODE_NOTES["I;16"]
_EXIF_ORIENTATION = 0x0112


# ---------------------------------------------------------------- one upload


@dataclass(frozen=True)
class UploadResult:
    """What the page shows for one uploaded file: either an error or a prediction."""

    name: str
    error: str | None = None
    probs: np.ndarray | None = None  # (7,) probabilities in CLASSES order, from the engine
    display: np.ndarray | None = None  # RGB uint8, longest side <= MAX_DISPLAY_SIDE
    heatmap: np.ndarray | None = None  # Grad-CAM, 0..1 (model grid or display)
    heatmap_class: str | None = None  # the class the Grad-CAM is for (the SavedModel's top class)
    size: tuple[int, int] | None = None  # original (width, height)
    notes: tuple[str, ...] = field(default_factory=tuple)
    ood_score: float | None = None  # the engine's out-of-distribution score (None: no guard)
    in_distribution: bool | None = None  # False: not like the training images, no answer
    ood_threshold: float | None = None  # the engine's threshold on ood_score
    patient_fields: dict[str, Any] | None = None  # what the model used (None: image-only model)

    @property
    def fields_text(self) -> str | None:
        """The patient fields this upload was scored with, in words (None: image-only model)."""
        return None if self.patient_fields is None else describe_used(self.patient_fields)

    def verdict(self, mel_threshold: float | None) -> Verdict:
        """What the page may show for this upload at the engine's melanoma threshold: the rule
        `skin-tf predict` follows too (`skin_tf.serving.verdict.verdict`).

        Example:
            >>> cat = UploadResult("cat.jpg", probs=np.eye(7)[4], in_distribution=False)
            >>> cat.verdict(0.3).status, cat.verdict(0.3).mel_flag
            ('out_of_distribution', None)
        """
        return verdict(self.probs, mel_threshold, self.in_distribution, self.error,
                       self.ood_score, self.ood_threshold)  # fmt: skip

    @property
    def rejected(self) -> bool:
        """Whether the guard called this image out of distribution (never without a guard)."""
        return self.in_distribution is False

    @property
    def top_class(self) -> str | None:
        return None if self.probs is None else CLASSES[int(np.argmax(self.probs))]


def analyse_upload(
    served: ServedModel, name: str, data: bytes, fields: Given = None
) -> UploadResult:
    """Validate, predict and explain one upload; an unreadable file gives `error`, not a raise.

    The probabilities and the guard's verdict come from the served engine (`ServedModel.assess`);
    the Grad-CAM map from the SavedModel's `explain` endpoint, for its own top class (which a
    LiteRT engine almost always shares). `fields`: the patient's fields for a model trained with
    them (None or a missing field: not given); the map is then the image's, the fields held.

    Example:
        >>> analyse_upload(served, "a.jpg", b"hello").error  # doctest: +SKIP
        'not an image (no known image format)'
    """
    from skin_tf.data.images import ImageError, prepare_image

    try:
        prepared = prepare_image(data, served.image_size, served.resize)
    except ImageError as err:
        return UploadResult(name=name, error=str(err))
    given = None if fields is None else [fields]  # an image-only export refuses them
    explained, heatmaps = served.explain_assessed(prepared.model_input, given)
    assessed = (
        explained if served.engine == "savedmodel" else served.assess([prepared.model_input], given)
    )
    original = prepared.original
    display = _fit_side(original, MAX_DISPLAY_SIDE)
    heatmap = heatmaps[0]
    if heatmap.shape == original.shape[:2] and display.shape != original.shape:
        # A full-size map (the model got the full image): shrink it with the picture.
        heatmap = _resize_float(heatmap, display.shape[:2])
    return UploadResult(
        name=name,
        probs=assessed.probs[0],
        display=display,
        heatmap=heatmap,
        heatmap_class=CLASSES[int(np.argmax(explained.probs[0]))],
        size=(original.shape[1], original.shape[0]),
        notes=tuple(conversion_notes(data)),
        ood_score=None if assessed.ood_score is None else float(assessed.ood_score[0]),
        in_distribution=(
            None if assessed.in_distribution is None else bool(assessed.in_distribution[0])
        ),
        ood_threshold=served.ood_threshold,
        patient_fields=fields_used(served.fields, fields) if served.fields else None,
    )


def ood_notice(result: UploadResult) -> str | None:
    """What the page says about an upload the guard rejected (None when it did not): plainly,
    without alarm, and why its class probabilities are no answer.

    Example:
        >>> ood_notice(UploadResult("cat.jpg", ood_score=41.7, in_distribution=False,
        ...                         ood_threshold=2.01))[:58]
        'This does not look like a dermatoscopic image of a skin le'
    """
    if not result.rejected:
        return None
    if refused_by_colour(result.ood_score, result.ood_threshold):
        return (
            "This picture has far less colour than any dermatoscopic image the model was trained "
            "on (a greyscale photo?), so the model gives no answer for it: dermoscopy "
            "photographs are colour pictures. If it is a lesion, try a colour dermatoscopic "
            "photo of it; what the model computed anyway is below, greyed, and is not a result."
        )
    return (
        "This does not look like a dermatoscopic image of a skin lesion, so the model gives no "
        "answer for it. It was trained only on dermatoscopic close-ups of skin lesions, and "
        "this picture is unlike them (out-of-distribution score "
        f"{result.ood_score:.3g}, above this model's threshold {result.ood_threshold:.3g}). "
        "If it is a lesion, try a dermatoscopic photo of it; what the model computed anyway is "
        "below, greyed, and is not a result."
    )


def gradcam_caption(result: UploadResult, explain: Mapping[str, Any] | None = None) -> str:
    """The caption under the heatmap overlay: what the map is (the export's `explain` method,
    Grad-CAM when the export does not say), for which class (the SavedModel's top class, which
    may not be this engine's), and how the method scored in `skin-tf explain-check`.

    Example:
        >>> gradcam_caption(UploadResult("a", probs=np.eye(7)[4], heatmap_class="mel"))[:34]
        'Grad-CAM for the top class (mel): '
    """
    title = (explain or {}).get("title") or "Grad-CAM"
    if result.heatmap_class in (None, result.top_class):
        text = f"{title} for the top class ({result.top_class}): where the model looked, not why"
    else:
        text = (
            f"{title} for {result.heatmap_class}, the SavedModel's top class (this engine's top "
            f"class is {result.top_class}): where the model looked, not why"
        )
    if result.patient_fields is not None:  # a model with fields: the map is the image's alone
        text += (
            f". The map covers the image only; the answer also used {result.fields_text}"
            if any(value is not None for value in result.patient_fields.values())
            else ". The map covers the image only (no patient fields were given)"
        )
    return f"{text}. {check_phrase(explain)}" if explain else text


def check_phrase(explain: Mapping[str, Any]) -> str:
    """How the export's heatmap method scored, in a sentence for the page.

    Example:
        >>> check_phrase({"checked": True, "deletion_auc": 0.25, "centre_deletion_auc": 0.3,
        ...               "n_images": 200, "explanation": True})
        'Deletion AUC 0.250 vs 0.300 for a centred blob on 200 test images (lower is better).'
    """
    if not explain.get("checked"):
        return (
            "Not checked (skin-tf explain-check): the map may show no more than that the "
            "lesion is in the middle."
        )
    text = (
        f"Deletion AUC {explain['deletion_auc']:.3f} vs {explain['centre_deletion_auc']:.3f} for "
        f"a centred blob on {explain['n_images']} test images (lower is better)."
    )
    return text if explain.get("explanation") else f"{text} Not an explanation."


def conversion_notes(data: bytes) -> list[str]:
    """What reading the image changed (colour mode, EXIF rotation), for a note under it.

    Reads only the header; the image is assumed to have passed `prepare_image` already.

    Example:
        >>> conversion_notes(_png_bytes(np.zeros((40, 40), np.uint8)))[0][:15]
        'greyscale image'
    """
    try:
        with Image.open(io.BytesIO(data)) as image:
            mode = image.mode
            rotated = image.getexif().get(_EXIF_ORIENTATION, 1) not in (None, 1)
            transparent = "transparency" in image.info
    except (OSError, SyntaxError, ValueError):
        return []
    notes = []
    if mode in _MODE_NOTES:
        notes.append(_MODE_NOTES[mode])
    elif mode != "RGB":
        notes.append(f"{mode} image: converted to RGB.")
    if transparent and mode not in {"RGBA", "LA", "PA"}:
        notes.append("transparent pixels composited on a white background.")
    if rotated:
        notes.append("rotated upright following the image's EXIF orientation tag.")
    return notes


def _png_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _fit_side(image: np.ndarray, max_side: int) -> np.ndarray:
    height, width = image.shape[:2]
    scale = max_side / max(height, width)
    if scale >= 1:
        return image
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.LANCZOS))


def _resize_float(values: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    picture = Image.fromarray(np.asarray(values, np.float32), mode="F")
    resized = picture.resize((shape[1], shape[0]), Image.Resampling.BILINEAR)
    return np.clip(np.asarray(resized, np.float32), 0.0, 1.0)
