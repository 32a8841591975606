"""Tests for skin_tf.data.ham10000: every folder layout, every error, the real metadata read in
full."""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from skin_tf.data.ham10000 import (
    CLASSES,
    INDEX_COLUMNS,
    MEL_INDEX,
    DataError,
    read_metadata,
    resolve_data_root,
)
from tests.fakes import make_fake_ham10000

TINY = (8, 6)  # image size for layout tests: the reader never decodes pixels


def make(root: Path, **kwargs) -> Path:
    kwargs.setdefault("size", TINY)
    kwargs.setdefault("per_class", 2)
    return make_fake_ham10000(root, **kwargs)


def metadata(root: Path) -> pd.DataFrame:
    return pd.read_csv(root / "HAM10000_metadata.csv", dtype=str, keep_default_na=False)


def write_metadata(root: Path, table: pd.DataFrame) -> None:
    table.to_csv(root / "HAM10000_metadata.csv", index=False)


def assert_index_ok(frame: pd.DataFrame, root: Path, expected_rows: int) -> None:
    assert list(frame.columns[: len(INDEX_COLUMNS)]) == list(INDEX_COLUMNS)
    assert len(frame) == expected_rows
    assert list(frame.index) == list(range(expected_rows))
    assert frame["label"].dtype == np.int64
    assert frame["age"].dtype == np.float64
    assert [CLASSES[i] for i in frame["label"]] == frame["dx"].tolist()
    for image_id, path in zip(frame["image_id"], frame["path"], strict=True):
        assert isinstance(path, str) and os.path.isabs(path) and Path(path).is_file()
        assert Path(path).stem == image_id
        assert Path(path).resolve().is_relative_to(root.resolve())
    assert frame["image_id"].tolist() == metadata(root)["image_id"].tolist()  # CSV row order


# ----------------------------------------------------------------------------- layouts


@pytest.mark.parametrize("layout", ["images", "parts", "parts_lower", "nested"])
@pytest.mark.parametrize("fmt", ["jpg", "png"])
def test_every_layout_and_format_is_found(tmp_path, layout, fmt):
    root = make(tmp_path / "ham", layout=layout, fmt=fmt)
    frame = read_metadata(root)
    assert_index_ok(frame, root, 7 * 2)
    assert {Path(p).suffix for p in frame["path"]} == {f".{fmt}"}


@pytest.mark.parametrize("fmt", ["JPG", "jpeg", "JPEG", "PNG"])
def test_extension_case_and_jpeg_spelling(tmp_path, fmt):
    root = make(tmp_path / "ham", fmt=fmt)
    assert_index_ok(read_metadata(root), root, 14)


def test_real_parts_folder_names(tmp_path):
    root = make(tmp_path / "ham", layout="parts")
    parts = {Path(p).parent.name for p in read_metadata(root)["path"]}
    assert parts == {"HAM10000_images_part_1", "HAM10000_images_part_2"}


def test_kaggle_download_with_both_letter_case_copies(tmp_path, caplog):
    # Kaggle ships HAM10000_images_part_N and ham10000_images_part_N holding the same files.
    root = make(tmp_path / "ham", layout="kaggle")
    assert (root / "ham10000_images_part_1").is_dir()
    with caplog.at_level(logging.INFO, logger="skin_tf.data.ham10000"):
        frame = read_metadata(root)
    assert_index_ok(frame, root, 14)
    assert {Path(p).parent.name for p in frame["path"]} == {
        "HAM10000_images_part_1",
        "HAM10000_images_part_2",
    }
    assert "14 images exist twice" in caplog.text


def test_dataverse_csv_keeps_extra_column_at_the_end(tmp_path):
    root = make(tmp_path / "ham", dataverse=True)
    frame = read_metadata(root)
    assert_index_ok(frame, root, 14)
    assert list(frame.columns) == [*INDEX_COLUMNS, "dataset"]
    assert set(frame["dataset"]) == {"vidir_modern"}


def test_dataverse_tab_file_is_read(tmp_path):
    # Dataverse's default download is the ingested, tab-separated, quoted HAM10000_metadata.tab.
    root = make(tmp_path / "ham", dataverse=True)
    table = metadata(root)
    (root / "HAM10000_metadata.csv").unlink()
    table.to_csv(root / "HAM10000_metadata.tab", sep="\t", index=False, quoting=2)
    frame = read_metadata(root)
    assert list(frame.columns) == [*INDEX_COLUMNS, "dataset"]
    assert frame["image_id"].tolist() == table["image_id"].tolist()
    assert frame["age"].tolist() == table["age"].astype(float).tolist()


def test_csv_beats_tab_and_shallow_beats_deep(tmp_path):
    root = make(tmp_path / "ham")
    table = metadata(root)
    table.iloc[:4].to_csv(root / "HAM10000_metadata.tab", sep="\t", index=False)
    (root / "old").mkdir()
    table.iloc[:3].to_csv(root / "old" / "HAM10000_metadata.csv", index=False)
    assert len(read_metadata(root)) == 14


def test_metadata_below_root_and_explicit_metadata_csv(tmp_path):
    root = make(tmp_path / "ham")
    (root / "meta").mkdir()
    shutil.move(root / "HAM10000_metadata.csv", root / "meta" / "HAM10000_metadata.csv")
    assert len(read_metadata(root)) == 14
    elsewhere = tmp_path / "my_metadata.csv"
    metadata(root / "meta").iloc[:5].to_csv(elsewhere, index=False)
    assert (
        read_metadata(root, metadata_csv=elsewhere)["image_id"].tolist()
        == (metadata(root / "meta")["image_id"].tolist()[:5])
    )


def test_unlisted_files_hidden_folders_and_masks_are_ignored(tmp_path):
    root = make(tmp_path / "ham")
    images = root / "images"
    first = sorted(images.iterdir())[0]
    shutil.copy(first, images / "ISIC_0034524.jpg")  # an ISIC 2018 test image
    shutil.copy(first, images / f"{first.stem}_segmentation.png")  # a lesion mask
    for junk in ("__MACOSX", ".ipynb_checkpoints"):
        (root / junk).mkdir()
        shutil.copy(first, root / junk / first.name)  # would be a duplicate if it were read
    (images / "notes.txt").write_text("not an image")
    assert_index_ok(read_metadata(root), root, 14)


def test_symlinked_image_folder_is_followed(tmp_path):
    store = make(tmp_path / "disk")
    root = tmp_path / "ham"
    root.mkdir()
    shutil.copy(store / "HAM10000_metadata.csv", root)
    (root / "images").symlink_to(store / "images", target_is_directory=True)
    (root / "images" / "loop").symlink_to(root, target_is_directory=True)  # must not loop
    frame = read_metadata(root)
    assert len(frame) == 14
    assert all(Path(p).is_file() for p in frame["path"])


def test_age_blank_or_unknown_is_nan_and_cells_are_stripped(tmp_path):
    root = make(tmp_path / "ham")
    table = metadata(root)
    table.loc[0, "age"], table.loc[1, "age"], table.loc[2, "age"] = "", "unknown", " 35 "
    table.loc[3, "dx"] = " AKIEC "
    write_metadata(root, table)
    frame = read_metadata(root)
    assert np.isnan(frame.loc[0, "age"]) and np.isnan(frame.loc[1, "age"])
    assert frame.loc[2, "age"] == 35.0
    assert frame.loc[3, "dx"] == "akiec" and frame.loc[3, "label"] == 0


def test_mel_index_matches_class_order():
    assert CLASSES[MEL_INDEX] == "mel"


# ----------------------------------------------------------------------------- errors


def test_error_root_missing(tmp_path):
    with pytest.raises(DataError, match="does not exist") as info:
        read_metadata(tmp_path / "nowhere")
    assert "skin-tf download" in str(info.value)


def test_error_root_is_a_file(tmp_path):
    archive = tmp_path / "HAM10000_images_part_1.zip"
    archive.write_bytes(b"PK")
    with pytest.raises(DataError, match="is not a folder.*unzip"):
        read_metadata(archive)


def test_error_root_unreadable(tmp_path, monkeypatch):
    root = make(tmp_path / "ham")
    real_scandir = os.scandir

    def refuse(path):  # tests may run as root, where chmod 000 does not stop reading
        if Path(path) == root.resolve():
            raise PermissionError(13, "Permission denied")
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", refuse)
    with pytest.raises(DataError, match=r"cannot read data folder .*Permission denied.*chmod"):
        read_metadata(root)


def test_error_metadata_missing_names_files_and_source(tmp_path):
    root = make(tmp_path / "ham")
    (root / "HAM10000_metadata.csv").unlink()
    with pytest.raises(DataError) as info:
        read_metadata(root)
    text = str(info.value)
    for needle in (
        "no metadata file below",
        "HAM10000_metadata.csv or HAM10000_metadata.tab",
        "skin-tf download",
        "Dataverse",
        "Kaggle",
        "metadata_csv=",
    ):
        assert needle in text


def test_error_two_equally_likely_metadata_files(tmp_path):
    root = make(tmp_path / "ham")
    for sub in ("a", "b"):
        (root / sub).mkdir()
        shutil.copy(root / "HAM10000_metadata.csv", root / sub)
    (root / "HAM10000_metadata.csv").unlink()
    with pytest.raises(DataError, match=r"2 equally likely metadata files.*metadata_csv="):
        read_metadata(root)


def test_error_metadata_csv_argument_not_a_file(tmp_path):
    root = make(tmp_path / "ham")
    with pytest.raises(DataError, match=r"metadata_csv=.*typo\.csv is not a file"):
        read_metadata(root, metadata_csv=tmp_path / "typo.csv")


def test_error_metadata_not_text(tmp_path):
    root = make(tmp_path / "ham")
    (root / "HAM10000_metadata.csv").write_bytes(b"\xff\xfe\x00\x81binary")
    with pytest.raises(DataError, match="cannot read metadata file"):
        read_metadata(root)


def test_error_metadata_without_rows(tmp_path):
    root = make(tmp_path / "ham")
    write_metadata(root, metadata(root).iloc[:0])
    with pytest.raises(DataError, match="lists no images. Fix"):
        read_metadata(root)


def test_error_missing_columns_named_with_columns_found(tmp_path):
    root = make(tmp_path / "ham")
    write_metadata(root, metadata(root).drop(columns=["lesion_id", "sex"]))
    with pytest.raises(DataError) as info:
        read_metadata(root)
    text = str(info.value)
    assert "lacks required column(s) lesion_id, sex" in text
    assert "columns found: image_id, dx, dx_type, age, localization" in text
    assert "Fix: use the original HAM10000 metadata" in text


def test_error_unknown_dx_names_values_and_allowed(tmp_path):
    root = make(tmp_path / "ham")
    table = metadata(root)
    table.loc[[0, 1], "dx"] = "melanoma"
    table.loc[2, "dx"] = "scc"
    write_metadata(root, table)
    with pytest.raises(DataError) as info:
        read_metadata(root)
    text = str(info.value)
    assert "unknown dx value(s) 'melanoma' (2 rows), 'scc' (1 rows)" in text
    assert "allowed: akiec, bcc, bkl, df, mel, nv, vasc" in text
    assert "Fix: correct those dx cells" in text


def test_error_empty_lesion_id_names_lines(tmp_path):
    root = make(tmp_path / "ham")
    table = metadata(root)
    table.loc[3, "lesion_id"] = ""
    write_metadata(root, table)
    with pytest.raises(DataError, match=r"1 row\(s\) have an empty lesion_id \(CSV lines 5\)"):
        read_metadata(root)


def test_error_duplicate_image_id_count_and_ids(tmp_path):
    root = make(tmp_path / "ham")
    table = metadata(root)
    write_metadata(root, pd.concat([table, table.iloc[[0, 5]]], ignore_index=True))
    with pytest.raises(DataError) as info:
        read_metadata(root)
    text = str(info.value)
    ids = table["image_id"]
    assert f"lists 2 image_id(s) more than once: {ids[0]}, {ids[5]}" in text
    assert "Fix: keep one row per image_id" in text


def test_error_non_numeric_age(tmp_path):
    root = make(tmp_path / "ham")
    table = metadata(root)
    table.loc[0, "age"] = "forty"
    write_metadata(root, table)
    with pytest.raises(DataError, match=r"non-numeric age value\(s\) forty.*Fix"):
        read_metadata(root)


def test_error_same_image_as_jpg_and_png_names_both_paths(tmp_path):
    root = make(tmp_path / "ham")
    jpg = sorted((root / "images").iterdir())[0]
    png = jpg.with_suffix(".png")
    shutil.copy(jpg, png)
    with pytest.raises(DataError) as info:
        read_metadata(root)
    text = str(info.value)
    assert f"1 image_id(s) exist as more than one file: {jpg.stem}" in text
    assert str(jpg) in text and str(png) in text
    assert "Fix: keep exactly one copy" in text


def test_error_same_image_in_two_folders_names_both_paths(tmp_path):
    root = make(tmp_path / "ham", layout="parts")
    first = sorted((root / "HAM10000_images_part_1").iterdir())[0]
    copy = root / "images" / first.name
    copy.parent.mkdir()
    shutil.copy(first, copy)
    with pytest.raises(DataError) as info:
        read_metadata(root)
    assert str(first) in str(info.value) and str(copy) in str(info.value)


def test_letter_case_twins_of_different_size_are_a_conflict(tmp_path):
    root = make(tmp_path / "ham", layout="parts")
    first = sorted((root / "HAM10000_images_part_1").iterdir())[0]
    twin = root / "ham10000_images_part_1" / first.name
    twin.parent.mkdir()
    twin.write_bytes(first.read_bytes() + b"\0")
    with pytest.raises(DataError, match="exist as more than one file"):
        read_metadata(root)


def missing_five_or_more(root: Path) -> list[str]:
    gone = sorted((root / "images").iterdir())[:6]
    for path in gone:
        path.unlink()
    return [p.stem for p in gone]


def test_error_images_missing_count_first_ids_and_fixes(tmp_path):
    root = make(tmp_path / "ham")
    gone = missing_five_or_more(root)
    with pytest.raises(DataError) as info:
        read_metadata(root)
    text = str(info.value)
    assert "6 of 14 images listed in HAM10000_metadata.csv have no file below" in text
    assert "(8 image files found there)" in text
    assert ", ".join(gone[:5]) + ", … (1 more)" in text
    assert "drop_missing=True" in text and "HAM10000_images_part_1" in text


def test_drop_missing_drops_and_logs_the_count(tmp_path, caplog):
    root = make(tmp_path / "ham")
    gone = missing_five_or_more(root)
    with caplog.at_level(logging.WARNING, logger="skin_tf.data.ham10000"):
        frame = read_metadata(root, drop_missing=True)
    assert len(frame) == 8 and not set(gone) & set(frame["image_id"])
    assert list(frame.index) == list(range(8))
    assert "dropping 6 of 14 metadata rows" in caplog.text


# ----------------------------------------------------------------------------- data root


def test_resolve_data_root_prefers_argument_then_env_then_default(tmp_path, monkeypatch):
    explicit = make(tmp_path / "explicit")
    from_env = make(tmp_path / "env")
    default = make(tmp_path / "cwd" / "data" / "ham10000")
    monkeypatch.chdir(tmp_path / "cwd")
    monkeypatch.setenv("SKIN_TF_DATA", str(from_env))
    assert resolve_data_root(explicit) == explicit.resolve()
    assert resolve_data_root() == from_env.resolve()
    monkeypatch.delenv("SKIN_TF_DATA")
    assert resolve_data_root() == default.resolve()


def test_resolve_data_root_error_says_where_to_put_the_data(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SKIN_TF_DATA", raising=False)
    with pytest.raises(DataError) as info:
        resolve_data_root()
    text = str(info.value)
    for needle in (
        "data/ham10000",
        "does not exist",
        "SKIN_TF_DATA unset",
        "skin-tf download",
        "HAM10000_images_part_1/ + HAM10000_images_part_2/",
        "single images/ folder",
    ):
        assert needle in text
    (tmp_path / "empty").mkdir()
    monkeypatch.setenv("SKIN_TF_DATA", str(tmp_path / "empty"))
    with pytest.raises(DataError, match=r"\(from \$SKIN_TF_DATA\).*holds no HAM10000_metadata"):
        resolve_data_root()


# ----------------------------------------------------------------------------- real data


def test_real_metadata_reads_fast_and_complete(real_data_root):
    start = time.perf_counter()
    frame = read_metadata(real_data_root)
    seconds = time.perf_counter() - start
    assert seconds < 3.0, f"read_metadata took {seconds:.2f} s on 10,015 images"
    assert len(frame) == 10_015 and frame["lesion_id"].nunique() == 7_470
    assert frame["age"].isna().sum() == 57
    assert frame["dx"].value_counts().to_dict() == {
        "nv": 6705, "mel": 1113, "bkl": 1099, "bcc": 514, "akiec": 327, "vasc": 142, "df": 115,
    }  # fmt: skip
