"""HAM10000 index: read the metadata, find the images, split by lesion.

One reader (`read_metadata`) and one splitter (`split_by_lesion`) feed training, evaluation, the
cVAE, the TFDS builder and the notebooks::

    frame = read_metadata(resolve_data_root())          # 10,015 rows, one per image
    frame = split_by_lesion(frame, seed=42)             # adds split: train / val / test
    print(split_table(frame))
"""

from __future__ import annotations

import logging
import numbers
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import GroupShuffleSplit, StratifiedGroupKFold

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

SPLITS: tuple[str, ...] = ("train", "val", "test")
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
SPLITS_COLUMNS: tuple[str, ...] = ("image_id", "lesion_id", "dx", "split")
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


def _require_columns(frame: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DataError(
            f"{what}: missing column(s) {', '.join(missing)}; found "
            f"{', '.join(map(str, frame.columns))}. Fix: pass the frame returned by "
            "read_metadata() (and split_by_lesion() where a split is needed)."
        )


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


# --------------------------------------------------------------------------- splitting


def _check_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    values = tuple(fractions)
    ok = len(values) == 3 and all(
        isinstance(v, numbers.Real) and not isinstance(v, bool) and v > 0 for v in values
    )
    if not ok or abs(sum(values) - 1.0) > 1e-6:
        raise DataError(
            f"fractions={fractions!r} is invalid: give three positive numbers (train, val, test) "
            "summing to 1, e.g. (0.8, 0.1, 0.1)."
        )
    return values  # type: ignore[return-value]


def _fold_plan(fraction: float, max_folds: int = 50) -> tuple[int, int]:
    """(k, n): take k of n folds, k/n closest to `fraction`, with as few folds as possible."""
    best: tuple[float, int, int] | None = None
    for n in range(2, max_folds + 1):
        k = min(max(round(fraction * n), 1), n - 1)
        error = abs(k / n - fraction)
        if best is None or error < best[0] - 1e-9:
            best = (error, k, n)
        if error <= 0.005:  # within half a percentage point: more folds only cost time
            break
    assert best is not None
    return best[1], best[2]


def _carve(dx: np.ndarray, lesions: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Positions of a lesion-complete, dx-stratified part of about `fraction` of the rows."""
    k, n = _fold_plan(fraction)
    n_lesions = len(np.unique(lesions))
    if n_lesions < 3:
        raise DataError(
            f"cannot split {n_lesions} lesion(s) three ways. Fix: split a frame with more lesions."
        )
    _, class_sizes = np.unique(dx, return_counts=True)
    if n_lesions >= n and class_sizes.max() >= n:
        folds = StratifiedGroupKFold(n_splits=n, shuffle=True, random_state=seed)
        with warnings.catch_warnings():
            # Rare classes are checked on the result, per split, and reported there.
            warnings.filterwarnings("ignore", "The least populated class", UserWarning)
            parts = [test for _, test in folds.split(dx, dx, groups=lesions)]
        per_fold = fraction * len(dx) / k
        chosen = sorted(range(n), key=lambda i: (abs(len(parts[i]) - per_fold), i))[:k]
        return np.sort(np.concatenate([parts[i] for i in chosen]))
    logger.warning(
        "only %d rows / %d lesions: too few to stratify into %d folds; splitting by lesion "
        "without stratification", len(dx), n_lesions, n,
    )  # fmt: skip
    shuffle = GroupShuffleSplit(n_splits=1, test_size=fraction, random_state=seed)
    return np.sort(next(shuffle.split(dx, dx, groups=lesions))[1])


def split_by_lesion(
    frame: pd.DataFrame, fractions: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 42
) -> pd.DataFrame:
    """A copy of `frame` with a `split` column ("train"/"val"/"test"), lesion-disjoint, by dx.

    scikit-learn's StratifiedGroupKFold carves the test part, then (on the rest) the val part,
    so no lesion_id spans two splits and class proportions match the whole. Same seed, same split.
    Frames too small to stratify fall back to GroupShuffleSplit with a logged warning; classes
    missing from a split are logged too.

    >>> split_by_lesion(frame, seed=42)["split"].value_counts()  # doctest: +SKIP
    """
    train_fraction, val_fraction, test_fraction = _check_fractions(fractions)
    _require_columns(frame, ("lesion_id", "dx"), "split_by_lesion")
    dx = frame["dx"].astype(str).to_numpy()
    lesions = frame["lesion_id"].astype(str).to_numpy()
    test = _carve(dx, lesions, test_fraction, seed)
    rest = np.setdiff1d(np.arange(len(frame)), test)
    val = rest[
        _carve(dx[rest], lesions[rest], val_fraction / (train_fraction + val_fraction), seed)
    ]
    split = np.full(len(frame), "train", dtype=object)
    split[val], split[test] = "val", "test"
    out = frame.copy()
    out["split"] = split
    present = pd.crosstab(out["dx"], out["split"]).reindex(columns=list(SPLITS), fill_value=0)
    absent = [f"{dx} (not in {', '.join(s for s in SPLITS if present.loc[dx, s] == 0)})"
              for dx in present.index if (present.loc[dx] == 0).any()]  # fmt: skip
    if absent:
        logger.warning("classes missing from a split: %s", "; ".join(absent))
    return out


def split_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Image counts per class (CLASSES order, then "total") × split (train, val, test, all).

    >>> print(split_table(split_by_lesion(frame)))  # doctest: +SKIP
    """
    _require_columns(frame, ("dx", "split"), "split_table")
    table = pd.crosstab(
        pd.Categorical(frame["dx"], categories=CLASSES),
        pd.Categorical(frame["split"], categories=SPLITS),
        dropna=False,
    )
    table = table.reindex(index=list(CLASSES), columns=list(SPLITS), fill_value=0).astype("int64")
    table["all"] = table.sum(axis=1)
    table.loc["total"] = table.sum(axis=0)
    table.index.name, table.columns.name = "dx", "split"
    return table


def lesion_subset(frame: pd.DataFrame, per_class: int, seed: int = 0) -> pd.DataFrame:
    """A small subset of whole lesions with >= min(per_class, available) images of every class.

    Lesions are drawn in a seeded random order, class by class, until each class has enough
    images; rows keep `frame`'s order (index reset). Used by the smoke profile and tests.

    >>> lesion_subset(read_metadata(root), per_class=20)["dx"].value_counts()  # doctest: +SKIP
    """
    if isinstance(per_class, bool) or not isinstance(per_class, int | np.integer) or per_class < 1:
        raise DataError(f"per_class={per_class!r} is invalid. Fix: pass a positive integer.")
    _require_columns(frame, ("lesion_id", "dx"), "lesion_subset")
    rng = np.random.default_rng(seed)
    counts = pd.crosstab(frame["lesion_id"], frame["dx"])  # lesions × classes, sorted lesion ids
    chosen: set[str] = set()
    for dx in counts.columns:
        have = counts.loc[list(chosen), dx].sum() if chosen else 0
        candidates = counts.index[(counts[dx] > 0) & ~counts.index.isin(list(chosen))].to_numpy()
        for lesion in rng.permutation(candidates):
            if have >= per_class:
                break
            chosen.add(lesion)
            have += counts.loc[lesion, dx]
    return frame[frame["lesion_id"].isin(chosen)].reset_index(drop=True)


# --------------------------------------------------------------------------- splits.csv


def write_splits(frame: pd.DataFrame, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Save image_id, lesion_id, dx, split to `path` (a run's splits.csv); never overwrites.

    >>> write_splits(split_by_lesion(frame), "runs/r1/splits.csv")  # doctest: +SKIP
    """
    _require_columns(frame, SPLITS_COLUMNS, "write_splits")
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(
            f"{path} already exists. Fix: write to a new run folder, or pass overwrite=True to "
            "replace it."
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.loc[:, list(SPLITS_COLUMNS)].to_csv(path, index=False)
    return path


def read_splits(path: str | os.PathLike) -> pd.DataFrame:
    """Read and check a splits.csv written by write_splits (columns image_id, lesion_id, dx, split).

    >>> read_splits("runs/r1/splits.csv")["split"].value_counts()  # doctest: +SKIP
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(
            f"splits file {path} does not exist. Fix: pass the splits.csv of an existing run, "
            "or make one with `skin-tf split`."
        )
    try:
        splits = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise DataError(f"cannot read splits file {path} ({err}). Fix: rewrite it.") from err
    problems = []
    missing = [c for c in SPLITS_COLUMNS if c not in splits.columns]
    if missing:
        problems.append(
            f"missing column(s) {', '.join(missing)} (found {', '.join(splits.columns)})"
        )
    else:
        splits = splits[list(SPLITS_COLUMNS)]
        if bad := sorted(set(splits["split"]) - set(SPLITS)):
            problems.append(f"unknown split value(s) {_first(bad)} (allowed: {', '.join(SPLITS)})")
        if bad := sorted(set(splits["dx"]) - set(CLASSES)):
            problems.append(f"unknown dx value(s) {_first(bad)} (allowed: {', '.join(CLASSES)})")
        if dup := splits["image_id"][splits["image_id"].duplicated()].unique().tolist():
            problems.append(f"{len(dup)} duplicated image_id(s): {_first(dup)}")
        spread = splits.groupby("lesion_id")["split"].nunique()
        if leaked := spread[spread > 1].index.tolist():
            problems.append(f"{len(leaked)} lesion_id(s) in more than one split: {_first(leaked)}")
    if problems:
        raise DataError(
            f"splits file {path} is invalid: {'; '.join(problems)}. Fix: regenerate it with "
            "split_by_lesion() + write_splits() (or `skin-tf split`)."
        )
    return splits.reset_index(drop=True)
