"""The lesion split: train/val/test by lesion, stratified by diagnosis, and its splits.csv.

HAM10000 has 10,015 images of 7,470 lesions: many lesions were photographed more than once. A
split by image would put near-identical photos of one lesion on both sides and inflate every test
metric, so `split_by_lesion` keeps each lesion_id whole (grouped). The classes are very unequal
(nv 67 %, df 1 %), so it also stratifies by dx: each split keeps the class shares of the whole and
the rare classes appear in val and test. scikit-learn's StratifiedGroupKFold does both; a fixed
seed gives the same split on every machine. `lesion_subset` draws small lesion-complete subsets
(the smoke profile), and `write_splits`/`read_splits` keep a run's split beside it as splits.csv.

Example::

    frame = split_by_lesion(read_metadata(resolve_data_root()), seed=42)  # adds column `split`
    print(split_table(frame))                  # images per class × train / val / test / all
    write_splits(frame, run_dir / "splits.csv")
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

# _first is ham10000.py's short "a, b, … (n more)" list used in every DataError message; sharing it
# keeps the reader's and the splitter's messages alike.
from skin_tf.data.ham10000 import CLASSES, DataError, _first

SPLITS: tuple[str, ...] = ("train", "val", "test")
SPLITS_COLUMNS: tuple[str, ...] = ("image_id", "lesion_id", "dx", "split")

logger = logging.getLogger(__name__)


def _require_columns(frame: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DataError(
            f"{what}: missing column(s) {', '.join(missing)}; found "
            f"{', '.join(map(str, frame.columns))}. Fix: pass the frame returned by "
            "read_metadata() (and split_by_lesion() where a split is needed)."
        )


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
        from sklearn.model_selection import StratifiedGroupKFold  # lazy: SPLITS is imported widely

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
    from sklearn.model_selection import GroupShuffleSplit

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


def apply_splits(frame: pd.DataFrame, splits: pd.DataFrame) -> pd.DataFrame:
    """Rows of `frame` named in `splits`, in frame order, with splits' `split` column."""
    missing_columns = {"image_id", "split"} - set(splits.columns)
    if missing_columns:
        raise ValueError(f"splits lacks column(s) {sorted(missing_columns)}: needs image_id, split")
    unknown = sorted(set(splits["split"]) - set(SPLITS))
    if unknown:
        raise ValueError(f"splits has split values {unknown}: use only {', '.join(SPLITS)}")
    if splits["image_id"].duplicated().any():
        raise ValueError("splits lists an image_id twice: give each image one split")
    absent = ~splits["image_id"].isin(frame["image_id"])
    if absent.any():
        raise ValueError(
            f"{absent.sum()} image_ids of the given splits are not in the data "
            f"(e.g. {splits.loc[absent, 'image_id'].head(3).tolist()}): check the data root"
        )
    split_of = splits.set_index("image_id")["split"]
    out = frame[frame["image_id"].isin(split_of.index)].reset_index(drop=True)
    out["split"] = out["image_id"].map(split_of).to_numpy()
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


def split_frames(
    splits_csv: str | os.PathLike, data_root: str | os.PathLike
) -> dict[str, pd.DataFrame]:
    """The index frames (path, label, …) of each split recorded in `splits_csv`, in its order.

    How a run (classifier or cVAE) gets its images back from its own splits.csv: the split is
    the run's, the file paths are `data_root`'s, so the same run works on a moved data folder.

    >>> frames = split_frames("runs/<run>/splits.csv", "data/ham10000")  # doctest: +SKIP
    >>> frames["val"][["image_id", "path", "label"]].head()  # doctest: +SKIP
    """
    from skin_tf.data.ham10000 import read_metadata

    splits = read_splits(splits_csv)
    index = read_metadata(data_root).set_index("image_id")
    joined = index_rows(index, splits["image_id"], f"images of {splits_csv}", data_root)
    joined["split"] = splits["split"].to_numpy()
    return {s: joined[joined["split"] == s].reset_index(drop=True) for s in SPLITS}


def index_rows(
    index: pd.DataFrame, image_ids: pd.Series, what: str, data_root: str | os.PathLike
) -> pd.DataFrame:
    """Rows of `index` (read_metadata, indexed by image_id) for `image_ids`, in their order, with
    image_id as a column; a DataError naming `what` when some are not in the data.
    """
    missing = ~image_ids.isin(index.index)
    if missing.any():
        raise DataError(
            f"{missing.sum()} {what} are not in {data_root} "
            f"(e.g. {image_ids[missing].head(3).tolist()}): pass --data pointing "
            "at the data the run was made with"
        )
    return index.loc[image_ids].reset_index()
