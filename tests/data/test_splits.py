"""Tests for skin_tf.data.splits: the lesion split, its table, lesion subsets and splits.csv.

The split is checked on a fake copy (fast) and on the real HAM10000 (SKIN_TF_TEST_DATA; the
full-size splits are marked slow).
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest

from skin_tf.data.ham10000 import CLASSES, DataError, read_metadata
from skin_tf.data.splits import (
    lesion_subset,
    read_splits,
    split_by_lesion,
    split_frames,
    split_table,
    write_splits,
)
from tests.fakes import make_fake_ham10000

TINY = (8, 6)  # image size: splitting never decodes pixels


# ----------------------------------------------------------------------------- splitting


@pytest.mark.parametrize(
    "fractions",
    [(0.8, 0.2), (0.8, 0.1, 0.05), (1.0, 0.0, 0.0), (0.9, 0.2, -0.1), ("0.8", 0.1, 0.1), (1, 0, 0)],
)
def test_split_rejects_bad_fractions(fake_root, fractions):
    frame = read_metadata(fake_root)
    with pytest.raises(DataError, match="three positive numbers .* summing to 1"):
        split_by_lesion(frame, fractions)


def test_split_rejects_frame_without_lesion_id(fake_root):
    frame = read_metadata(fake_root).drop(columns=["lesion_id"])
    with pytest.raises(
        DataError, match="split_by_lesion: missing column.*lesion_id.*read_metadata"
    ):
        split_by_lesion(frame)


@pytest.fixture(scope="module")
def medium_frame(tmp_path_factory) -> pd.DataFrame:
    root = make_fake_ham10000(
        tmp_path_factory.mktemp("medium"), per_class=30, images_per_lesion=3, size=TINY
    )
    return read_metadata(root)


def test_split_on_fake_is_stratified_lesion_disjoint_and_seeded(medium_frame):
    original = medium_frame.copy()
    split = split_by_lesion(medium_frame, seed=3)
    pd.testing.assert_frame_equal(medium_frame, original)  # input untouched
    assert list(split.columns) == [*medium_frame.columns, "split"]
    assert set(split["split"]) == {"train", "val", "test"}
    assert split.groupby("lesion_id")["split"].nunique().max() == 1
    assert (pd.crosstab(split["dx"], split["split"]) > 0).all().all()
    shares = split["split"].value_counts(normalize=True)
    np.testing.assert_allclose(shares[["train", "val", "test"]], [0.8, 0.1, 0.1], atol=0.05)
    pd.testing.assert_frame_equal(split, split_by_lesion(medium_frame, seed=3))


def test_split_of_a_tiny_frame_falls_back_with_a_warning(fake_root, caplog):
    frame = read_metadata(fake_root)  # 2 lesions per class: too few to stratify
    with caplog.at_level(logging.WARNING, logger="skin_tf.data.splits"):
        split = split_by_lesion(frame, seed=0)
    assert set(split["split"]) == {"train", "val", "test"}
    assert split.groupby("lesion_id")["split"].nunique().max() == 1
    assert "without stratification" in caplog.text
    assert "classes missing from a split" in caplog.text


def test_split_needs_three_lesions(fake_root):
    frame = read_metadata(fake_root)
    two_lesions = frame[frame["lesion_id"].isin(frame["lesion_id"].unique()[:2])]
    with pytest.raises(DataError, match="cannot split 2 lesion"):
        split_by_lesion(two_lesions)


def test_split_table_counts(medium_frame):
    table = split_table(split_by_lesion(medium_frame, seed=0))
    assert list(table.index) == [*CLASSES, "total"]
    assert list(table.columns) == ["train", "val", "test", "all"]
    assert (table["all"].iloc[:-1] == 30).all()
    assert table.loc["total", "all"] == 210
    assert (table[["train", "val", "test"]].sum(axis=1) == table["all"]).all()
    with pytest.raises(DataError, match="split_table: missing column"):
        split_table(medium_frame)


# ----------------------------------------------------------------------------- real data


@pytest.fixture(scope="module")
def real_split(real_frame) -> pd.DataFrame:
    return split_by_lesion(real_frame, seed=42)


@pytest.mark.slow  # StratifiedGroupKFold over 7,470 lesions: about 3 s per split on 2 cores
def test_real_split_properties(real_frame, real_split):
    assert len(real_split) == 10_015
    assert real_split.groupby("lesion_id")["split"].nunique().max() == 1
    table = split_table(real_split)
    assert (table.loc[list(CLASSES), ["train", "val", "test"]] > 0).all().all()
    share = table / table.loc["total"]
    big = [dx for dx in CLASSES if table.loc[dx, "all"] >= 300]
    assert big == ["akiec", "bcc", "bkl", "mel", "nv"]
    for split in ("train", "val", "test"):
        gap = (share.loc[big, split] - share.loc[big, "all"]).abs().max()
        assert gap <= 0.02, f"{split}: class share off by {gap:.3f}"
    sizes = table.loc["total", ["train", "val", "test"]] / len(real_split)
    np.testing.assert_allclose(sizes, [0.8, 0.1, 0.1], atol=0.01)


@pytest.mark.slow
def test_real_split_is_deterministic_per_seed(real_frame, real_split):
    pd.testing.assert_series_equal(
        split_by_lesion(real_frame, seed=42)["split"], real_split["split"]
    )
    other = split_by_lesion(real_frame, seed=7)["split"]
    assert (other != real_split["split"]).sum() > 1000


def test_real_lesion_subset_has_every_class_and_whole_lesions(real_frame):
    subset = lesion_subset(real_frame, per_class=20, seed=0)
    counts = subset["dx"].value_counts()
    assert set(counts.index) == set(CLASSES) and (counts >= 20).all()
    assert len(subset) < 7 * 30  # small: stops once each class has enough
    full_sizes = real_frame["lesion_id"].value_counts()
    sizes = subset["lesion_id"].value_counts()
    assert sizes.to_dict() == full_sizes[sizes.index].to_dict()
    assert subset["image_id"].tolist() == lesion_subset(real_frame, 20, seed=0)["image_id"].tolist()
    assert subset["image_id"].tolist() != lesion_subset(real_frame, 20, seed=1)["image_id"].tolist()


def test_lesion_subset_takes_what_is_available(fake_root):
    frame = read_metadata(fake_root)  # 4 images per class
    subset = lesion_subset(frame, per_class=10)
    assert len(subset) == len(frame)
    assert lesion_subset(frame, per_class=1)["dx"].value_counts().min() >= 1
    for bad in (0, -3, 2.5, True):
        with pytest.raises(DataError, match="per_class=.*positive integer"):
            lesion_subset(frame, per_class=bad)


# ----------------------------------------------------------------------------- splits.csv


def test_write_and_read_splits_round_trip(medium_frame, tmp_path):
    split = split_by_lesion(medium_frame, seed=0)
    path = write_splits(split, tmp_path / "run" / "splits.csv")
    back = read_splits(path)
    assert list(back.columns) == ["image_id", "lesion_id", "dx", "split"]
    pd.testing.assert_frame_equal(
        back, split[["image_id", "lesion_id", "dx", "split"]].astype(str), check_dtype=False
    )
    with pytest.raises(FileExistsError, match="already exists.*overwrite=True"):
        write_splits(split, path)
    write_splits(split.iloc[:10], path, overwrite=True)
    assert len(read_splits(path)) == 10


def test_split_frames_rejoins_a_saved_split_to_the_data(tmp_path):
    root = make_fake_ham10000(tmp_path / "ham", per_class=12, size=TINY)
    split = split_by_lesion(read_metadata(root), seed=0)
    path = write_splits(split, tmp_path / "run" / "splits.csv")
    frames = split_frames(path, root)
    for name, frame in frames.items():
        expected = split[split["split"] == name]
        assert frame["image_id"].tolist() == expected["image_id"].tolist()
        assert frame["path"].tolist() == expected["path"].tolist()
        assert (frame["label"].to_numpy() == expected["label"].to_numpy()).all()
    other = make_fake_ham10000(tmp_path / "other", per_class=2, size=TINY)
    with pytest.raises(DataError, match=r"images of .*splits.csv are not in .*pass --data"):
        split_frames(path, other)


def test_write_splits_needs_a_split_column(medium_frame, tmp_path):
    with pytest.raises(DataError, match="write_splits: missing column.*split"):
        write_splits(medium_frame, tmp_path / "splits.csv")


@pytest.mark.parametrize(
    ("corrupt", "message"),
    [
        (lambda t: t.drop(columns=["lesion_id"]), "missing column.*lesion_id"),
        (
            lambda t: t.assign(split=t["split"].replace("val", "valid")),
            "unknown split value.*valid",
        ),
        (lambda t: t.assign(dx=t["dx"].replace("mel", "MM")), "unknown dx value.*MM"),
        (lambda t: pd.concat([t, t.iloc[:2]]), "2 duplicated image_id"),
        (
            lambda t: t.assign(split=["train", "test"] * (len(t) // 2)),
            "lesion_id.*more than one split",
        ),
    ],
)
def test_read_splits_rejects_corrupt_files(medium_frame, tmp_path, corrupt, message):
    table = split_by_lesion(medium_frame, seed=0)[["image_id", "lesion_id", "dx", "split"]]
    corrupt(table).to_csv(tmp_path / "splits.csv", index=False)
    with pytest.raises(DataError, match=f"splits file .*invalid: .*{message}.*regenerate"):
        read_splits(tmp_path / "splits.csv")


def test_read_splits_missing_file(tmp_path):
    with pytest.raises(DataError, match="does not exist.*skin-tf split"):
        read_splits(tmp_path / "splits.csv")
