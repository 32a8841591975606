"""HAM10000 index: read the metadata and find the images, whatever the folder layout.

One reader (`read_metadata`) feeds training, evaluation, the cVAE, the TFDS builder and the
notebooks; `skin_tf.data.splits` then splits its frame by lesion::

    frame = read_metadata(resolve_data_root())          # 10,015 rows, one per image
    frame["dx"].value_counts()
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

# Fixed class order: label i is CLASSES[i] everywhere (models, CSVs, metadata.json).
CLASSES: tuple[str, ...] = ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")
CLASS_NAMES: dict[str, str] = {
    "akiec": "Actinic keratosis / intraepithelial carcinoma",
    "bcc": "Basal cell carcinoma",
    "bkl": "Benign keratosis-like lesion",
    "df": "Dermatofibroma",
    "mel": "Melanoma",
    "nv": "Melanocytic nevus",
    "vasc": "Vascular lesion",
}
MEL_INDEX: int = CLASSES.index("mel")

# Kaggle and the Dataverse "original format" download ship the .csv; Dataverse's default
# download is the ingested, tab-separated .tab. Earlier names win when both exist.
METADATA_NAMES: tuple[str, ...] = ("HAM10000_metadata.csv", "HAM10000_metadata.tab")
IMAGE_SUFFIXES = frozenset({"jpg", "jpeg", "png"})
REQUIRED_COLUMNS: tuple[str, ...] = (
    "lesion_id", "image_id", "dx", "dx_type", "age", "sex", "localization",
)  # fmt: skip
INDEX_COLUMNS: tuple[str, ...] = (
    "image_id", "path", "dx", "label", "lesion_id", "dx_type", "age", "sex", "localization",
)  # fmt: skip
DEFAULT_DATA_ROOT = Path("data") / "ham10000"
DATA_ROOT_ENV = "SKIN_TF_DATA"
_MISSING_AGE = frozenset({"", "na", "nan", "none", "null", "unknown"})
_WHERE_TO_GET = (
    "download it with `skin-tf download`, or get HAM10000 from Harvard Dataverse "
    "(doi:10.7910/DVN/DBW86T) or Kaggle (kmader/skin-cancer-mnist-ham10000)"
)
_LAYOUTS = (
    "HAM10000_metadata.csv next to either HAM10000_images_part_1/ + HAM10000_images_part_2/ "
    "or a single images/ folder holding every ISIC_*.jpg"
)

logger = logging.getLogger(__name__)


class DataError(ValueError):
    """The data on disk (or a frame passed in) is not what HAM10000 code expects; says the fix."""


def _first(items: Sequence[str], n: int = 5) -> str:
    shown = ", ".join(str(item) for item in items[:n])
    return shown + (f", … ({len(items) - n} more)" if len(items) > n else "")


# --------------------------------------------------------------------------- finding files


def _check_root(root: str | os.PathLike) -> Path:
    path = Path(root).expanduser().resolve()
    if not path.exists():
        raise DataError(
            f"data folder {path} does not exist. Fix: pass the folder holding "
            f"HAM10000_metadata.csv, or {_WHERE_TO_GET}."
        )
    if not path.is_dir():
        raise DataError(
            f"data path {path} is not a folder. Fix: pass the folder that holds "
            "HAM10000_metadata.csv and the images (unzip any archive first)."
        )
    return path


def _scan(root: Path) -> tuple[dict[str, list[str]], list[str]]:
    """Walk `root` once: image files by stem, and metadata tables found on the way.

    Follows symlinked folders (a common way to keep the images on another disk) but visits each
    real folder once; skips hidden folders and macOS's __MACOSX zip debris.
    """
    images: dict[str, list[str]] = {}
    tables: list[str] = []
    table_names = {name.lower() for name in METADATA_NAMES}
    pending, visited = [str(root)], set()
    while pending:
        folder = pending.pop()
        try:
            info = os.stat(folder)
            if (info.st_dev, info.st_ino) in visited:
                continue
            visited.add((info.st_dev, info.st_ino))
            with os.scandir(folder) as entries:
                for entry in entries:
                    name = entry.name
                    if entry.is_dir():
                        if not name.startswith(".") and name != "__MACOSX":
                            pending.append(entry.path)
                        continue
                    stem, dot, suffix = name.rpartition(".")
                    if dot and suffix.lower() in IMAGE_SUFFIXES:
                        images.setdefault(stem, []).append(entry.path)
                    elif name.lower() in table_names:
                        tables.append(entry.path)
        except PermissionError as error:
            if folder == str(root):
                raise DataError(
                    f"cannot read data folder {root} ({error.strerror}). Fix: give your user "
                    f"read and execute permission on it (e.g. `chmod -R u+rX {root}`)."
                ) from error
            logger.warning("skipping unreadable folder %s (%s)", folder, error.strerror)
    return images, tables


def _choose_table(root: Path, tables: list[str]) -> Path:
    if not tables:
        raise DataError(
            f"no metadata file below {root}: looked for {' or '.join(METADATA_NAMES)} in that "
            f"folder and every folder below it. Fix: {_WHERE_TO_GET}, and place {_LAYOUTS} "
            "there, or pass metadata_csv=<path to the CSV>."
        )
    order = {name.lower(): i for i, name in enumerate(METADATA_NAMES)}

    def rank(path: str) -> tuple[int, int]:
        return len(Path(path).relative_to(root).parts), order[Path(path).name.lower()]

    tables = sorted(tables, key=lambda p: (rank(p), p))
    if len(tables) > 1 and rank(tables[0]) == rank(tables[1]):
        tied = [p for p in tables if rank(p) == rank(tables[0])]
        raise DataError(
            f"found {len(tied)} equally likely metadata files below {root}: {_first(tied)}. "
            "Fix: pass metadata_csv=<the one to use>, or remove the extra copies."
        )
    return Path(tables[0])


def _read_table(csv_path: Path) -> pd.DataFrame:
    """Read the metadata as strings (comma- or tab-separated), columns and cells stripped."""
    try:
        with open(csv_path, encoding="utf-8-sig") as handle:
            header = handle.readline()
        sep = "\t" if header.count("\t") > header.count(",") else ","
        table = pd.read_csv(
            csv_path, sep=sep, dtype=str, keep_default_na=False, encoding="utf-8-sig"
        )
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise DataError(
            f"cannot read metadata file {csv_path} ({err}). Fix: use the original "
            f"HAM10000_metadata.csv ({_WHERE_TO_GET})."
        ) from err
    table.columns = [str(c).strip().lower() for c in table.columns]
    return table.apply(lambda column: column.str.strip())


def _validate_table(table: pd.DataFrame, csv_path: Path) -> pd.DataFrame:
    missing = [c for c in REQUIRED_COLUMNS if c not in table.columns]
    if missing:
        raise DataError(
            f"metadata file {csv_path} lacks required column(s) {', '.join(missing)}; "
            f"columns found: {', '.join(table.columns)}. Fix: use the original HAM10000 metadata "
            f"(columns {', '.join(REQUIRED_COLUMNS)}; {_WHERE_TO_GET})."
        )
    for column in ("image_id", "lesion_id", "dx"):
        empty = np.flatnonzero(table[column].to_numpy() == "")
        if len(empty):
            raise DataError(
                f"metadata file {csv_path}: {len(empty)} row(s) have an empty {column} "
                f"(CSV lines {_first([str(i + 2) for i in empty])}). Fix: fill them in or delete "
                "those rows."
            )
    table["dx"] = table["dx"].str.lower()
    unknown = sorted(set(table["dx"]) - set(CLASSES))
    if unknown:
        counts = table["dx"].value_counts()
        raise DataError(
            f"metadata file {csv_path} has unknown dx value(s) "
            f"{', '.join(f'{v!r} ({counts[v]} rows)' for v in unknown)}; allowed: "
            f"{', '.join(CLASSES)}. Fix: correct those dx cells or delete those rows."
        )
    if table.empty:
        raise DataError(
            f"metadata file {csv_path} lists no images. Fix: use the original "
            f"HAM10000_metadata.csv ({_WHERE_TO_GET})."
        )
    duplicated = table["image_id"][table["image_id"].duplicated()].unique().tolist()
    if duplicated:
        raise DataError(
            f"metadata file {csv_path} lists {len(duplicated)} image_id(s) more than once: "
            f"{_first(duplicated)}. Fix: keep one row per image_id (an image has one diagnosis)."
        )
    age_text = table["age"]
    is_blank = age_text.str.lower().isin(_MISSING_AGE)
    age = pd.to_numeric(age_text.where(~is_blank), errors="coerce").astype("float64")
    bad = sorted(set(age_text[age.isna() & ~is_blank]))
    if bad:
        raise DataError(
            f"metadata file {csv_path} has non-numeric age value(s) {_first(bad)}. Fix: write ages "
            "as numbers, or leave the cell empty when unknown."
        )
    table["age"] = age
    return table


def _resolve_files(ids: pd.Series, images: dict[str, list[str]]) -> pd.Series:
    """Map each image_id to its one file; refuse ids found as several different files."""
    paths, conflicts, case_twins = [], [], 0
    for image_id in ids:
        found = images.get(image_id)
        if found and len(found) > 1:
            found = sorted(found)
            # The Kaggle download ships every image twice, in HAM10000_images_part_N and
            # ham10000_images_part_N: same name, same size. Anything else is a real conflict.
            twins = {p.lower() for p in found} == {found[0].lower()}
            if twins and len({os.path.getsize(p) for p in found}) == 1:
                case_twins += 1
                found = found[:1]
            else:
                conflicts.append(f"{image_id} ({' and '.join(found)})")
        paths.append(found[0] if found else None)
    if conflicts:
        raise DataError(
            f"{len(conflicts)} image_id(s) exist as more than one file: {_first(conflicts, 3)}. "
            "Fix: keep exactly one copy of each image below the data folder (delete or move the "
            "others, e.g. a converted .png beside the .jpg, or a second copy of a part folder)."
        )
    if case_twins:
        logger.info(
            "%d images exist twice in folders whose names differ only in letter case (as in the "
            "Kaggle download); using the first copy of each",
            case_twins,
        )
    return pd.Series(paths, index=ids.index, dtype=object)


def read_metadata(
    root: str | os.PathLike,
    *,
    drop_missing: bool = False,
    metadata_csv: str | os.PathLike | None = None,
) -> pd.DataFrame:
    """Index HAM10000 below `root`: one row per image, in metadata order.

    Columns: image_id, path (absolute str), dx, label (index into CLASSES), lesion_id, dx_type,
    age (float, NaN when unknown), sex, localization, then any extra metadata columns (e.g. the
    Dataverse file's `dataset`) unchanged, in file order. The metadata file is `metadata_csv` if
    given, else HAM10000_metadata.csv (or .tab) in `root` or the shallowest folder below it. Images
    (.jpg/.jpeg/.png, any case) are found anywhere below `root`; files whose name is not a listed
    image_id (test images, segmentation masks) are ignored. Listed images without a file raise
    DataError unless drop_missing=True, which drops them with a logged warning.

    >>> frame = read_metadata("data/ham10000")  # doctest: +SKIP
    >>> frame.loc[0, ["image_id", "dx", "label"]].tolist()  # doctest: +SKIP
    ['ISIC_0027419', 'bkl', 2]
    """
    root = _check_root(root)
    images, tables = _scan(root)
    if metadata_csv is None:
        csv_path = _choose_table(root, tables)
    else:
        csv_path = Path(metadata_csv).expanduser().resolve()
        if not csv_path.is_file():
            raise DataError(
                f"metadata_csv={csv_path} is not a file. Fix: pass the path of "
                f"HAM10000_metadata.csv ({_WHERE_TO_GET}), or omit metadata_csv to search {root}."
            )
    table = _validate_table(_read_table(csv_path), csv_path)
    table["path"] = _resolve_files(table["image_id"], images)
    absent = table["path"].isna()
    if absent.any():
        ids = table.loc[absent, "image_id"].tolist()
        if not drop_missing:
            n_files = sum(len(v) for v in images.values())
            raise DataError(
                f"{len(ids)} of {len(table)} images listed in {csv_path.name} have no file below "
                f"{root} ({n_files} image files found there): {_first(ids)}. Fix: unzip the "
                f"missing images there ({_LAYOUTS}), or pass drop_missing=True to drop those rows."
            )
        logger.warning(
            "dropping %d of %d metadata rows whose image file is missing below %s (first: %s)",
            len(ids), len(table), root, _first(ids),
        )  # fmt: skip
        table = table.loc[~absent]
    table["label"] = table["dx"].map({dx: i for i, dx in enumerate(CLASSES)}).astype("int64")
    table["path"] = table["path"].astype(str)
    extras = [c for c in table.columns if c not in INDEX_COLUMNS]
    return table[[*INDEX_COLUMNS, *extras]].reset_index(drop=True)


def resolve_data_root(path: str | os.PathLike | None = None) -> Path:
    """The HAM10000 folder: `path`, else $SKIN_TF_DATA, else ./data/ham10000 (must hold metadata).

    >>> resolve_data_root("/data/ham10000")  # doctest: +SKIP
    PosixPath('/data/ham10000')
    """
    if path is not None:
        source = "the path given"
    elif os.environ.get(DATA_ROOT_ENV):
        path, source = os.environ[DATA_ROOT_ENV], f"${DATA_ROOT_ENV}"
    else:
        path, source = (
            DEFAULT_DATA_ROOT,
            f"the default ./{DEFAULT_DATA_ROOT} (${DATA_ROOT_ENV} unset)",
        )
    root = Path(path).expanduser().resolve()
    found = root.is_dir() and _scan(root)[1]
    if not found:
        raise DataError(
            f"no HAM10000 data at {root} (from {source}): it "
            f"{'holds no ' + ' or '.join(METADATA_NAMES) if root.is_dir() else 'does not exist'}. "
            f"Fix: {_WHERE_TO_GET}, and place {_LAYOUTS} there; or point ${DATA_ROOT_ENV} "
            "(or --data) at the folder that holds them."
        )
    return root
