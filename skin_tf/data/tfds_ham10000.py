"""HAM10000 as a tensorflow-datasets builder, split by lesion with the project's own splitter.

The builder reads a manually downloaded HAM10000 folder through
`skin_tf.data.ham10000.read_metadata`, splits it with `skin_tf.data.splits.split_by_lesion` (seed
42, 80/10/10) and stores each JPEG's original bytes (no re-encoding). `load_split` reads a prepared
split without decoding and hands the bytes to `skin_tf.data.pipeline.make_dataset_from_encoded`, so
decoding, resizing and augmentation are the very code the DataFrame path uses.

Example (offline; nothing is fetched from the network or GCS):

    from skin_tf.data.tfds_ham10000 import load_split, prepare_ham10000
    prepare_ham10000("data/ham10000", "~/tensorflow_datasets") train = load_split("train",
    "~/tensorflow_datasets", image_size=224, training=True)
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import pandas as pd
import tensorflow as tf
import tensorflow_datasets as tfds

from skin_tf.data.ham10000 import CLASSES, DataError, read_metadata
from skin_tf.data.meta_fields import META_FIELDS, check_fields, encode_fields
from skin_tf.data.pipeline import make_dataset_from_encoded
from skin_tf.data.splits import split_by_lesion

NAME = "ham10000"
# The split is part of the prepared data: changing either constant needs a new VERSION.
SPLIT_FRACTIONS: tuple[float, float, float] = (0.8, 0.1, 0.1)
SPLIT_SEED = 42
# split_by_lesion's names -> TFDS split names.
TFDS_SPLIT_NAMES: dict[str, str] = {"train": "train", "val": "validation", "test": "test"}
MISSING_AGE = -1.0
# What identifies the source folder's content: the metadata plus each image's size in bytes (so
# the 200x150 copy and the 600x450 originals differ).
_FINGERPRINT_COLUMNS = ("image_id", "lesion_id", "dx", "dx_type", "age", "sex", "localization")

_DESCRIPTION = """\
HAM10000 ("Human Against Machine with 10000 training images"): 10,015 dermatoscopic images of
pigmented skin lesions in 7 diagnostic classes (akiec, bcc, bkl, df, mel, nv, vasc), with one row
of metadata per image. Several images often show the same lesion, so the train/validation/test
splits are made by `skin_tf.data.splits.split_by_lesion` (grouped by lesion_id, stratified by dx,
fractions 0.8/0.1/0.1, seed 42): no lesion appears in two splits.

Images are stored as the source files' bytes (JPEG for the published dataset; a PNG source file is
stored as PNG, both decode with `tf.io.decode_image`). `age` is -1.0 where the metadata has none.
Research and teaching use only; licence CC BY-NC 4.0.
"""

_CITATION = """\
@article{tschandl2018ham10000,
  title   = {The {HAM10000} dataset, a large collection of multi-source dermatoscopic images
             of common pigmented skin lesions},
  author  = {Tschandl, Philipp and Rosendahl, Cliff and Kittler, Harald},
  journal = {Scientific Data},
  volume  = {5},
  pages   = {180161},
  year    = {2018},
  doi     = {10.1038/sdata.2018.161},
}
"""

_HOMEPAGE = "https://doi.org/10.7910/DVN/DBW86T"

_MANUAL_DOWNLOAD_INSTRUCTIONS = """\
HAM10000 cannot be downloaded by TFDS itself (licence CC BY-NC 4.0). Run `skin-tf download`, or get
it from Harvard Dataverse (https://doi.org/10.7910/DVN/DBW86T) or Kaggle
(kmader/skin-cancer-mnist-ham10000) and unzip it. Then point `manual_dir` at the folder, laid out
in either of these ways:

  <manual_dir>/HAM10000_metadata.csv         <manual_dir>/HAM10000_metadata.csv  (or .tab)
  <manual_dir>/images/ISIC_0024306.jpg       <manual_dir>/HAM10000_images_part_1/ISIC_*.jpg
  <manual_dir>/images/...                    <manual_dir>/HAM10000_images_part_2/ISIC_*.jpg

(single images/ folder; or the Dataverse/Kaggle part folders). Images may also sit deeper below
manual_dir; every image_id listed in the metadata needs exactly one image file.
"""


@contextlib.contextmanager
def _no_gcs() -> Iterator[None]:
    """Keep TFDS off gs://tfds-data while a builder is made or prepared.

    An unprepared builder asks GCS for published dataset info when it is constructed; TFDS 4.9.10
    has that switched off by default but earlier 4.9 releases do not, and offline the request can
    stall on retries. This is the switch `tfds.testing.disable_gcs_access` uses.
    """
    with mock.patch.object(tfds.core.utils.gcs_utils, "_is_gcs_disabled", True, create=True):
        yield


def _registered_already(name: str) -> bool:
    """True when a builder called `name` is registered (this module was imported before)."""
    return name in tfds.core.registered.list_imported_builders()


class Ham10000(
    tfds.core.GeneratorBasedBuilder,
    # Importing this file a second time (reload, or as __main__ and as a module) must not crash on
    # TFDS's duplicate-name check; the first class stays the registered one.
    skip_registration=_registered_already(NAME),
):
    """HAM10000 dermatoscopic images, split by lesion (seed 42, 80/10/10)."""

    name = NAME
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {
        "1.0.0": "First release: lesion-grouped, dx-stratified splits from "
        "skin_tf.data.splits.split_by_lesion (fractions 0.8/0.1/0.1, seed 42); source image bytes.",
    }
    MANUAL_DOWNLOAD_INSTRUCTIONS = _MANUAL_DOWNLOAD_INSTRUCTIONS

    def _info(self) -> tfds.core.DatasetInfo:
        text = tfds.features.Text
        return self.dataset_info_from_configs(
            description=_DESCRIPTION,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
                    "label": tfds.features.ClassLabel(names=list(CLASSES)),
                    "image_id": text(doc="ISIC image id, e.g. ISIC_0024306"),
                    "lesion_id": text(doc="HAM lesion id; images of one lesion share it"),
                    "dx_type": text(doc="how dx was established: histo, follow_up, consensus…"),
                    "sex": text(doc="male, female or unknown"),
                    "localization": text(doc="body site, e.g. back; may be unknown"),
                    "age": tfds.features.Scalar(
                        dtype=np.float32, doc="age in years; -1.0 where the metadata has none"
                    ),
                }
            ),
            supervised_keys=("image", "label"),
            # Filled while preparing: source folder, its fingerprint and the split settings.
            metadata=tfds.core.MetadataDict(),
            homepage=_HOMEPAGE,
            citation=_CITATION,
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Any]:
        manual_dir = Path(dl_manager.manual_dir)
        frame = read_metadata(manual_dir)
        self.info.metadata.update(
            source_dir=os.fspath(manual_dir),
            source_fingerprint=source_fingerprint(frame),
            split_fractions=list(SPLIT_FRACTIONS),
            split_seed=SPLIT_SEED,
        )
        frame = split_by_lesion(frame, fractions=SPLIT_FRACTIONS, seed=SPLIT_SEED)
        return {
            tfds_name: self._generate_examples(frame[frame["split"] == ours])
            for ours, tfds_name in TFDS_SPLIT_NAMES.items()
        }

    def _generate_examples(self, frame: pd.DataFrame) -> Iterator[tuple[str, dict[str, Any]]]:
        for row in frame.itertuples(index=False):
            yield row.image_id, example_from_row(row)


def example_from_row(row: Any) -> dict[str, Any]:
    """One TFDS example from a read_metadata() row; the image is given as its path.

    TFDS stores a path's file bytes unchanged, so JPEGs are not re-encoded.

    >>> example_from_row(frame.iloc[0])["image_id"]   # doctest: +SKIP
    'ISIC_0027419'
    """
    age = float(row.age)
    return {
        "image": os.fspath(row.path),
        "label": int(row.label),
        "image_id": str(row.image_id),
        "lesion_id": str(row.lesion_id),
        "dx_type": str(row.dx_type),
        "sex": str(row.sex),
        "localization": str(row.localization),
        "age": MISSING_AGE if math.isnan(age) else age,
    }


def source_fingerprint(frame: pd.DataFrame) -> str:
    """SHA-1 of a read_metadata() frame's metadata and image file sizes (row order ignored).

    >>> source_fingerprint(read_metadata("data/ham10000"))[:8]   # doctest: +SKIP
    """
    table = frame.loc[:, list(_FINGERPRINT_COLUMNS)].assign(
        bytes=[os.path.getsize(path) for path in frame["path"]]
    )
    text = table.sort_values("image_id").to_csv(index=False, na_rep="")
    return hashlib.sha1(text.encode()).hexdigest()


def prepare_ham10000(
    manual_dir: str | Path, data_dir: str | Path, *, overwrite: bool = False
) -> Ham10000:
    """Prepare the TFDS copy of HAM10000 folder `manual_dir` below `data_dir`; return the builder.

    Works offline (no GCS look-up). A copy already prepared in `data_dir` from the same data is
    reused; one prepared from different data (another folder content, e.g. a subset or the
    200x150 copy) raises DataError unless overwrite=True, which regenerates it.

    >>> builder = prepare_ham10000("data/ham10000", "/tmp/tfds")   # doctest: +SKIP
    >>> builder.info.splits["validation"].num_examples              # doctest: +SKIP
    """
    manual_dir = Path(manual_dir).expanduser().resolve()
    if not manual_dir.is_dir() or not any(manual_dir.iterdir()):
        raise DataError(
            f"HAM10000 folder {manual_dir} does not exist or is empty: pass the folder that holds "
            "HAM10000_metadata.csv and the images (see Ham10000.MANUAL_DOWNLOAD_INSTRUCTIONS)"
        )
    mode = tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS
    with _no_gcs():
        builder = Ham10000(data_dir=os.fspath(Path(data_dir).expanduser()))
    if builder.is_prepared():
        stored = builder.info.metadata.get("source_fingerprint")
        if overwrite:
            mode = tfds.download.GenerateMode.REUSE_CACHE_IF_EXISTS  # regenerate the dataset
        elif stored != source_fingerprint(read_metadata(manual_dir)):
            raise DataError(
                f"{builder.data_dir} already holds {NAME} prepared from other (or unrecorded) data "
                f"({builder.info.metadata.get('source_dir', 'unknown folder')}), not from "
                f"{manual_dir}. Fix: use another data_dir, or pass overwrite=True to replace it."
            )
    with _no_gcs():
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(
                manual_dir=os.fspath(manual_dir), download_mode=mode, try_download_gcs=False
            )
        )
    return builder


def prepared_builder(data_dir: str | Path) -> Ham10000:
    """The Ham10000 builder of an already prepared copy in `data_dir` (DataError if there is none).

    >>> prepared_builder("/tmp/tfds").info.splits["train"].num_examples   # doctest: +SKIP
    """
    with _no_gcs():
        builder = Ham10000(data_dir=os.fspath(Path(data_dir).expanduser()))
    if not builder.is_prepared():
        raise DataError(
            f"no prepared {NAME} {builder.version} in {data_dir} (looked in {builder.data_dir}): "
            "run prepare_ham10000(manual_dir, data_dir) first"
        )
    return builder


def tfds_split_name(split: str) -> str:
    """TFDS split name for `split`, accepting the project's "val" as well as "validation"."""
    if split in TFDS_SPLIT_NAMES:
        return TFDS_SPLIT_NAMES[split]
    if split in TFDS_SPLIT_NAMES.values():
        return split
    raise DataError(f"unknown split {split!r}: use one of train, val (or validation), test")


def read_encoded(split: str, data_dir: str | Path) -> tf.data.Dataset:
    """Undecoded examples of a prepared split, in stored order; "image" holds the source bytes.

    >>> next(iter(read_encoded("test", "/tmp/tfds")))["image_id"]   # doctest: +SKIP
    """
    return prepared_builder(data_dir).as_dataset(
        split=tfds_split_name(split),
        decoders={"image": tfds.decode.SkipDecoding()},
        shuffle_files=False,
        # The pipeline caches decoded images itself; a second, encoded in-memory copy would only
        # cost memory.
        read_config=tfds.ReadConfig(try_autocache=False),
    )


def split_image_ids(split: str, data_dir: str | Path) -> list[str]:
    """image_ids of a prepared split in the order `load_split(..., training=False)` yields them.

    >>> ids = split_image_ids("test", "/tmp/tfds")  # predictions_test.csv rows  # doctest: +SKIP
    """
    ids = read_encoded(split, data_dir).map(lambda ex: ex["image_id"])
    return [image_id.decode() for image_id in ids.as_numpy_iterator()]


def load_split(
    split: str,
    data_dir: str | Path,
    image_size: int,
    training: bool = False,
    batch_size: int = 32,
    **pipeline_options: Any,
) -> tf.data.Dataset:
    """Batches (float32 images 0..255, int32 labels) of a prepared split, via the shared pipeline.

    The stored bytes go undecoded into `skin_tf.data.pipeline.make_dataset_from_encoded`, so
    decoding, resizing, caching, augmentation and balancing are the code `make_dataset` uses for a
    frame; `pipeline_options` are its keyword options (resize, augment, balance, cache, seed,
    metadata, metadata_dropout, …). With `metadata=["age", "sex", "localization"]` the stored
    patient fields are encoded (`skin_tf.data.meta_fields`) and ride beside each image, as from
    a frame; dx_type is stored but never an input.
    training=False keeps stored order (see `split_image_ids`); training=True shuffles in the
    pipeline. `split` is "train", "val" (or "validation") or "test".

    >>> train = load_split("train", "/tmp/tfds", 224, training=True, seed=42)  # doctest: +SKIP
    >>> model.fit(train, validation_data=load_split("val", "/tmp/tfds", 224))  # doctest: +SKIP
    """
    examples = read_encoded(split, data_dir)
    fields = check_fields(pipeline_options.get("metadata", ()))
    if not fields:
        pairs = examples.map(
            lambda ex: (ex["image"], ex["label"]), num_parallel_calls=tf.data.AUTOTUNE
        )
    else:  # the fields encoded once up front (checked like a frame's), zipped in stored order
        vectors = tf.data.Dataset.from_tensor_slices(encode_fields(stored_fields(examples), fields))
        pairs = tf.data.Dataset.zip(examples, vectors).map(
            lambda ex, vector: ({"image": ex["image"], "metadata": vector}, ex["label"]),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
    return make_dataset_from_encoded(pairs, image_size, training, batch_size, **pipeline_options)


def stored_fields(examples: tf.data.Dataset) -> pd.DataFrame:
    """The patient fields of a prepared split's examples in stored order (age NaN where the
    builder stored MISSING_AGE), as `encode_fields` reads them from a frame."""
    fields = examples.map(lambda ex: {name: ex[name] for name in META_FIELDS})
    frame = pd.DataFrame(list(fields.as_numpy_iterator()), columns=list(META_FIELDS))
    for name in ("sex", "localization"):
        frame[name] = frame[name].str.decode("utf-8")
    frame["age"] = frame["age"].astype(float).where(frame["age"] != MISSING_AGE)
    return frame
