"""What a client may show for one image, decided once: no answer and no melanoma flag for an
image that failed or that the out-of-distribution guard rejected; otherwise its top class and,
when the model has an operating threshold, the flag. `skin-tf predict` (JSON, text, CSV), the
page's boxes and its table all show `verdict`'s Verdict, so they cannot disagree (issue 34).

    >>> verdict(np.eye(7)[4], 0.3, in_distribution=False).mel_flag is None
    True
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from skin_tf.data.ham10000 import CLASSES, MEL_INDEX
from skin_tf.serving.guard import refused_by_colour as _colour_refusals

ANSWER, REJECTED, FAILED = "answer", "out_of_distribution", "error"
REJECTED_REASON = (
    "out of distribution: not like the dermatoscopic images the model was trained on, so these "
    "probabilities are no answer and no melanoma flag is given"
)
COLOUR_REASON = (
    "out of distribution: it has far less colour than any dermatoscopic image the model was "
    "trained on (dermoscopy photographs are colour pictures; a greyscale one is refused), so these "
    "probabilities are no answer and no melanoma flag is given"
)
NO_THRESHOLD_REASON = (
    "the model has no melanoma operating threshold, so no melanoma flag is given: run "
    "`skin-tf threshold RUN_DIR` on its run, then export it again"
)


@dataclass(frozen=True)
class Verdict:
    """What every client (`skin-tf predict`'s JSON and text, the page's boxes, its table and CSV)
    may show for one image; `verdict` makes it, so they cannot disagree.

    status: ANSWER ("answer"), REJECTED ("out_of_distribution": the guard says the image is not
    like the training images) or FAILED ("error": it could not be read). top_class and mel_flag
    are the answer, so both are None unless status is "answer"; mel_flag is also None when the
    model has no operating threshold. p_mel and mel_threshold are what the flag was judged on
    (None when it was not). reason says in words why there is no answer or no flag (None when
    both are given).

    Example:
        >>> verdict(np.eye(7)[4], 0.3, in_distribution=False).mel_flag is None
        True
    """

    status: str
    top_class: str | None = None
    mel_flag: bool | None = None
    p_mel: float | None = None
    mel_threshold: float | None = None
    reason: str | None = None

    @property
    def answered(self) -> bool:
        """Whether the classes (and the flag, when there is a threshold) are an answer."""
        return self.status == ANSWER


def verdict(
    probs: np.ndarray | None,
    mel_threshold: float | None,
    in_distribution: bool | None = None,
    error: str | None = None,
    ood_score: float | None = None,
    ood_threshold: float | None = None,
) -> Verdict:
    """The one rule for what a client may show about one image: no answer for an image that
    failed (`error`) or that the out-of-distribution guard rejected (`in_distribution` False;
    None means the export has no guard, and the image is answered); otherwise its top class, and
    the melanoma flag P(mel) >= mel_threshold (the exported rule) when there is a threshold.
    `ood_score` and the engine's `ood_threshold`, when given, say why an image was rejected
    (`refused_by_colour`).

    Example:
        >>> probs = np.array([0.05, 0.05, 0.1, 0.0, 0.3, 0.5, 0.0])
        >>> verdict(probs, 0.3).mel_flag, verdict(probs, 0.3).top_class
        (True, 'nv')
        >>> verdict(probs, 0.3, in_distribution=False).status
        'out_of_distribution'
        >>> verdict(None, 0.3, error="empty file (0 bytes)").reason
        'empty file (0 bytes)'
    """
    if error is not None:
        return Verdict(FAILED, reason=error)
    if in_distribution is False:
        colour = refused_by_colour(ood_score, ood_threshold)
        return Verdict(REJECTED, reason=COLOUR_REASON if colour else REJECTED_REASON)
    if probs is None:
        raise ValueError("verdict needs the image's probabilities or the error that stopped it")
    probs = np.asarray(probs)
    p_mel = float(probs[MEL_INDEX])
    top_class = CLASSES[int(np.argmax(probs))]
    if mel_threshold is None:
        return Verdict(ANSWER, top_class, None, p_mel, None, NO_THRESHOLD_REASON)
    return Verdict(ANSWER, top_class, bool(p_mel >= mel_threshold), p_mel, float(mel_threshold))


def refused_by_colour(ood_score: float | None, ood_threshold: float | None) -> bool:
    """Whether a rejected image was refused by the guard's colour check rather than its score
    (`skin_tf.serving.guard.refused_by_colour`, for one rejected image).

    Example:
        >>> refused_by_colour(1.2, 3.05), refused_by_colour(41.7, 3.05)
        (True, False)
    """
    if ood_score is None or ood_threshold is None:
        return False
    return bool(_colour_refusals(np.array([False]), np.array([ood_score]), ood_threshold)[0])
