"""The ISIC 2018 Task 3 test-set reader (the download path is tested in test_download.py)."""

import pandas as pd
import pytest

from skin_tf.data.ham10000 import CLASSES, DataError
from skin_tf.data.isic2018 import read_isic2018_test


def test_read_isic2018_test_reads_the_challenge_one_hot_format(tmp_path):
    images = tmp_path / "ISIC2018_Task3_Test_Images"
    images.mkdir()
    one_hot = ["MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC"]  # the challenge's column order
    rows = []
    for k, name in enumerate(one_hot):
        (images / f"ISIC_{k:07d}.jpg").write_bytes(b"jpg")
        rows.append({"image": f"ISIC_{k:07d}", **{c: float(c == name) for c in one_hot}})
    gt = tmp_path / "ISIC2018_Task3_Test_GroundTruth.csv"
    pd.DataFrame(rows).to_csv(gt, index=False)
    test = read_isic2018_test(tmp_path)
    assert test["dx"].tolist() == [c.lower() for c in one_hot]
    assert test["label"].tolist() == [CLASSES.index(c.lower()) for c in one_hot]
    rows[0]["NV"] = 1.0  # two classes set
    pd.DataFrame(rows).to_csv(gt, index=False)
    with pytest.raises(DataError, match="exactly one class"):
        read_isic2018_test(tmp_path)


def test_read_isic2018_test_without_files_says_how_to_get_them(tmp_path):
    with pytest.raises(DataError, match="skin-tf download --isic2018-test"):
        read_isic2018_test(tmp_path)
