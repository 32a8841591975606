"""Patient fields as clients give them: normalising, encoding, the --meta CSV and its errors."""

from __future__ import annotations

import numpy as np
import pytest

from skin_tf.data.ham10000 import DataError
from skin_tf.data.meta_fields import META_FIELDS, blank_vector, encode_fields
from skin_tf.serving.patient import (
    any_given,
    describe_used,
    encode_given,
    fields_of_files,
    fields_used,
    read_fields_csv,
)


def test_not_given_has_one_meaning_whatever_the_client_sends():
    for nothing in (None, {}, {"age": "", "sex": "unknown", "localization": float("nan")}):
        assert fields_used(META_FIELDS, nothing) == dict.fromkeys(META_FIELDS)
        assert np.array_equal(encode_given(META_FIELDS, [nothing])[0], blank_vector(META_FIELDS))
    assert not any_given([None, {"sex": " Unknown "}]) and any_given([None, {"age": 0}])


def test_given_values_encode_as_the_training_pipeline_encodes_them():
    import pandas as pd

    given = [{"age": "45", "sex": "Male", "localization": " lower extremity "}, {"age": 70}]
    expected = encode_fields(
        pd.DataFrame({"age": [45.0, 70.0], "sex": ["male", None],
                      "localization": ["lower extremity", None]}), META_FIELDS,
    )  # fmt: skip
    assert np.array_equal(encode_given(META_FIELDS, given), expected)
    assert (
        describe_used(fields_used(META_FIELDS, given[0]))
        == "age 45, sex male, site lower extremity"
    )


def test_bad_values_and_unknown_or_leaking_names_are_errors_naming_the_fix():
    with pytest.raises(DataError, match="upper extremity"):
        encode_given(META_FIELDS, [{"localization": "elbow"}])
    for age in ("old", 250, "-3"):
        with pytest.raises(DataError, match="0..120"):
            encode_given(META_FIELDS, [{"age": age}])
    with pytest.raises(DataError, match="sex: \\['x'\\] not known; valid values: female, male"):
        encode_given(META_FIELDS, [{"sex": "x"}])
    with pytest.raises(ValueError, match="label leak"):
        fields_used(META_FIELDS, {"dx_type": "histo"})
    with pytest.raises(ValueError, match="takes: age, sex"):
        fields_used(("age", "sex"), {"localization": "back"})


def test_the_csv_is_checked_whole_before_anything_is_scored(tmp_path):
    path = tmp_path / "fields.csv"
    path.write_text("image,age,sex,localization\nISIC_1.jpg,55,male,back\nISIC_2,,,\n")
    table = read_fields_csv(path, META_FIELDS)
    rows = fields_of_files(table, ["in/ISIC_1.jpg", "in/ISIC_2.png", "in/ISIC_3.jpg"])
    assert rows[0] == {"age": "55", "sex": "male", "localization": "back"}
    assert fields_used(META_FIELDS, rows[1]) == dict.fromkeys(META_FIELDS) and rows[2] is None
    with pytest.raises(DataError, match="not being predicted: ISIC_2"):
        fields_of_files(table, ["ISIC_1.jpg"])
    cases = {
        "age\n55\n": "no `image` column",
        "image,dx_type\na.jpg,histo\n": "label leak",
        "image,site\na.jpg,back\n": "'site' not among",
        "image,sex\na.jpg,male\na.jpg,female\n": "listed more than once",
        "image,sex\na.jpg,robot\n": "female, male",
    }
    for text, message in cases.items():
        path.write_text(text)
        with pytest.raises(DataError, match=message):
            read_fields_csv(path, META_FIELDS)
    with pytest.raises(DataError, match="not found"):
        read_fields_csv(tmp_path / "missing.csv", META_FIELDS)
