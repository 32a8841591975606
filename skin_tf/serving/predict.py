"""Command-line inference with an exported model: read images, predict, print or emit JSON.

Only the export is used (`skin_tf.serving.served.load_served`: its metadata.json and one engine,
the SavedModel or a LiteRT model), never the Keras training model, so what is printed here is what
the Streamlit page and any other client get.

    skin-tf predict saved_models/b0 lesion.jpg more_images/ --top-k 3
    skin-tf predict saved_models/b0 lesion.jpg --json --engine savedmodel
    skin-tf predict saved_models/b0_meta lesions/ --meta fields.csv   # a model with fields

Each file goes through `skin_tf.data.images.prepare_image` (the Streamlit page uses it too):
checked, then decoded and resized exactly as in evaluation. A file that fails is reported on its
own line with the reason; the others still run. Images are scored in batches (one batch per
`batch_size` files; the SavedModel engine still makes one `serve` call per image) while the next
files are read and decoded in two threads, with a progress bar on a terminal.

Example:
    >>> served = load_served("saved_models/b0")  # doctest: +SKIP
    >>> print(format_predictions(predict_files(served, ["lesion.jpg"])))  # doctest: +SKIP
"""

from __future__ import annotations

import itertools
import json
import os
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from skin_tf.data.ham10000 import CLASSES
from skin_tf.data.images import IMAGE_SUFFIXES, ImageError, prepare_image
from skin_tf.serving.patient import describe_used, fields_of_files, fields_used, read_fields_csv
from skin_tf.serving.verdict import FAILED, REJECTED, verdict

if TYPE_CHECKING:
    from skin_tf.serving.served import ServedModel


def expand_image_paths(arguments: Iterable[str | os.PathLike]) -> list[Path]:
    """Files as given, and folders expanded to the image files directly inside them (sorted).

    Files are kept whatever their suffix (a wrong file is then reported, not skipped); a
    missing path is kept too, so it gets its own "file not found" line.
    """
    paths: list[Path] = []
    for argument in arguments:
        path = Path(argument)
        if path.is_dir():
            inside = sorted(
                p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
            )
            if not inside:
                raise ValueError(
                    f"folder {path} has no image files ({', '.join(sorted(IMAGE_SUFFIXES))})"
                )
            paths.extend(inside)
        else:
            paths.append(path)
    return paths


def predict_files(
    served: ServedModel,
    paths: Iterable[str | os.PathLike],
    top_k: int = 3,
    batch_size: int = 32,
    progress: bool = False,
    meta: str | os.PathLike | None = None,
) -> list[dict[str, Any]]:
    """Predict every image file (folders expand to their images); one dict per file, in order.

    Each dict has: image, probs {class: p} and top [(class, p), … top_k] (what the engine
    computed), then the verdict (`skin_tf.serving.verdict.verdict`, the rule the page follows
    too): top_class, mel_flag (P(mel) ≥ mel_threshold, the engine's operating threshold),
    mel_threshold, verdict ("answer", "out_of_distribution" or "error") and reason; then
    ood_score and in_distribution (the export's out-of-distribution guard: False means the image
    does not look like the training images, so top_class and mel_flag are None and probs are no
    answer; both None for an export without a guard), engine and error (None, or why the file
    could not be read; then probs etc. are None). mel_flag is None whenever there is no answer
    or no threshold, and reason says which.
    progress=True draws a progress bar on stderr when it is a terminal.

    `meta`: a CSV of patient fields (`image`, then any of the model's fields, e.g. age, sex,
    localization; `skin_tf.serving.patient.read_fields_csv`) for an export trained with them;
    an image without a row, or an empty cell, is "not given". Each result then has
    patient_fields: the values the model used (None: not given; `fields_used`); None for an
    image-only export, which refuses a `meta` file.

    Example:
        >>> [r["top_class"] for r in predict_files(served, ["a.jpg", "b.jpg"])]  # doctest: +SKIP
        ['nv', 'mel']
    """
    if not 1 <= top_k <= len(CLASSES):
        raise ValueError(f"top_k must be between 1 and {len(CLASSES)}, got {top_k}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    from tqdm import tqdm

    files = expand_image_paths(paths)
    given = _given_fields(served, files, meta)
    size, resize = served.image_size, served.resize
    engine = served.engine
    results: list[dict[str, Any] | None] = [None] * len(files)
    pending: list[tuple[int, np.ndarray]] = []

    def score_pending() -> None:
        fields = [given[i] for i, _ in pending] if served.fields else None
        assessed = served.assess([image for _, image in pending], fields)
        for k, (i, _) in enumerate(pending):
            ood = _ood_fields(assessed, k)
            results[i] = _result(files[i], assessed.probs[k], served.threshold, top_k, engine,
                                 ood, served.ood_threshold)  # fmt: skip
            results[i]["patient_fields"] = fields_used(served.fields, given[i]) if fields else None
        pending.clear()

    prepared = _prepared_ahead(files, size, resize, window=2 * batch_size)
    disable = None if progress else True  # tqdm: None draws the bar only on a terminal
    bar = tqdm(prepared, total=len(files), desc="predict", unit="img", disable=disable)
    for i, (path, image, error) in enumerate(bar):
        if error is not None:
            results[i] = _error_result(path, error)
        else:
            pending.append((i, image))
        if len(pending) >= batch_size:
            score_pending()
    if pending:
        score_pending()
    bar.close()
    return [r for r in results if r is not None]


def _given_fields(
    served: ServedModel, files: list[Path], meta: str | os.PathLike | None
) -> list[dict[str, Any] | None]:
    """Each file's patient fields from the `meta` CSV (None: not given), checked before any
    image is scored."""
    if meta is None:
        return [None] * len(files)
    if not served.fields:
        raise ValueError(
            f"{served.path} takes images alone (its run was trained without patient fields), so "
            f"--meta {meta} cannot be used: leave it out, or export a run trained with `metadata`"
        )
    return fields_of_files(read_fields_csv(meta, served.fields), files)


def _prepared_ahead(
    files: list[Path], size: int, resize: str, window: int, workers: int = 2
) -> Iterator[tuple[Path, np.ndarray | None, str | None]]:
    """(path, model input or None, error or None) per file, in order; up to `window` files are
    read and decoded ahead in `workers` threads while the engine scores (decoding releases the
    GIL), so reading and scoring overlap."""

    def prepare(path: Path) -> tuple[Path, np.ndarray | None, str | None]:
        try:
            if not path.is_file():
                raise ImageError("file not found" if not path.exists() else "not a file")
            return path, prepare_image(path, size, resize).model_input, None
        except ImageError as err:
            return path, None, str(err)
        except OSError as err:  # unreadable file (permissions, …)
            return path, None, f"cannot read file ({err.strerror or err})"

    with ThreadPoolExecutor(workers) as pool:
        queue: deque = deque()
        upcoming = iter(files)
        for path in itertools.islice(upcoming, window):
            queue.append(pool.submit(prepare, path))
        while queue:
            yield queue.popleft().result()
            for path in itertools.islice(upcoming, 1):
                queue.append(pool.submit(prepare, path))


def _result(
    path: Path,
    probs: np.ndarray,
    threshold: float | None,
    top_k: int,
    engine: str,
    ood: dict[str, Any],
    ood_threshold: float | None = None,
) -> dict[str, Any]:
    order = np.argsort(-probs, kind="stable")[:top_k]
    return {
        "image": str(path),
        "probs": {c: float(p) for c, p in zip(CLASSES, probs, strict=True)},
        "top": [(CLASSES[i], float(probs[i])) for i in order],
        **_verdict_fields(
            probs, threshold, ood["in_distribution"], None, ood["ood_score"], ood_threshold
        ),  # fmt: skip
        **ood,
        "engine": engine,
        "patient_fields": None,
        "error": None,
    }


def _verdict_fields(
    probs: np.ndarray | None,
    threshold: float | None,
    in_distribution: bool | None = None,
    error: str | None = None,
    ood_score: float | None = None,
    ood_threshold: float | None = None,
) -> dict[str, Any]:
    """top_class, mel_flag, mel_threshold, verdict and reason of one image, from `verdict`."""
    answer = verdict(probs, threshold, in_distribution, error, ood_score, ood_threshold)
    return {
        "top_class": answer.top_class,
        "mel_flag": answer.mel_flag,
        "mel_threshold": answer.mel_threshold,
        "verdict": answer.status,
        "reason": answer.reason,
    }


def _ood_fields(assessed: Any, k: int) -> dict[str, Any]:
    """ood_score and in_distribution of the k-th image (None without a guard)."""
    if assessed.ood_score is None:
        return {"ood_score": None, "in_distribution": None}
    return {
        "ood_score": float(assessed.ood_score[k]),
        "in_distribution": bool(assessed.in_distribution[k]),
    }


def _error_result(path: Path, message: str) -> dict[str, Any]:
    return {
        "image": str(path),
        "probs": None,
        "top": None,
        **_verdict_fields(None, None, error=message),
        "ood_score": None,
        "in_distribution": None,
        "engine": None,
        "patient_fields": None,
        "error": message,
    }


def format_predictions(results: Sequence[dict[str, Any]], json: bool = False) -> str:
    """Human-readable lines per image, or (json=True) one JSON object per line. Both follow
    each result's verdict (`predict_files`): no class and no flag for a rejected image.

    Example of the text form (one line per image; an image the guard rejects gets no answer):
        ISIC_0024306.jpg: nv 0.912 | mel 0.051 | bkl 0.020 | melanoma flag: no
        (P(mel) 0.051 < 0.312)
        cat.png: out of distribution (ood_score 2.31): not like the dermatoscopic images the
        model was trained on, so these probabilities are no answer and no melanoma flag is
        given (the model's output anyway: …)
    """
    if json:
        return "\n".join(_json_line(r) for r in results)
    lines = []
    for r in results:
        if r["verdict"] == FAILED:
            lines.append(f"{r['image']}: ERROR {r['error']}")
            continue
        top = " | ".join(f"{c} {p:.3f}" for c, p in r["top"])
        if r["verdict"] == REJECTED:  # no answer, no flag
            why = r["reason"].removeprefix("out of distribution: ")  # the verdict's words
            lines.append(
                f"{r['image']}: out of distribution (ood_score {r['ood_score']:.3g}): {why} "
                f"(the model's output anyway: {top})"
            )
            continue
        p_mel = r["probs"]["mel"]
        if r["mel_flag"] is None:
            flag = "melanoma flag: n/a (model has no operating threshold)"
        else:
            relation = ">=" if r["mel_flag"] else "<"
            flag = (
                f"melanoma flag: {'YES' if r['mel_flag'] else 'no'} "
                f"(P(mel) {p_mel:.3f} {relation} {r['mel_threshold']:.3f})"
            )
        used = r.get("patient_fields")
        lines.append(
            f"{r['image']}: {top} | {flag}" + (f" | {describe_used(used)}" if used else "")
        )
    return "\n".join(lines)


def _json_line(result: dict[str, Any]) -> str:
    record = dict(result)
    if record["top"] is not None:
        record["top"] = [{"class": c, "p": p} for c, p in record["top"]]
    return json.dumps(record)
