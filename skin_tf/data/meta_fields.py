"""The patient fields beside each image (age, sex, body site) as one float vector per image.

HAM10000_metadata.csv gives every image an `age` (in 5-year steps, 57 missing), a `sex` (57
`unknown`) and a `localization` (15 sites, 234 `unknown`). A model that takes them gets one
float32 vector per image, the concatenation of the chosen fields in the order given:

    age           [age / 100, 1 if missing else 0]               (2 values)
    sex           one-hot over female, male, unknown             (3 values)
    localization  one-hot over the 14 sites, unknown             (15 values)

A field that is not given (NaN, empty, or the CSV's own "unknown") encodes as missing / unknown,
so "not given" and "not recorded" are one state. Training blanks each field of each image at
random (`blank_fields`), so one model answers with all, some or none of the fields.

`dx_type` (how the diagnosis was made: histopathology for every melanoma) is a label leak and
never a field; neither are the label's own columns (`dx`, `label`) or the identifiers.

    >>> encode_fields(pd.DataFrame({"age": [45.0], "sex": ["male"]}), ("age", "sex")).tolist()
    [[0.44999998807907104, 0.0, 0.0, 1.0, 0.0]]
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from skin_tf.data.ham10000 import DataError

UNKNOWN = "unknown"
SEXES = ("female", "male")
SITES = (
    *("abdomen", "acral", "back", "chest", "ear", "face", "foot", "genital", "hand"),
    *("lower extremity", "neck", "scalp", "trunk", "upper extremity"),
)  # HAM10000's localization values besides "unknown"
VOCABULARIES: dict[str, tuple[str, ...]] = {"sex": SEXES, "localization": SITES}
META_FIELDS = ("age", "sex", "localization")
MAX_AGE = 120.0
LEAKS = {
    "dx_type": "it records how the diagnosis was made (histopathology for every melanoma, "
    "follow-up for many naevi): a label leak",
    "dx": "it is the label",
    "label": "it is the label",
    "lesion_id": "it identifies the lesion, not the patient",
    "image_id": "it identifies the image",
}


def check_fields(fields: Sequence[str]) -> tuple[str, ...]:
    """`fields` as a tuple when each is one of META_FIELDS, once; ValueError naming the problem.

    >>> check_fields(["age", "localization"])
    ('age', 'localization')
    """
    fields = tuple(fields)
    for name in fields:
        if name in LEAKS:
            raise ValueError(f"{name!r} can never be a model input: {LEAKS[name]}.")
        if name not in META_FIELDS:
            raise ValueError(
                f"unknown metadata field {name!r}: choose from {', '.join(META_FIELDS)}."
            )
    repeated = sorted({name for name in fields if fields.count(name) > 1})
    if repeated:
        raise ValueError(f"metadata field(s) {repeated} listed twice: list each once.")
    return fields


def field_width(name: str) -> int:
    """Values one field takes in the vector: 2 for age, one per category + unknown otherwise.

    >>> [field_width(name) for name in META_FIELDS]
    [2, 3, 15]
    """
    return 2 if name == "age" else len(VOCABULARIES[name]) + 1


def meta_width(fields: Sequence[str]) -> int:
    """Length of the encoded vector of `fields` (0 for none).

    >>> meta_width(META_FIELDS)
    20
    """
    return sum(field_width(name) for name in check_fields(fields))


def field_slices(fields: Sequence[str]) -> dict[str, slice]:
    """Where each field sits in the encoded vector.

    >>> field_slices(["sex", "age"])
    {'sex': slice(0, 3, None), 'age': slice(3, 5, None)}
    """
    slices, start = {}, 0
    for name in check_fields(fields):
        slices[name] = slice(start, start + field_width(name))
        start += field_width(name)
    return slices


def blank_vector(fields: Sequence[str]) -> np.ndarray:
    """The encoding of "nothing given" for `fields` (age missing, sex and site unknown).

    >>> blank_vector(["age", "sex"]).tolist()
    [0.0, 1.0, 0.0, 0.0, 1.0]
    """
    return encode_row({}, fields)


def describe_fields(fields: Sequence[str]) -> dict:
    """How a model's fields are encoded, for clients outside Python (metadata.json's
    `patient_fields`): the fields in order, the vector's width, each field's place and values,
    and the blank vector (nothing given).

    >>> describe_fields(["sex"])["slices"]
    {'sex': [0, 3]}
    """
    slices = field_slices(fields)
    return {
        "fields": list(slices),
        "width": meta_width(fields),
        "slices": {name: [place.start, place.stop] for name, place in slices.items()},
        "encoding": {
            name: "[age / 100, 1 if not given else 0]; 0..120 years"
            if name == "age"
            else f"one-hot over {', '.join(VOCABULARIES[name])}, {UNKNOWN} (= not given)"
            for name in slices
        },
        "vocabularies": {name: list(VOCABULARIES[name]) for name in slices if name != "age"},
        "blank": blank_vector(fields).tolist(),
    }


def encode_fields(frame: pd.DataFrame, fields: Sequence[str]) -> np.ndarray:
    """float32 (len(frame), meta_width(fields)): the chosen fields of every row, encoded.

    A column that is absent, NaN or empty means "not given" for that row. Ages must be numbers
    in 0..120; sex and site names must be in the vocabulary (case and surrounding spaces are
    ignored): anything else is a DataError naming the field, the rows' values and the valid ones.

    >>> frame = pd.DataFrame({"localization": ["Back", None]})
    >>> encode_fields(frame, ["localization"]).argmax(axis=1).tolist()
    [2, 14]
    """
    fields = check_fields(fields)
    n = len(frame)
    columns = {
        name: frame[name].tolist() if name in frame.columns else [None] * n for name in fields
    }
    return _encode_columns(fields, columns, n)


def encode_row(values: Mapping[str, Any], fields: Sequence[str]) -> np.ndarray:
    """float32 (meta_width(fields),): one image's fields (a missing key: not given), encoded as
    `encode_fields` encodes a row; what a client's single image needs, without a DataFrame.

    >>> encode_row({"sex": "Female"}, ["sex"]).tolist()
    [1.0, 0.0, 0.0]
    """
    fields = check_fields(fields)
    return _encode_columns(fields, {name: [values.get(name)] for name in fields}, 1)[0]


def canonical_value(name: str, value: Any) -> float | str | None:
    """One field's value as a model reads it: age a float, sex and site a vocabulary name, None
    when not given (None, NaN, empty, or "unknown"). Case and surrounding spaces are ignored; a
    value outside the field's range or vocabulary is a DataError naming the valid ones.

    >>> canonical_value("localization", " Lower Extremity "), canonical_value("age", "45")
    ('lower extremity', 45.0)
    """
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return None
    text = str(value).strip()
    if not text or (name != "age" and text.lower() == UNKNOWN):
        return None
    if name == "age":
        try:
            age = float(text)
        except ValueError:
            age = math.nan
        if not 0.0 <= age <= MAX_AGE:  # NaN fails too
            raise _bad_values(name, [text])
        return age
    if text.lower() not in VOCABULARIES[name]:
        raise _bad_values(name, [text])
    return text.lower()


def _bad_values(name: str, values: list[str]) -> DataError:
    if name == "age":
        return DataError(
            f"age must be a number of years in 0..{MAX_AGE:.0f} (or empty when not given); got "
            f"{values}."
        )
    return DataError(
        f"{name}: {values} not known; valid values: {', '.join(VOCABULARIES[name])} (or "
        f"{UNKNOWN!r} / empty when not given)."
    )


def _encode_columns(fields: tuple[str, ...], columns: dict[str, list], n: int) -> np.ndarray:
    out = np.zeros((n, meta_width(fields)), np.float32)
    for name, place in field_slices(fields).items():
        values, bad = [], set()
        for value in columns[name]:
            try:
                values.append(canonical_value(name, value))
            except DataError:
                bad.add(str(value).strip())
        if bad:  # the field's bad values named at once
            raise _bad_values(name, sorted(bad)[:5])
        block = out[:, place]  # a view: written in place
        if name == "age":
            ages = np.array([math.nan if v is None else v for v in values], np.float64)
            missing = np.isnan(ages)
            block[:, 0] = np.where(missing, 0.0, ages / 100.0)
            block[:, 1] = missing
        else:
            index = {value: i for i, value in enumerate(VOCABULARIES[name])}
            unknown = len(VOCABULARIES[name])
            block[np.arange(n), [unknown if v is None else index[v] for v in values]] = 1.0
    return out


def blank_fields(vectors, fields: Sequence[str], rate: float, seed):
    """Each row replaced whole by the "not given" encoding with probability `rate`, and each
    field of the other rows with probability `rate`.

    vectors: a float32 tensor (batch, meta_width(fields)); seed: a stateless seed (shape [2]),
    so a seeded pipeline blanks the same fields every time it is replayed.
    """
    import tensorflow as tf

    blank = tf.constant(blank_vector(fields))
    keys = tf.random.stateless_uniform([tf.shape(vectors)[0], len(fields) + 1], seed) < rate
    # One draw per field, spread over the field's columns, and one for the whole row: with the
    # fields' draws alone a row lost every field at rate**len(fields) (2.7 % for three at 0.3),
    # so a model rarely learned the answer for a user who gives none (issue 31's second pair).
    widths = [field_width(name) for name in check_fields(fields)]
    mask = tf.repeat(keys[:, :-1] | keys[:, -1:], widths, axis=1)
    return tf.where(mask, blank[None, :], vectors)
