"""Draw lesions from a trained cVAE: seeded sampling, the synthetic-image folder, and figures.

    >>> manifest = synth_to_folder(run_dir, per_class=200, out="artifacts/synth")  # doctest: +SKIP
    >>> manifest.columns.tolist()  # doctest: +SKIP
    ['file', 'dx', 'seed', 'vae_run']

The folder holds one subfolder per class code of PNGs at the cVAE's image size plus manifest.csv;
the classifier's `synthetic_dir` option (via `skin_tf.data.pipeline.read_image_folder`) mixes it
into training only. Every image comes from its own seed: `sample_images(vae, [label], [seed])`
redraws it exactly. Shell: `skin-tf synth RUN_DIR --per-class N --out artifacts/synth`.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from keras import ops
from matplotlib.figure import Figure
from PIL import Image

from skin_tf.cvae.model import ConditionalVAE, data_root_of, load_vae
from skin_tf.data.ham10000 import CLASSES
from skin_tf.data.splits import split_frames

MANIFEST = "manifest.csv"
MANIFEST_COLUMNS = ("file", "dx", "seed", "vae_run")
CLASS_SEED_STRIDE = 1_000_000  # image seed = seed + stride · class index + i: stable per class


# ------------------------------------------------------------------------------------- sampling


def latent_codes(seeds: Sequence[int], latent_dim: int) -> np.ndarray:
    """One standard-normal latent vector per seed (float32, (n, latent_dim)).

    >>> np.array_equal(latent_codes([7], 4), latent_codes([7], 4))
    True
    """
    rows = [np.random.default_rng(int(s)).standard_normal(latent_dim) for s in seeds]
    return np.asarray(rows, dtype="float32").reshape(len(rows), latent_dim)


def sample_images(
    vae: ConditionalVAE, labels: Sequence[int], seeds: Sequence[int], batch_size: int = 64
) -> np.ndarray:
    """uint8 images (n, S, S, 3) of classes `labels`, one latent draw per seed.

    >>> images = sample_images(vae, labels=[4, 4], seeds=[0, 1])  # two melanomas  # doctest: +SKIP
    """
    labels = np.asarray(labels, dtype="int32")
    if len(labels) != len(seeds):
        raise ValueError(f"need one seed per label: got {len(labels)} labels, {len(seeds)} seeds")
    if len(labels) and (labels.min() < 0 or labels.max() >= len(CLASSES)):
        raise ValueError(f"labels must be class indices 0..{len(CLASSES) - 1}")
    z = latent_codes(seeds, vae.latent_dim)
    parts = [
        ops.convert_to_numpy(vae.decode(z[i : i + batch_size], labels[i : i + batch_size]))
        for i in range(0, len(z), batch_size)
    ]
    if not parts:
        return np.zeros((0, vae.image_size, vae.image_size, 3), "uint8")
    return np.clip(np.round(np.concatenate(parts)), 0, 255).astype("uint8")


def image_seeds(dx: str, per_class: int, seed: int = 0) -> list[int]:
    """The seeds of a class's images in `synth_to_folder` (independent of the other classes)."""
    return [seed + CLASS_SEED_STRIDE * CLASSES.index(dx) + i for i in range(per_class)]


def check_classes(classes: Sequence[str] | None) -> list[str]:
    """Class codes in CLASSES order (all when None); unknown codes raise ValueError."""
    if classes is None:
        return list(CLASSES)
    unknown = [c for c in classes if c not in CLASSES]
    if unknown or not classes:
        raise ValueError(
            f"classes={list(classes)!r}: unknown or none ({unknown}); choose from "
            f"{', '.join(CLASSES)}"
        )
    return [c for c in CLASSES if c in set(classes)]


# ------------------------------------------------------------------------------------- folder


def synth_to_folder(
    run_dir: str | os.PathLike,
    per_class: int,
    out: str | os.PathLike,
    classes: Sequence[str] | None = None,
    seed: int = 0,
    overwrite: bool = False,
) -> pd.DataFrame:
    """Write `per_class` PNGs per class into out/<dx>/ plus out/manifest.csv; return the manifest.

    manifest.csv columns: file (relative to `out`, e.g. "mel/mel_seed4000000.png"), dx, seed
    (the image's own seed) and vae_run (the run directory's name). A non-empty `out` is refused
    unless overwrite=True, which replaces a previous synthetic set (and refuses folders holding
    anything else, so no unrelated file is deleted).

    >>> synth_to_folder(run_dir, per_class=4, out="/tmp/synth", classes=["mel"])  # doctest: +SKIP
    """
    if isinstance(per_class, bool) or not isinstance(per_class, int) or per_class < 1:
        raise ValueError(f"per_class={per_class!r}: pass a positive integer")
    chosen = check_classes(classes)
    out = Path(out)
    _prepare_out(out, overwrite)
    vae, _ = load_vae(run_dir)
    vae_run = Path(run_dir).resolve().name
    rows = []
    for dx in chosen:
        seeds = image_seeds(dx, per_class, seed)
        images = sample_images(vae, [CLASSES.index(dx)] * per_class, seeds)
        (out / dx).mkdir(parents=True, exist_ok=True)
        for image_seed, image in zip(seeds, images, strict=True):
            file = f"{dx}/{dx}_seed{image_seed}.png"
            Image.fromarray(image).save(out / file)
            rows.append({"file": file, "dx": dx, "seed": image_seed, "vae_run": vae_run})
    manifest = pd.DataFrame(rows, columns=list(MANIFEST_COLUMNS))
    manifest.to_csv(out / MANIFEST, index=False)
    return manifest


def _prepare_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {out} is a file: pass a folder path")
    entries = sorted(out.iterdir()) if out.is_dir() else []
    if not entries:
        return
    if not overwrite:
        raise FileExistsError(
            f"{out} is not empty ({len(entries)} entries, e.g. {entries[0].name}): pass "
            "overwrite=True (--overwrite) to replace a previous synthetic set, or choose a new "
            "--out folder"
        )
    foreign = [e for e in entries if not _is_synth_entry(e)]
    if foreign:
        names = ", ".join(e.name for e in foreign[:5])
        raise FileExistsError(
            f"{out} holds entries that synth did not write ({names}): refusing to delete them "
            "even with overwrite; choose another --out folder"
        )
    for entry in entries:
        shutil.rmtree(entry) if entry.is_dir() else entry.unlink()


def _is_synth_entry(entry: Path) -> bool:
    if entry.name == MANIFEST and entry.is_file():
        return True
    return (
        entry.is_dir()
        and entry.name in CLASSES
        and all(f.is_file() and f.suffix == ".png" for f in entry.iterdir())
    )


def read_manifest(folder: str | os.PathLike) -> pd.DataFrame:
    """manifest.csv of a synth folder, checked (columns, known dx, files present); adds `path`."""
    folder = Path(folder)
    path = folder / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: make the folder with `skin-tf synth RUN_DIR --out {folder}`"
        )
    manifest = pd.read_csv(path, dtype={"file": str, "dx": str, "vae_run": str})
    missing = [c for c in MANIFEST_COLUMNS if c not in manifest.columns]
    if missing or manifest.empty:
        raise ValueError(f"{path} lacks columns {missing} or rows: regenerate the folder")
    if unknown := sorted(set(manifest["dx"]) - set(CLASSES)):
        raise ValueError(f"{path} has unknown dx values {unknown}: regenerate the folder")
    manifest["path"] = [str(folder.resolve() / f) for f in manifest["file"]]
    absent = [f for f, p in zip(manifest["file"], manifest["path"], strict=True)
              if not Path(p).is_file()]  # fmt: skip
    if absent:
        raise FileNotFoundError(f"{len(absent)} files of {path} are missing (e.g. {absent[:3]})")
    manifest["label"] = manifest["dx"].map(CLASSES.index).astype("int32")
    return manifest


# ------------------------------------------------------------------------------------- figures


def _image_grid(rows: list[list[np.ndarray]], row_labels: list[str], col_titles: list[str]):
    import matplotlib.pyplot as plt

    n_rows, n_cols = len(rows), max(len(r) for r in rows)
    fig, axes = plt.subplots(
        n_rows, n_cols, figsize=(1.1 * n_cols + 0.6, 1.1 * n_rows + 0.9), squeeze=False
    )
    for r, images in enumerate(rows):
        for c in range(n_cols):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_frame_on(False)
            if c < len(images):
                ax.imshow(images[c])
            if c == 0:
                ax.set_ylabel(row_labels[r], rotation=0, ha="right", va="center", fontsize=9)
            if r == 0 and c < len(col_titles):
                ax.set_title(col_titles[c], fontsize=8)
    return fig


def samples_grid_figure(
    run_dir: str | os.PathLike, per_class: int = 8, seed: int = 0, classes=None
) -> Figure:
    """Samples of each class (rows) from the run's cVAE, seeds as in `synth_to_folder`.

    >>> fig = samples_grid_figure(run_dir, per_class=8)  # doctest: +SKIP
    """
    from skin_tf.evaluation.plots import add_caption
    from skin_tf.runs import run_caption

    vae, _ = load_vae(run_dir)
    chosen = check_classes(classes)
    rows = [
        list(sample_images(vae, [CLASSES.index(dx)] * per_class, image_seeds(dx, per_class, seed)))
        for dx in chosen
    ]
    fig = _image_grid(rows, chosen, [])
    fig.suptitle("cVAE samples, one row per class (decoded from z ~ N(0, I))", fontsize=10)
    add_caption(fig, run_caption(run_dir, f"skin_tf.cvae.synth.samples_grid_figure(seed={seed})"))
    return fig


def reconstruction_figure(
    run_dir: str | os.PathLike, data_root: str | os.PathLike | None = None, per_class: int = 3
) -> Figure:
    """The first `per_class` validation images of each class beside their reconstructions.

    Reconstructions decode the posterior mean (no sampling noise).

    >>> fig = reconstruction_figure(run_dir, per_class=3)  # doctest: +SKIP
    """
    from skin_tf.data.pipeline import load_image
    from skin_tf.evaluation.plots import add_caption
    from skin_tf.runs import run_caption

    vae, config = load_vae(run_dir)
    val = split_frames(Path(run_dir) / "splits.csv", data_root or data_root_of(run_dir))["val"]
    rows, labels = [], []
    for dx in CLASSES:
        picked = val[val["dx"] == dx].head(per_class)
        if picked.empty:
            continue
        originals = np.stack([load_image(p, config.image_size) for p in picked["path"]])
        recon = vae((originals.astype("float32"), picked["label"].to_numpy("int32")))
        recon = np.clip(np.round(ops.convert_to_numpy(recon)), 0, 255).astype("uint8")
        rows.append([image for pair in zip(originals, recon, strict=True) for image in pair])
        labels.append(dx)
    fig = _image_grid(rows, labels, ["original", "reconstr."] * per_class)
    fig.suptitle("cVAE reconstructions of validation images", fontsize=10)
    add_caption(fig, run_caption(run_dir, "skin_tf.cvae.synth.reconstruction_figure (val split)"))
    return fig


def draw_cvae_figures(
    vae_run: str | os.PathLike,
    results_dir: str | os.PathLike = Path("results"),
    data_root: str | os.PathLike | None = None,
    per_class: int = 8,
) -> dict[str, Path]:
    """The samples grid and the validation reconstructions, as results/figures/cvae_*.png."""
    from skin_tf.evaluation.plots import save_figure

    folder = Path(results_dir) / "figures"
    return {
        "samples": save_figure(
            samples_grid_figure(vae_run, per_class=per_class), folder / "cvae_samples.png"
        ),
        "reconstructions": save_figure(
            reconstruction_figure(vae_run, data_root, per_class=per_class // 2),
            folder / "cvae_reconstructions.png",
        ),
    }
