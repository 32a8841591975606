"""The official ISIC 2018 Task 3 test set (1,512 images) as `skin-tf download --isic2018-test`
leaves it.

Example:
    >>> from skin_tf.data.isic2018 import read_isic2018_test
    >>> test = read_isic2018_test("data/ham10000")  # doctest: +SKIP
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from skin_tf.data.ham10000 import CLASSES, DataError

ISIC2018_TEST_IMAGES = "ISIC2018_Task3_Test_Images"
ISIC2018_TEST_GROUND_TRUTH = "ISIC2018_Task3_Test_GroundTruth.csv"

logger = logging.getLogger(__name__)


def _find_ground_truth(root: Path) -> Path:
    stem = Path(ISIC2018_TEST_GROUND_TRUTH).stem
    for candidate in (
        root / ISIC2018_TEST_GROUND_TRUTH,
        root / f"{stem}.tab",
        root / stem / ISIC2018_TEST_GROUND_TRUTH,  # the ISIC challenge zip's layout
    ):
        if candidate.is_file():
            return candidate
    raise DataError(
        f"no {ISIC2018_TEST_GROUND_TRUTH} in {root}: run `skin-tf download --isic2018-test "
        f"--out {root}` or see skin_tf.data.dataverse.manual_instructions"
    )


def _dx_from_ground_truth(table: pd.DataFrame, path: Path) -> pd.DataFrame:
    """image_id + dx from either the Dataverse format (image_id, dx, …) or one-hot (image, MEL…)."""
    if {"image_id", "dx"} <= set(table.columns):
        out = table.copy()
        out["dx"] = out["dx"].astype(str).str.strip().str.lower()
        return out
    one_hot = [c.upper() for c in CLASSES]
    if "image" in table.columns and set(one_hot) <= set(table.columns):
        values = table[one_hot].astype(float)
        if not (values.sum(axis=1) == 1.0).all():
            bad = table.loc[values.sum(axis=1) != 1.0, "image"].head(5).tolist()
            raise DataError(f"{path}: rows without exactly one class set to 1, e.g. {bad}")
        dx = values.idxmax(axis=1).str.lower()
        return pd.DataFrame({"image_id": table["image"], "dx": dx})
    raise DataError(
        f"{path}: columns {list(table.columns)} are neither image_id,dx,… (Dataverse) nor "
        f"image,{','.join(one_hot)} (ISIC challenge); re-download it with `skin-tf download "
        "--isic2018-test`"
    )


def read_isic2018_test(root: Path | str, *, drop_missing: bool = True) -> pd.DataFrame:
    """Index the official ISIC 2018 Task 3 test set under `root` (as `download_ham10000` leaves it).

    Returns columns image_id, path (absolute str), dx, label (index into CLASSES), followed by any
    metadata the ground truth carries (lesion_id, age, sex, …). The official ground truth lists
    1,512 images while the image zip holds 1,511; missing images are dropped with a logged
    warning (drop_missing=False raises instead).

    Example:
        >>> test = read_isic2018_test("data/ham10000")  # doctest: +SKIP
        >>> test.columns[:4].tolist()  # doctest: +SKIP
        ['image_id', 'path', 'dx', 'label']
    """
    root = Path(root).expanduser().resolve()
    gt_path = _find_ground_truth(root)
    header = gt_path.open(encoding="utf-8-sig").readline()
    table = pd.read_csv(gt_path, sep="\t" if "\t" in header else ",", encoding="utf-8-sig")
    table = _dx_from_ground_truth(table, gt_path)
    unknown = sorted(set(table["dx"]) - set(CLASSES))
    if unknown:
        raise DataError(f"{gt_path}: unknown dx values {unknown}; expected {list(CLASSES)}")
    images_dir = root / ISIC2018_TEST_IMAGES
    images = {p.stem: p for p in images_dir.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg")}
    if not images:
        raise DataError(
            f"no test images in {images_dir}: run `skin-tf download --isic2018-test --out {root}`"
        )
    table["image_id"] = table["image_id"].astype(str).str.strip()
    found = table["image_id"].isin(images)
    if not found.all():
        missing = table.loc[~found, "image_id"].tolist()
        message = f"{len(missing)} of {len(table)} ground-truth images are not in {images_dir}"
        if not drop_missing:
            raise DataError(f"{message}: {missing[:10]}; pass drop_missing=True to skip them")
        logger.warning("%s; dropped: %s", message, missing[:10])
        table = table[found]
    table = table.assign(
        path=[str(images[i]) for i in table["image_id"]],
        label=table["dx"].map(CLASSES.index).astype(int),
    )
    first = ["image_id", "path", "dx", "label"]
    return table[first + [c for c in table.columns if c not in first]].reset_index(drop=True)
