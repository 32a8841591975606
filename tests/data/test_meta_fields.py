"""Tests of skin_tf.data.meta_fields: the patient fields encoded beside each image."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from skin_tf.data.ham10000 import DataError
from skin_tf.data.meta_fields import (
    META_FIELDS,
    SITES,
    blank_fields,
    blank_vector,
    check_fields,
    encode_fields,
    field_slices,
    meta_width,
)


def test_every_real_row_encodes_one_state_per_field_and_the_vocabulary_is_the_datas(real_frame):
    encoded = encode_fields(real_frame, META_FIELDS)
    assert encoded.shape == (len(real_frame), meta_width(META_FIELDS)) == (10015, 20)
    slices = field_slices(META_FIELDS)
    for name in ("sex", "localization"):
        assert (encoded[:, slices[name]].sum(axis=1) == 1).all()  # exactly one category each
    age = encoded[:, slices["age"]]
    assert age[:, 1].sum() == real_frame["age"].isna().sum() == 57
    np.testing.assert_allclose(age[age[:, 1] == 0, 0] * 100, real_frame["age"].dropna(), atol=1e-4)
    # The data's sites are exactly the vocabulary plus its own "unknown" (234 images).
    assert set(real_frame["localization"]) == {*SITES, "unknown"}
    assert encoded[:, slices["localization"]][:, -1].sum() == 234
    assert encoded[:, slices["sex"]][:, -1].sum() == (real_frame["sex"] == "unknown").sum() == 57


def test_not_given_is_the_datas_unknown_whatever_form_it_takes():
    frame = pd.DataFrame(
        {"age": [np.nan, "", 40], "sex": [None, " Unknown ", "FEMALE"],
         "localization": ["", "unknown", "Lower extremity"]}
    )  # fmt: skip
    encoded = encode_fields(frame, META_FIELDS)
    np.testing.assert_array_equal(encoded[0], blank_vector(META_FIELDS))
    np.testing.assert_array_equal(encoded[1], blank_vector(META_FIELDS))
    assert encoded[2, 0] == pytest.approx(0.4) and encoded[2, 1] == 0
    assert encoded[2, field_slices(META_FIELDS)["sex"]].tolist() == [1, 0, 0]
    # An absent column is "not given" for every row.
    np.testing.assert_array_equal(encode_fields(frame[["age"]], ["sex"]), [[0, 0, 1]] * 3)


@pytest.mark.parametrize(
    ("column", "value", "message"),
    [
        ("age", 250, r"age must be a number of years in 0\.\.120 .*'250'"),
        ("age", "old", r"age must be a number.*'old'"),
        ("sex", "x", r"sex: \['x'\] not known; valid values: female, male"),
        ("localization", "elbow", r"localization: \['elbow'\] not known; valid values: abdomen"),
    ],
)
def test_bad_values_name_the_field_and_the_valid_values(column, value, message):
    with pytest.raises(DataError, match=message):
        encode_fields(pd.DataFrame({column: [value]}), [column])


def test_leaks_and_unknown_or_repeated_fields_are_refused():
    with pytest.raises(ValueError, match="'dx_type' can never be a model input: .*label leak"):
        check_fields(["age", "dx_type"])
    with pytest.raises(ValueError, match="'dx' can never be a model input"):
        encode_fields(pd.DataFrame({"dx": ["mel"]}), ["dx"])
    with pytest.raises(ValueError, match="unknown metadata field 'site': choose from age"):
        meta_width(["site"])
    with pytest.raises(ValueError, match=r"\['sex'\] listed twice"):
        check_fields(["sex", "age", "sex"])


def test_blanking_replaces_whole_rows_and_fields_at_the_rate_and_replays_with_its_seed():
    fields = META_FIELDS
    given = encode_fields(
        pd.DataFrame({"age": [60] * 4000, "sex": ["male"] * 4000, "localization": ["face"] * 4000}),
        fields,
    )
    out = blank_fields(tf.constant(given), fields, 0.3, tf.constant([7, 1])).numpy()
    np.testing.assert_array_equal(out, blank_fields(given, fields, 0.3, tf.constant([7, 1])))
    blank = blank_vector(fields)
    for name, where in field_slices(fields).items():
        is_blank = (out[:, where] == blank[where]).all(axis=1)
        is_given = (out[:, where] == given[0, where]).all(axis=1)
        assert (is_blank | is_given).all(), name  # a field is blanked whole or kept whole
        assert 0.48 < is_blank.mean() < 0.54, name  # the row's draw or its own: 0.3 + 0.7 * 0.3
    # Every field blanked: the row's draw (0.3) or all three of its own (0.7 * 0.3**3 = 0.019).
    assert 0.29 < (out == blank).all(axis=1).mean() < 0.35
    assert 0.21 < (out == given).all(axis=1).mean() < 0.27  # none blanked: 0.7**4 = 0.24
    assert blank_fields(tf.constant(given), fields, 0.0, tf.constant([7, 1])).numpy().tolist() == (
        given.tolist()
    )
