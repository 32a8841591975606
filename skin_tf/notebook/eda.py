"""The figures and tables the notebooks draw themselves: the data explored in 01_eda (classes,
lesions, patients, how diagnoses were confirmed, image sizes, samples, the lesion split) and the
runs compared in 05 (accuracy against melanoma sensitivity).

    >>> frame = read_metadata(nb.data_root)  # doctest: +SKIP
    >>> class_table(frame).loc["mel", "images"]  # doctest: +SKIP
    1113
    >>> fig = class_figure(frame, caption=data_caption(frame, "01_eda"))  # doctest: +SKIP

Every figure takes `caption` (`skin_tf.notebook.workflow.data_caption` for the data,
`skin_tf.notebook.workflow.runs_caption` for runs), as every figure in `skin_tf.evaluation.plots`
does. These live here rather than in plots because they compute from the metadata frame, open image
files or read run folders, where plots' figures only draw numbers already computed.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from skin_tf.data.ham10000 import CLASS_NAMES, CLASSES
from skin_tf.evaluation.plots import add_caption
from skin_tf.runs import read_json

# ---------------------------------------------------------------- data figures (01_eda)


def class_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Per class: name, images, share of images, lesions, images per lesion (mean and max).

    >>> class_table(read_metadata("data/ham10000"))["images"].sum()  # doctest: +SKIP
    10015
    """
    per_lesion = frame.groupby(["dx", "lesion_id"]).size()
    table = pd.DataFrame(
        {
            "name": [CLASS_NAMES[c] for c in CLASSES],
            "images": frame["dx"].value_counts().reindex(CLASSES, fill_value=0),
            "lesions": frame.groupby("dx")["lesion_id"].nunique().reindex(CLASSES, fill_value=0),
            "max images/lesion": per_lesion.groupby("dx").max().reindex(CLASSES),
        },
        index=list(CLASSES),
    )
    table.insert(2, "share", (table["images"] / len(frame)).round(3))
    table.insert(4, "images/lesion", (table["images"] / table["lesions"]).round(2))
    table.index.name = "dx"
    return table


def class_figure(frame: pd.DataFrame, *, caption: str) -> Figure:
    """Images and lesions per class (left) and lesions by their number of images (right).

    >>> save_figure(class_figure(frame, caption=caption), Path("eda_classes.png"))  # doctest: +SKIP
    """
    table = class_table(frame)
    fig = Figure(figsize=(12, 4.5))
    left, right = fig.subplots(1, 2)
    table[["images", "lesions"]].plot.bar(ax=left, rot=0)
    for container in left.containers:
        left.bar_label(container, fontsize=7)
    left.set(title="Images and lesions per class", xlabel="class", ylabel="count")
    lesion_sizes = frame.groupby("lesion_id").agg(dx=("dx", "first"), images=("dx", "size"))
    counts = pd.crosstab(lesion_sizes["images"], lesion_sizes["dx"]).reindex(
        columns=list(CLASSES), fill_value=0
    )
    counts.plot.bar(ax=right, stacked=True, rot=0)
    right.set(
        title="Lesions by number of images (one lesion: several photos)",
        xlabel="images of the lesion",
        ylabel="lesions",
        yscale="log",
    )
    add_caption(fig, caption)
    return fig


def patients_figure(frame: pd.DataFrame, *, caption: str) -> Figure:
    """Age (box plot), sex (shares) and body site (shares) of the images of each class."""
    import seaborn as sns

    fig = Figure(figsize=(15, 5))
    ax_age, ax_sex, ax_site = fig.subplots(1, 3, gridspec_kw={"width_ratios": [1, 1, 1.6]})
    sns.boxplot(data=frame, x="dx", y="age", order=list(CLASSES), ax=ax_age, color="tab:blue")
    missing = int(frame["age"].isna().sum())
    ax_age.set(title=f"Age by class ({missing} images without age)", xlabel="class")
    shares = pd.crosstab(frame["dx"], frame["sex"], normalize="index").reindex(list(CLASSES))
    shares.plot.bar(ax=ax_sex, stacked=True, rot=0)
    ax_sex.set(title="Sex by class (share of images)", xlabel="class", ylabel="share")
    ax_sex.legend(fontsize=8, loc="lower right")
    sites = pd.crosstab(frame["dx"], frame["localization"], normalize="index").reindex(
        list(CLASSES)
    )
    sns.heatmap(sites.T, ax=ax_site, cmap="Blues", annot=True, fmt=".2f", annot_kws={"size": 6})
    ax_site.set(title="Body site by class (share of the class's images)", xlabel="class")
    add_caption(fig, caption)
    return fig


def dx_type_figure(frame: pd.DataFrame, *, caption: str) -> Figure:
    """How each class's diagnosis was confirmed (histopathology, follow-up, consensus, confocal)."""
    counts = pd.crosstab(frame["dx"], frame["dx_type"]).reindex(list(CLASSES), fill_value=0)
    fig = Figure(figsize=(8, 4.5))
    ax = fig.subplots()
    (counts.div(counts.sum(axis=1), axis=0)).plot.bar(ax=ax, stacked=True, rot=0)
    ax.set_xticks(range(len(CLASSES)), [f"{c}\n({counts.loc[c].sum()})" for c in CLASSES])
    ax.set(title="Ground truth by class (dx_type)", xlabel="class (images)", ylabel="share")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    add_caption(fig, caption)
    return fig


def image_sizes(paths: Sequence[str]) -> pd.DataFrame:
    """Image count per "WxH" size (headers only, every file), most common first.

    >>> image_sizes(frame["path"].tolist())  # doctest: +SKIP
              images
    size 600x450    10015
    """
    from PIL import Image

    sizes = []
    for path in paths:
        with Image.open(path) as image:
            sizes.append(f"{image.width}x{image.height}")
    counts = pd.Series(sizes, dtype=str).value_counts()
    return counts.rename_axis("size").rename("images").to_frame()


def samples_figure(
    frame: pd.DataFrame, per_class: int = 6, seed: int = 0, *, caption: str
) -> Figure:
    """`per_class` random images of each class (rows), seeded, at their own size."""
    from PIL import Image

    fig = Figure(figsize=(1.9 * per_class + 0.8, 1.6 * len(CLASSES) + 0.6))
    axes = fig.subplots(len(CLASSES), per_class, squeeze=False)
    for row, code in enumerate(CLASSES):
        of_class = frame[frame["dx"] == code]
        chosen = of_class.sample(min(per_class, len(of_class)), random_state=seed)
        for column, ax in enumerate(axes[row]):
            ax.set_xticks([])
            ax.set_yticks([])
            if column < len(chosen):
                with Image.open(chosen["path"].iloc[column]) as image:
                    ax.imshow(image.convert("RGB"))
                ax.set_title(chosen["image_id"].iloc[column], fontsize=6)
        axes[row][0].set_ylabel(code, rotation=0, ha="right", va="center", fontsize=10)
    fig.suptitle(f"{per_class} random images per class (seed {seed})")
    add_caption(fig, caption)
    return fig


def split_figure(table: pd.DataFrame, *, caption: str) -> Figure:
    """Per class, the share of its images in train/val/test (`skin_tf.data.splits.split_table`
    input).

    >>> split_figure(split_table(split_by_lesion(frame)), caption=caption)  # doctest: +SKIP
    """
    classes = [c for c in table.index if c != "total"]
    splits = [s for s in table.columns if s != "all"]
    shares = table.loc[classes, splits].div(table.loc[classes, "all"], axis=0)
    fig = Figure(figsize=(9, 4.5))
    ax = fig.subplots()
    shares.plot.bar(ax=ax, stacked=True, rot=0)
    ax.set_xticks(
        range(len(classes)), [f"{c}\n{'/'.join(map(str, table.loc[c, splits]))}" for c in classes]
    )
    ax.set(
        title="Lesion split: share of each class's images per split",
        xlabel=f"class (images: {' / '.join(splits)})",
        ylabel="share",
    )
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    add_caption(fig, caption)
    return fig


# ---------------------------------------------------------------- runs compared (05)


def tradeoff_figure(runs: Mapping[str, str | os.PathLike], *, title: str, caption: str) -> Figure:
    """Accuracy vs melanoma sensitivity: per epoch on val (left, the kept epoch starred) and of
    the kept checkpoint on test with 95% intervals (right). Needs evaluated runs.

    >>> tradeoff_figure({"b2": b2_run, "b0": b0_run}, title="t", caption=caption)  # doctest: +SKIP
    """
    from skin_tf.evaluation.run_summary import kept_epoch

    fig = Figure(figsize=(12, 5))
    ax_val, ax_test = fig.subplots(1, 2)
    for index, (label, run_dir) in enumerate(runs.items()):
        colour = f"C{index}"
        history = pd.read_csv(Path(run_dir) / "history.csv")
        ax_val.plot(
            history["val_acc"], history["val_mel_recall"], "o-", color=colour, ms=3, label=label
        )
        kept = kept_epoch(run_dir)
        if kept is not None and 1 <= kept <= len(history):
            row = history.iloc[kept - 1]
            ax_val.plot(row["val_acc"], row["val_mel_recall"], "*", color=colour, ms=15, mec="k")
        test = read_json(Path(run_dir) / "metrics.json")["test"]
        x, y = test["accuracy"], test["mel_sensitivity"]
        ci = test.get("ci", {})
        x_ci, y_ci = ci.get("accuracy") or (x, x), ci.get("mel_sensitivity") or (y, y)
        ax_test.errorbar(
            x,
            y,
            xerr=[[x - x_ci[0]], [x_ci[1] - x]],
            yerr=[[y - y_ci[0]], [y_ci[1] - y]],
            fmt="o",
            color=colour,
            capsize=3,
            label=label,
        )
    ax_val.set(
        title="Validation, every epoch (star: the kept checkpoint)",
        xlabel="val accuracy",
        ylabel="val melanoma sensitivity",
    )
    ax_test.set(
        title="Test, kept checkpoint (95% lesion-bootstrap intervals)",
        xlabel="test accuracy",
        ylabel="test melanoma sensitivity",
    )
    for ax in (ax_val, ax_test):
        ax.set_xlim(0, 1.02)
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    add_caption(fig, caption)
    return fig
