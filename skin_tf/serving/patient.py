"""Patient fields as clients give them, for an export trained with them (metadata.json's
`patient_fields`): a dict per image in Python, a CSV for `skin-tf predict --meta`, the page's
widgets. Every field is optional; a field not given, or an image without any, is "not given",
which the model was trained to answer (`skin_tf.data.meta_fields`: fields blanked in training).

One rule per fact: `fields_used` is what the model used for an image (what `predict --json`
echoes and the page shows), and `encode_given` encodes exactly that.

    >>> fields_used(("age", "sex", "localization"), {"sex": " Male ", "age": "55"})
    {'age': 55.0, 'sex': 'male', 'localization': None}
    >>> encode_given(("sex",), [{"sex": "female"}, None]).tolist()
    [[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from skin_tf.data.ham10000 import DataError
from skin_tf.data.meta_fields import (
    LEAKS,
    META_FIELDS,
    VOCABULARIES,
    canonical_value,
    encode_row,
    meta_width,
)

IMAGE_COLUMN = "image"
Given = Mapping[str, Any] | None  # one image's fields as a client gives them; None: none


def fields_used(fields: Sequence[str], given: Given) -> dict[str, Any]:
    """The value of each of the model's `fields` for one image, as the model reads it
    (`skin_tf.data.meta_fields.canonical_value`: age a float, sex and site lower-case names,
    None for a field not given). Names outside `fields` are a ValueError (nothing is silently
    ignored); a bad value a DataError naming the valid ones.
    """
    given = dict(given or {})
    extra = sorted(set(given) - set(fields))
    if extra:
        raise ValueError(_not_fields_message(extra, fields))
    return {name: canonical_value(name, given.get(name)) for name in fields}


def encode_given(fields: Sequence[str], given: Sequence[Given]) -> np.ndarray:
    """float32 (len(given), width): the encoded fields of each image, as training encodes them
    (`skin_tf.data.meta_fields.encode_row`)."""
    rows = [encode_row(fields_used(fields, one), fields) for one in given]
    return np.stack(rows) if rows else np.zeros((0, meta_width(fields)), np.float32)


def any_given(given: Sequence[Given] | None) -> bool:
    """Whether any image has any field given (a value that is not empty or unknown; a bad
    value counts as given)."""
    return any(_given(name, value) for one in (given or []) for name, value in (one or {}).items())


def _given(name: str, value: Any) -> bool:
    try:
        return canonical_value(name, value) is not None
    except (DataError, KeyError):  # a bad value or a name that is no field: given all the same
        return True


def read_fields_csv(path: str | os.PathLike, fields: Sequence[str]) -> dict[str, dict[str, Any]]:
    """The fields of each image in a CSV with an `image` column (a file name, with or without
    its suffix, or a path) and any of the model's `fields` as columns; empty cells are not
    given. Keyed by the `image` value as written. Missing file, no `image` column, a column that
    is not one of the model's fields (dx_type and the label are refused with the reason), a
    repeated image or a bad value: DataError naming it and the fix.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"patient fields file {path} not found: give a CSV with columns "
                        f"{IMAGE_COLUMN}, {', '.join(fields)}")  # fmt: skip
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as err:
        raise DataError(f"{path} is not a readable CSV ({err})") from None
    frame.columns = [str(c).strip() for c in frame.columns]
    if IMAGE_COLUMN not in frame.columns:
        raise DataError(
            f"{path} has no `{IMAGE_COLUMN}` column (columns: {', '.join(frame.columns)}): name "
            "the image file of each row in a column called `image`"
        )
    extra = [c for c in frame.columns if c != IMAGE_COLUMN and c not in fields]
    if extra:
        raise DataError(f"{path}: {_not_fields_message(extra, fields)}")
    names = frame[IMAGE_COLUMN].str.strip()
    repeated = sorted(set(names[names.duplicated()]))
    if repeated:
        raise DataError(f"{path}: image(s) {', '.join(repeated[:5])} listed more than once: "
                        "keep one row per image")  # fmt: skip
    table = {
        name: {c: row[c] for c in frame.columns if c != IMAGE_COLUMN}
        for name, (_, row) in zip(names, frame.iterrows(), strict=True)
    }
    try:
        encode_given(fields, list(table.values()))  # every value checked now, not mid-run
    except (DataError, ValueError) as err:
        raise DataError(f"{path}: {err}") from None
    return table


def fields_of_files(
    table: Mapping[str, Mapping[str, Any]], files: Sequence[str | os.PathLike]
) -> list[dict[str, Any] | None]:
    """Each file's row of `read_fields_csv`'s table (matched by the path as given, its file name
    or its stem), None for a file without a row (nothing given). A row that matches no file is a
    DataError: it is probably a typo, and would otherwise be dropped without a word."""
    rows: list[dict[str, Any] | None] = []
    matched: set[str] = set()
    for file in files:
        path = Path(file)
        key = next((k for k in (str(file), path.name, path.stem) if k in table), None)
        rows.append(None if key is None else dict(table[key]))
        if key is not None:
            matched.add(key)
    unmatched = [name for name in table if name not in matched]
    if unmatched:
        raise DataError(
            f"patient fields given for {len(unmatched)} image(s) that are not being predicted: "
            f"{', '.join(unmatched[:5])}{' …' if len(unmatched) > 5 else ''}; fix the names in "
            "the `image` column or pass those images"
        )
    return rows


def describe_used(used: Mapping[str, Any]) -> str:
    """A short phrase of the fields an image was scored with, for text and the page.

    >>> describe_used({"age": 55.0, "sex": None, "localization": "back"})
    'age 55, site back (sex not given)'
    >>> describe_used({"age": None})
    'no patient fields given'
    """
    labels = {"age": "age", "sex": "sex", "localization": "site"}
    given = [f"{labels[k]} {v:g}" if k == "age" else f"{labels[k]} {v}"
             for k, v in used.items() if v is not None]  # fmt: skip
    if not given:
        return "no patient fields given"
    missing = [labels[k] for k, v in used.items() if v is None]
    return ", ".join(given) + (f" ({', '.join(missing)} not given)" if missing else "")


def _not_fields_message(extra: Sequence[str], fields: Sequence[str]) -> str:
    leaks = [f"{name!r} is never a model input: {LEAKS[name]}" for name in extra if name in LEAKS]
    other = [name for name in extra if name not in LEAKS]
    parts = leaks + (
        [f"{', '.join(map(repr, other))} not among this model's patient fields"] if other else []
    )
    offered = ", ".join(fields) if fields else "none (it was trained on images alone)"
    vocab = "; ".join(f"{k}: {', '.join(v)}" for k, v in VOCABULARIES.items() if k in fields)
    known = f" (valid values: {vocab})" if vocab else ""
    return (
        f"{'; '.join(parts)}. The model takes: {offered}{known}; the fields any model may take "
        f"are {', '.join(META_FIELDS)}"
    )
