"""The HAM10000 TFDS builder: prepare from a folder, read examples back, feed the pipeline."""

from __future__ import annotations

import csv
import importlib
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from PIL import Image

from skin_tf.data import tfds_ham10000 as ham_tfds
from skin_tf.data.ham10000 import DataError, read_metadata
from skin_tf.data.pipeline import make_dataset
from skin_tf.data.splits import lesion_subset, split_by_lesion
from tests.fakes import make_fake_ham10000

TEXT_FIELDS = ("image_id", "lesion_id", "dx_type", "sex", "localization")


def read_split(split: str, data_dir: Path) -> dict[str, dict]:
    """image_id -> numpy example (image left encoded) of one prepared split."""
    examples = tfds.as_numpy(ham_tfds.read_encoded(split, data_dir))
    return {ex["image_id"].decode(): ex for ex in examples}


def expected_splits(root: Path) -> pd.DataFrame:
    frame = read_metadata(root)
    return split_by_lesion(frame, fractions=ham_tfds.SPLIT_FRACTIONS, seed=ham_tfds.SPLIT_SEED)


@pytest.fixture(scope="module")
def fake_prepared(tmp_path_factory) -> tuple[Path, Path]:
    """A synthetic HAM10000 folder (70 small JPEGs, 35 lesions) and its prepared TFDS copy."""
    tmp = tmp_path_factory.mktemp("tfds_fake")
    root = make_fake_ham10000(tmp / "ham", per_class=10, images_per_lesion=2, size=(40, 30))
    data_dir = tmp / "tfds"
    ham_tfds.prepare_ham10000(root, data_dir)
    return root, data_dir


def test_split_constants_are_split_by_lesion_defaults():
    import inspect

    defaults = inspect.signature(split_by_lesion).parameters
    assert defaults["fractions"].default == ham_tfds.SPLIT_FRACTIONS
    assert defaults["seed"].default == ham_tfds.SPLIT_SEED


def test_splits_match_split_by_lesion(fake_prepared):
    root, data_dir = fake_prepared
    expected = expected_splits(root)
    info = ham_tfds.prepared_builder(data_dir).info
    assert set(info.splits.keys()) == {"train", "validation", "test"}
    for ours, tfds_name in ham_tfds.TFDS_SPLIT_NAMES.items():
        ids = set(expected.loc[expected["split"] == ours, "image_id"])
        assert ids, f"split_by_lesion gave an empty {ours} split on the fake data"
        assert set(read_split(ours, data_dir)) == ids
        assert info.splits[tfds_name].num_examples == len(ids)


def test_features_read_back(fake_prepared):
    root, data_dir = fake_prepared
    rows = read_metadata(root).set_index("image_id")
    seen = 0
    for split in ("train", "validation", "test"):
        for image_id, ex in read_split(split, data_dir).items():
            row = rows.loc[image_id]
            assert ex["label"] == row["label"]
            for field in TEXT_FIELDS[1:]:
                assert ex[field].decode() == row[field], field
            assert ex["age"] == pytest.approx(row["age"])
            seen += 1
    assert seen == len(rows)


def test_info_describes_the_dataset(fake_prepared):
    _, data_dir = fake_prepared
    builder = ham_tfds.prepared_builder(data_dir)
    info = builder.info
    assert info.name == "ham10000" and str(info.version) == "1.0.0"
    assert info.features["label"].names == ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]
    assert info.supervised_keys == ("image", "label")
    assert "10.7910/DVN/DBW86T" in info.homepage
    assert "Tschandl" in info.citation
    assert "skin-tf download" in builder.MANUAL_DOWNLOAD_INSTRUCTIONS
    assert "HAM10000_images_part_1" in builder.MANUAL_DOWNLOAD_INSTRUCTIONS


def test_jpeg_bytes_are_stored_unchanged(fake_prepared):
    root, data_dir = fake_prepared
    paths = read_metadata(root).set_index("image_id")["path"]
    for image_id, ex in read_split("test", data_dir).items():
        assert ex["image"] == Path(paths[image_id]).read_bytes()
    # TFDS's own decoder gives the pixels of the source file.
    for ex in tfds.as_numpy(ham_tfds.prepared_builder(data_dir).as_dataset(split="test").take(2)):
        source = Path(paths[ex["image_id"].decode()]).read_bytes()
        np.testing.assert_array_equal(ex["image"], tf.io.decode_jpeg(source).numpy())


def test_png_sources_keep_exact_pixels(tmp_path):
    root = make_fake_ham10000(tmp_path / "ham", per_class=6, size=(20, 16), fmt="png")
    builder = ham_tfds.prepare_ham10000(root, tmp_path / "tfds")
    paths = read_metadata(root).set_index("image_id")["path"]
    examples = list(tfds.as_numpy(builder.as_dataset(split="train")))
    assert examples
    for ex in examples:
        with Image.open(paths[ex["image_id"].decode()]) as source:
            np.testing.assert_array_equal(ex["image"], np.asarray(source.convert("RGB")))


def test_dataverse_part_folders_layout(tmp_path):
    root = make_fake_ham10000(
        tmp_path / "ham", per_class=6, size=(20, 16), layout="parts", dataverse=True
    )
    builder = ham_tfds.prepare_ham10000(root, tmp_path / "tfds")
    assert sum(split.num_examples for split in builder.info.splits.values()) == 6 * 7


def test_missing_age_is_stored_as_minus_one(tmp_path):
    root = make_fake_ham10000(tmp_path / "ham", per_class=6, size=(20, 16))
    csv_path = root / "HAM10000_metadata.csv"
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    rows[0]["age"] = ""
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    ham_tfds.prepare_ham10000(root, tmp_path / "tfds")
    ages = {
        image_id: ex["age"]
        for split in ("train", "val", "test")
        for image_id, ex in read_split(split, tmp_path / "tfds").items()
    }
    assert ages[rows[0]["image_id"]] == ham_tfds.MISSING_AGE == -1.0
    assert ages[rows[1]["image_id"]] == float(rows[1]["age"])


def test_other_data_in_the_same_data_dir_needs_overwrite(tmp_path):
    first = make_fake_ham10000(tmp_path / "a", per_class=6, size=(20, 16), seed=1)
    second = make_fake_ham10000(tmp_path / "b", per_class=8, size=(20, 16), seed=2)
    data_dir = tmp_path / "tfds"
    builder = ham_tfds.prepare_ham10000(first, data_dir)
    assert builder.info.metadata["source_dir"] == str(first.resolve())
    assert ham_tfds.prepare_ham10000(first, data_dir).is_prepared()  # same data: reused
    with pytest.raises(DataError, match="prepared from other"):
        ham_tfds.prepare_ham10000(second, data_dir)
    ham_tfds.prepare_ham10000(second, data_dir, overwrite=True)
    info = ham_tfds.prepared_builder(data_dir).info
    assert sum(split.num_examples for split in info.splits.values()) == 8 * 7
    assert info.metadata["source_fingerprint"] == ham_tfds.source_fingerprint(read_metadata(second))


def test_prepare_never_asks_gcs(tmp_path, monkeypatch):
    """Even with TFDS's GCS look-ups switched on (older 4.9 releases), nothing reaches GCS."""
    gcs_utils = tfds.core.utils.gcs_utils

    def no_network(*args, **kwargs):
        raise AssertionError(f"GCS was queried: {args}")

    monkeypatch.setattr(gcs_utils, "_is_gcs_disabled", False)
    monkeypatch.setattr(gcs_utils, "exists", no_network)
    root = make_fake_ham10000(tmp_path / "ham", per_class=6, size=(20, 16))
    builder = ham_tfds.prepare_ham10000(root, tmp_path / "tfds")
    assert builder.is_prepared()
    assert ham_tfds.prepared_builder(tmp_path / "tfds").info.splits["train"].num_examples > 0


def test_reimport_keeps_one_registration(fake_prepared):
    _, data_dir = fake_prepared
    importlib.reload(ham_tfds)  # a second import must not trip TFDS's duplicate-name check
    registered = tfds.core.registered.list_imported_builders()
    assert registered.count("ham10000") == 1
    builder = tfds.builder("ham10000", data_dir=data_dir, try_gcs=False)
    assert builder.is_prepared()


def test_clear_errors(tmp_path, fake_prepared):
    _, data_dir = fake_prepared
    with pytest.raises(DataError, match="does not exist or is empty"):
        ham_tfds.prepare_ham10000(tmp_path / "nowhere", tmp_path / "tfds")
    (tmp_path / "empty_manual").mkdir()
    with pytest.raises(DataError, match="does not exist or is empty"):
        ham_tfds.prepare_ham10000(tmp_path / "empty_manual", tmp_path / "tfds")
    with pytest.raises(DataError, match="no prepared ham10000"):
        ham_tfds.prepared_builder(tmp_path / "empty")
    with pytest.raises(DataError, match="unknown split"):
        ham_tfds.read_encoded("training", data_dir)
    (tmp_path / "no_csv").mkdir()
    (tmp_path / "no_csv" / "notes.txt").write_text("not HAM10000")
    with pytest.raises(DataError, match="no metadata file"):
        ham_tfds.prepare_ham10000(tmp_path / "no_csv", tmp_path / "tfds")


def test_load_split_feeds_the_shared_pipeline(fake_prepared):
    _, data_dir = fake_prepared
    labels = []
    for images, batch_labels in ham_tfds.load_split(
        "val", data_dir, image_size=32, training=False, batch_size=4
    ):
        assert images.dtype == tf.float32 and images.shape[1:] == (32, 32, 3)
        assert float(tf.reduce_min(images)) >= 0.0 and float(tf.reduce_max(images)) <= 255.0
        labels.extend(batch_labels.numpy().tolist())
    # Evaluation order is the stored order that split_image_ids reports.
    examples = read_split("val", data_dir)
    ids = ham_tfds.split_image_ids("val", data_dir)
    assert sorted(ids) == sorted(examples)
    assert labels == [int(examples[image_id]["label"]) for image_id in ids]

    train = ham_tfds.load_split("train", data_dir, image_size=24, training=True, batch_size=3)
    images, batch_labels = next(iter(train))
    assert images.shape == (3, 24, 24, 3) and batch_labels.dtype == tf.int32


def test_load_split_matches_the_frame_pipeline(fake_prepared):
    """Same images through TFDS and through make_dataset(frame): identical pixels."""
    root, data_dir = fake_prepared
    frame = read_metadata(root).set_index("image_id")
    ids = ham_tfds.split_image_ids("test", data_dir)
    from_frame = make_dataset(frame.loc[ids].reset_index(), 16, training=False, batch_size=64)
    from_tfds = ham_tfds.load_split("test", data_dir, 16, training=False, batch_size=64)
    (a, a_labels), (b, b_labels) = next(iter(from_frame)), next(iter(from_tfds))
    np.testing.assert_array_equal(a.numpy(), b.numpy())
    np.testing.assert_array_equal(a_labels.numpy(), b_labels.numpy())


def test_missing_age_comes_back_as_not_given_beside_the_same_image(tmp_path):
    """The patient fields through TFDS are the frame's, a missing age included."""
    root = make_fake_ham10000(tmp_path / "ham", per_class=6, size=(20, 16))
    frame = read_metadata(root)
    frame.loc[frame.index[::3], "age"] = np.nan
    frame.drop(columns=["path", "label"]).to_csv(root / "HAM10000_metadata.csv", index=False)
    ham_tfds.prepare_ham10000(root, tmp_path / "tfds")
    fields = ["age", "sex", "localization"]
    for split in ("train", "test"):
        ids = ham_tfds.split_image_ids(split, tmp_path / "tfds")
        rows = read_metadata(root).set_index("image_id").loc[ids].reset_index()
        if split == "train":
            assert rows["age"].isna().any()  # the missing age is exercised
        from_frame = make_dataset(rows, 16, False, batch_size=64, metadata=fields)
        from_tfds = ham_tfds.load_split(
            split, tmp_path / "tfds", 16, batch_size=64, metadata=fields
        )
        (a, a_labels), (b, b_labels) = next(iter(from_frame)), next(iter(from_tfds))
        for key in ("image", "metadata"):
            np.testing.assert_array_equal(a[key].numpy(), b[key].numpy())
        np.testing.assert_array_equal(a_labels.numpy(), b_labels.numpy())


# --------------------------------------------------------------------------- real data


def make_manual_dir(frame: pd.DataFrame, source_csv: Path, dest: Path) -> Path:
    """A HAM10000 folder holding a metadata subset and symlinks to the real images (no copies)."""
    (dest / "images").mkdir(parents=True)
    metadata = pd.read_csv(source_csv, dtype=str, keep_default_na=False)
    metadata[metadata["image_id"].isin(set(frame["image_id"]))].to_csv(
        dest / "HAM10000_metadata.csv", index=False
    )
    for path in frame["path"]:
        (dest / "images" / Path(path).name).symlink_to(path)
    return dest


@pytest.mark.slow
def test_real_subset_prepares_and_loads(real_data_root, real_frame, tmp_path, record_property):
    subset = lesion_subset(real_frame, per_class=40, seed=0)
    assert 250 <= len(subset) <= 400
    manual_dir = make_manual_dir(subset, real_data_root / "HAM10000_metadata.csv", tmp_path / "ham")

    start = time.perf_counter()
    ham_tfds.prepare_ham10000(manual_dir, tmp_path / "tfds")
    record_property("prepare_seconds", round(time.perf_counter() - start, 2))

    expected = expected_splits(manual_dir)
    rows = expected.set_index("image_id")
    for ours in ("train", "val", "test"):
        examples = read_split(ours, tmp_path / "tfds")
        assert set(examples) == set(expected.loc[expected["split"] == ours, "image_id"])
        for image_id, ex in examples.items():
            row = rows.loc[image_id]
            assert ex["label"] == row["label"] and ex["lesion_id"].decode() == row["lesion_id"]
            assert ex["image"] == Path(row["path"]).read_bytes()
    lesions_per_split = expected.groupby("lesion_id")["split"].nunique()
    assert (lesions_per_split == 1).all()

    images, labels = next(
        iter(ham_tfds.load_split("val", tmp_path / "tfds", image_size=64, batch_size=8))
    )
    assert images.dtype == tf.float32 and images.shape == (8, 64, 64, 3)
    assert float(tf.reduce_min(images)) >= 0.0 and float(tf.reduce_max(images)) <= 255.0
    assert float(tf.reduce_max(images)) > 1.0  # pixels, not 0..1
    assert labels.dtype.is_integer and labels.shape == (8,)
    # The patient fields ride beside the same images as from a frame.
    fields = ["age", "sex", "localization"]
    ids = ham_tfds.split_image_ids("val", tmp_path / "tfds")
    rows = real_frame.set_index("image_id").loc[ids].reset_index()
    from_frame = make_dataset(rows, 64, False, batch_size=512, metadata=fields)
    from_tfds = ham_tfds.load_split("val", tmp_path / "tfds", 64, batch_size=512, metadata=fields)
    features, _ = next(iter(from_tfds))
    expected, _ = next(iter(from_frame))
    np.testing.assert_array_equal(features["metadata"].numpy(), expected["metadata"].numpy())
    np.testing.assert_array_equal(features["image"].numpy(), expected["image"].numpy())
