"""The page's "All predictions" table and its CSV download: one row per upload, with the
engine's probabilities and each upload's verdict (`skin_tf.serving.verdict.verdict`, the rule
`skin-tf predict` follows too): the top class and the melanoma flag at the exported threshold,
or none for a failed upload (which keeps its row with the reason) or one the guard rejected
(which keeps its numbers).

`skin_tf.serving.page` writes the rest of the page's text; `skin_tf.serving.upload` analyses one
upload into the `UploadResult` read here.

Example:
    >>> predictions_frame([UploadResult("x.jpg", error="not an image")], 0.3, "b0").error[0]
    'not an image'
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import pandas as pd

from skin_tf.data.ham10000 import CLASSES
from skin_tf.serving.upload import UploadResult
from skin_tf.serving.verdict import REJECTED

PROBABILITY_DECIMALS = 4  # the table and CSV: enough to rank and threshold, none of float noise
# The table's text: about 6 px a character on average in the grid's 14 px sans-serif (7.5 leaves
# room for wide letters), plus the cell's padding.
_CHAR_PX = 7.5
_CELL_PADDING_PX = 32
IMAGE_COLUMN_MAX_PX = 240


def predictions_frame(
    results: Sequence[UploadResult],
    threshold: float | None,
    model_name: str,
    engine: str = "savedmodel",
) -> pd.DataFrame:
    """One row per upload: image, model, engine, p_<class>…, top_class, mel_threshold, mel_flag,
    ood_score, in_distribution, (for a model with patient fields) patient_fields, notes, error.
    Probabilities are rounded to PROBABILITY_DECIMALS; a failed upload keeps its row with the
    reason and nothing else (no probabilities, threshold or flag). An upload the
    out-of-distribution guard rejected keeps what the model computed, but
    no top class, melanoma threshold or flag (no answer), and a note saying why; ood_score and
    in_distribution are empty for an export without a guard. top_class, mel_threshold and
    mel_flag are the upload's `verdict`.

    Example:
        >>> predictions_frame([UploadResult("x.jpg", error="not an image")], 0.3, "b0").error[0]
        'not an image'
    """
    rows = []
    for result in results:
        row: dict[str, Any] = {"image": result.name, "model": model_name, "engine": engine}
        probs = result.probs
        for i, code in enumerate(CLASSES):
            row[f"p_{code}"] = (
                None if probs is None else round(float(probs[i]), PROBABILITY_DECIMALS)
            )
        answer = result.verdict(threshold)
        row["top_class"] = answer.top_class
        row["mel_threshold"] = answer.mel_threshold
        row["mel_flag"] = answer.mel_flag
        row["ood_score"] = result.ood_score
        row["in_distribution"] = result.in_distribution
        if result.patient_fields is not None:
            row["patient_fields"] = result.fields_text
        notes = list(result.notes)
        if answer.status == REJECTED:
            notes.insert(0, f"{answer.reason}.")  # the verdict's words: score or colour
        row["notes"] = " ".join(notes) or None
        row["error"] = result.error
        rows.append(row)
    return pd.DataFrame(rows)


def predictions_csv(table: pd.DataFrame) -> bytes:
    """The CSV download of `predictions_frame`: every number with PROBABILITY_DECIMALS decimals
    (never 1e-06 beside 0.1119025065…), empty cells for what a failed upload lacks.

    Example:
        >>> predictions_csv(pd.DataFrame({"p_mel": [1e-6, 0.11190250659047866]})).decode()
        'p_mel\\n0.0000\\n0.1119\\n'
    """
    return table.to_csv(index=False, float_format=f"%.{PROBABILITY_DECIMALS}f").encode()


def table_column_config(table: pd.DataFrame) -> dict[str, Any]:
    """`column_config` of the "All predictions" table: numbers as in the CSV; the notes and
    error columns as wide as their whole text and no wider (narrow when empty: the grid cuts a
    cell at its width, and sizes columns to fit only so far); the image name at most
    IMAGE_COLUMN_MAX_PX, so that a long file name cannot push the probabilities out of view (the
    page's heading of each upload shows the whole name)."""
    import streamlit as st

    config: dict[str, Any] = {
        column: st.column_config.NumberColumn(format=f"%.{PROBABILITY_DECIMALS}f")
        for column in table.columns
        if column.startswith("p_") or column in ("mel_threshold", "ood_score")
    }
    for column in ("notes", "error"):
        if column in table.columns:
            config[column] = st.column_config.TextColumn(width=text_column_width(table[column]))
    if "image" in table.columns:
        width = min(text_column_width(table["image"]), IMAGE_COLUMN_MAX_PX)
        config["image"] = st.column_config.TextColumn(width=width)
    return config


def table_column_order(table: pd.DataFrame) -> list[str]:
    """Display order of the "All predictions" table: the answer first (the image, the seven
    probabilities, the top class and the melanoma flag), which a 1440 px window shows without
    scrolling whatever else the table holds; then a failed upload's reason and the notes, each
    as wide as its text (the start of a reason is still in view); then the other columns as in
    the CSV, new ones too.

    Example:
        >>> columns = ["image", "model", "p_mel", "top_class", "mel_flag", "notes", "error"]
        >>> table_column_order(pd.DataFrame(columns=columns))
        ['image', 'p_mel', 'top_class', 'mel_flag', 'error', 'notes', 'model']
    """
    probabilities = [c for c in table.columns if c.startswith("p_")]
    wanted = ["image", *probabilities, "top_class", "mel_flag", "error", "notes"]
    first = [c for c in wanted if c in table.columns]
    return first + [c for c in table.columns if c not in first]


def text_column_width(texts: pd.Series) -> int:
    """Pixels a table column needs to show its longest text on one line (the header counts).

    Example:
        >>> text_column_width(pd.Series(["not an image (no known image format)", None]))
        302
    """
    longest = max([len(str(texts.name or ""))] + [len(t) for t in texts if isinstance(t, str)])
    return _CELL_PADDING_PX + math.ceil(_CHAR_PX * longest)
