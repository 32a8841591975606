"""Figures for results/: one function per figure, each returning a matplotlib Figure.

Figures are built as `matplotlib.figure.Figure` objects, not through pyplot: no global state, no
backend to choose, nothing to close, and a notebook still shows a returned Figure.

Every figure function takes `caption`, drawn as a small grey footer saying what produced the figure
(data, weights, image size, epochs, hardware): use `skin_tf.runs.run_caption`. Figure functions
take numbers already computed (tables, sweeps) so this module depends only on matplotlib/pandas.
Add new figures as new functions ending with `_finish(fig, caption)`; save with `save_figure`.

Example:
    >>> fig = reliability_diagram(before, after, label_before="before", label_after="after",
    ...                           title="Reliability", caption="made by …")  # doctest: +SKIP
    >>> save_figure(fig, Path("results/figures/reliability_run.png"))  # doctest: +SKIP
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from skin_tf.runs import EPOCH_SECONDS

CAPTION_FONT_SIZE = 7
_CHARS_PER_INCH = 19  # about how many 7 pt characters fit in an inch of footer
SPLIT_STYLES = {"val": "-", "test": "--"}
METRIC_COLOURS = {"sensitivity": "tab:red", "specificity": "tab:blue", "precision": "tab:green"}


# ---------------------------------------------------------------- shared helpers


def add_caption(fig: Figure, caption: str) -> None:
    """Lay the figure out and draw `caption` as a wrapped grey footer below the axes."""
    if not caption or not caption.strip():
        raise ValueError("every figure needs a caption saying what produced it (data, model, run)")
    width = max(40, int(fig.get_figwidth() * _CHARS_PER_INCH))
    lines = textwrap.wrap(caption, width)
    footer_inches = 0.12 + len(lines) * CAPTION_FONT_SIZE * 1.35 / 72
    footer = min(0.4, footer_inches / fig.get_figheight())
    fig.tight_layout(rect=(0, footer, 1, 1))
    fig.text(
        0.01,
        0.01,
        "\n".join(lines),
        ha="left",
        va="bottom",
        fontsize=CAPTION_FONT_SIZE,
        color="0.35",
    )


def save_figure(fig: Figure, path: Path, dpi: int = 150) -> Path:
    """Write `fig` as PNG to `path` (creating folders) and return the path.

    A figure made through pyplot is closed afterwards, so pyplot does not keep it alive.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, bbox_inches="tight", pad_inches=0.1)
    if fig.canvas.manager is not None:
        import matplotlib.pyplot as plt

        plt.close(fig)
    return path


def _finish(fig: Figure, caption: str) -> Figure:
    add_caption(fig, caption)
    return fig


# ---------------------------------------------------------------- calibration


def reliability_diagram(
    before: pd.DataFrame,
    after: pd.DataFrame,
    *,
    label_before: str,
    label_after: str,
    title: str,
    caption: str,
) -> Figure:
    """Accuracy vs confidence per bin, before and after calibration, with bin counts below.

    `before`/`after` are `skin_tf.evaluation.calibration.reliability_table` outputs (lower, upper,
    count, confidence, accuracy).
    """
    fig = Figure(figsize=(6.4, 6.4))
    ax, ax_counts = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax.plot([0, 1], [0, 1], color="0.5", linestyle=":", label="perfect calibration")
    width = float((before["upper"] - before["lower"]).iloc[0])
    for table, label, colour, marker in (
        (before, label_before, "tab:orange", "o"),
        (after, label_after, "tab:blue", "s"),
    ):
        filled = table[table["count"] > 0]
        ax.plot(filled["confidence"], filled["accuracy"], marker=marker, color=colour, label=label)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy of the top label")
    ax.set_title(title)
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(alpha=0.3)

    centres = (before["lower"] + before["upper"]) / 2
    ax_counts.bar(
        centres - width / 4, before["count"], width / 2, color="tab:orange", label="before"
    )
    ax_counts.bar(centres + width / 4, after["count"], width / 2, color="tab:blue", label="after")
    ax_counts.set_xlabel(f"top-label confidence ({len(before)} equal-width bins)")
    ax_counts.set_ylabel("images")
    ax_counts.legend(loc="upper left", fontsize=8)
    ax_counts.grid(alpha=0.3)
    return _finish(fig, caption)


# ---------------------------------------------------------------- melanoma operating point


@dataclass(frozen=True)
class ScoreCurve:
    """One split's melanoma threshold sweep, for the ROC/PR and threshold figures.

    sweep: `skin_tf.evaluation.threshold.sweep_thresholds` output (threshold, sensitivity,
    specificity, precision, … one row per candidate threshold, highest first). point: the operating
    point applied to this split (sensitivity, specificity, precision), or None.
    """

    split: str
    label: str
    sweep: pd.DataFrame
    point: Mapping[str, float] | None = None
    point_label: str = "operating point"


def melanoma_roc_pr(curves: Sequence[ScoreCurve], *, title: str, caption: str) -> Figure:
    """ROC (left) and precision-recall (right) of melanoma vs rest, with operating points marked."""
    fig = Figure(figsize=(11, 5))
    ax_roc, ax_pr = fig.subplots(1, 2)
    ax_roc.plot([0, 1], [0, 1], color="0.6", linestyle=":", label="chance")
    for index, curve in enumerate(curves):
        colour = f"C{index}"
        style = SPLIT_STYLES.get(curve.split, "-")
        sweep = curve.sweep
        fpr = pd.concat([pd.Series([0.0]), 1 - sweep["specificity"]])
        tpr = pd.concat([pd.Series([0.0]), sweep["sensitivity"]])
        ax_roc.plot(fpr, tpr, color=colour, linestyle=style, label=curve.label)
        # Start at (recall 0, precision 1) like sklearn; "steps-pre" gives each recall interval
        # the precision at its right end, the convention of average precision.
        recall = pd.concat([pd.Series([0.0]), sweep["sensitivity"]])
        precision = pd.concat([pd.Series([1.0]), sweep["precision"]])
        ax_pr.plot(
            recall,
            precision,
            color=colour,
            linestyle=style,
            drawstyle="steps-pre",
            label=curve.label,
        )
        # The lowest threshold flags every image, so its precision is the melanoma prevalence.
        prevalence = float(sweep["precision"].iloc[-1])
        ax_pr.axhline(
            prevalence,
            color=colour,
            linestyle=":",
            linewidth=1,
            label=f"{curve.split} prevalence ({prevalence:.3f})",
        )
        if curve.point is not None:
            point = curve.point
            ax_roc.plot(
                1 - point["specificity"],
                point["sensitivity"],
                marker="o",
                markersize=9,
                markeredgecolor="black",
                color=colour,
                linestyle="none",
                label=f"{curve.point_label} ({curve.split})",
            )
            ax_pr.plot(
                point["sensitivity"],
                point["precision"],
                marker="o",
                markersize=9,
                markeredgecolor="black",
                color=colour,
                linestyle="none",
                label=f"{curve.point_label} ({curve.split})",
            )
    ax_roc.set_xlabel("1 - specificity (false-positive rate)")
    ax_roc.set_ylabel("sensitivity (true-positive rate)")
    ax_roc.set_title("ROC: melanoma vs rest")
    ax_pr.set_xlabel("sensitivity (recall)")
    ax_pr.set_ylabel("precision (PPV)")
    ax_pr.set_title("Precision-recall: melanoma vs rest")
    for ax in (ax_roc, ax_pr):
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right" if ax is ax_roc else "best", fontsize=8)
    fig.suptitle(title)
    return _finish(fig, caption)


def threshold_curves(
    curves: Sequence[ScoreCurve], threshold: float, *, title: str, caption: str
) -> Figure:
    """Sensitivity, specificity and precision of melanoma vs rest as the P(mel) threshold moves."""
    fig = Figure(figsize=(10, 5))
    ax = fig.subplots()
    for curve in curves:
        style = SPLIT_STYLES.get(curve.split, "-")
        sweep = curve.sweep
        for metric, colour in METRIC_COLOURS.items():
            ax.plot(
                sweep["threshold"],
                sweep[metric],
                color=colour,
                linestyle=style,
                drawstyle="steps-post",
                label=f"{metric} ({curve.split})",
            )
    ax.axvline(threshold, color="black", linewidth=1.2, label=f"chosen threshold {threshold:.3f}")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("threshold on P(melanoma): flag if P(mel) >= threshold")
    ax.set_ylabel("rate")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    return _finish(fig, caption)


# ---------------------------------------------------------------- run evaluation
# (skin_tf.evaluation.evaluate)


def confusion_matrices(
    matrix: Sequence[Sequence[int]], classes: Sequence[str], *, title: str, caption: str
) -> Figure:
    """Confusion matrix as counts (left) and row-normalised shares (right, recall on the diagonal).

    Rows are true classes (labelled with their image count), columns predicted classes. A class
    with no images keeps an empty row in the normalised panel.
    """
    import numpy as np

    counts = np.asarray(matrix, dtype=int)
    support = counts.sum(axis=1, keepdims=True)
    shares = np.divide(counts, support, out=np.full(counts.shape, np.nan), where=support > 0)
    fig = Figure(figsize=(12, 5.6))
    axes = fig.subplots(1, 2)
    panels = (
        (axes[0], counts, "{:d}", "images", "Counts"),
        (axes[1], shares, "{:.2f}", "share of the true class", "Row-normalised (recall)"),
    )
    for ax, values, cell_format, bar_label, panel_title in panels:
        top = max(float(np.nanmax(values)) if np.isfinite(values).any() else 0.0, 1e-9)
        image = ax.imshow(values, cmap="Blues", vmin=0, vmax=top)
        for (row, column), value in np.ndenumerate(values):
            if np.isnan(value):
                continue
            ax.text(
                column,
                row,
                cell_format.format(value.item()),
                ha="center",
                va="center",
                fontsize=8,
                color="white" if value > 0.6 * top else "black",
            )
        ax.set_xticks(range(len(classes)), classes, rotation=45)
        ax.set_yticks(
            range(len(classes)), [f"{c} ({n})" for c, n in zip(classes, support[:, 0], strict=True)]
        )
        ax.set_xlabel("predicted class")
        ax.set_ylabel("true class (images)")
        ax.set_title(panel_title)
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label=bar_label)
    fig.suptitle(title)
    return _finish(fig, caption)


# history.csv columns that are not per-epoch scores (EPOCH_SECONDS: the wall time training
# logs per epoch, hundreds of seconds, which would flatten every score on a shared axis).
_NOT_SCORES = ("epoch", "learning_rate", "lr", EPOCH_SECONDS)


def training_curves(
    history: pd.DataFrame, *, kept_epoch: int | None = None, title: str, caption: str
) -> Figure:
    """Loss (left) and every other logged score (right) per epoch; train solid, val dashed.

    `history` is a Keras CSVLogger file (epoch counted from 0, shown from 1). kept_epoch
    (1-based) draws a vertical line at the epoch the kept checkpoint (best.keras) came from.
    """
    from matplotlib.ticker import MaxNLocator

    epochs = history["epoch"] + 1 if "epoch" in history.columns else history.index + 1
    names = [c for c in history.columns if c not in _NOT_SCORES]
    bases = list(dict.fromkeys(c.removeprefix("val_") for c in names))
    fig = Figure(figsize=(12, 4.8))
    ax_loss, ax_score = fig.subplots(1, 2)
    for index, base in enumerate(bases):
        ax = ax_loss if base.endswith("loss") else ax_score
        for column, style, split in ((base, "-", "train"), (f"val_{base}", "--", "val")):
            if column in history.columns and history[column].notna().any():
                ax.plot(
                    epochs,
                    history[column],
                    color=f"C{index}",
                    linestyle=style,
                    marker="o",
                    markersize=3,
                    label=f"{base} ({split})",
                )
    for ax, label in ((ax_loss, "loss"), (ax_score, "score")):
        if kept_epoch is not None:
            ax.axvline(
                kept_epoch,
                color="0.4",
                linestyle=":",
                label=f"kept checkpoint (epoch {kept_epoch})",
            )
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    ax_loss.set_title("Loss (train solid, val dashed)")
    ax_score.set_title("Scores (train solid, val dashed)")
    fig.suptitle(title)
    return _finish(fig, caption)


def per_class_recall(recalls: Mapping[str, pd.DataFrame], *, title: str, caption: str) -> Figure:
    """Grouped bars of each class's recall per split, with interval error bars where known.

    recalls maps a split name to a frame indexed by class with columns recall, lo, hi (interval
    ends, NaN when unknown) and support (images). Classes absent from a split get no bar.
    """
    import numpy as np

    splits = list(recalls)
    classes = list(next(iter(recalls.values())).index)
    width = 0.8 / len(splits)
    fig = Figure(figsize=(10, 4.8))
    ax = fig.subplots()
    for index, split in enumerate(splits):
        table = recalls[split].loc[classes]
        present = (table["support"] > 0).to_numpy()
        x = np.arange(len(classes)) + (index - (len(splits) - 1) / 2) * width
        value = table["recall"].to_numpy(float)
        lo, hi = table["lo"].to_numpy(float), table["hi"].to_numpy(float)
        known = present & np.isfinite(lo) & np.isfinite(hi)
        ax.bar(x[present], value[present], width, color=f"C{index}", label=split)
        ax.errorbar(
            x[known],
            value[known],
            yerr=[value[known] - lo[known], hi[known] - value[known]],
            fmt="none",
            ecolor="black",
            capsize=3,
            linewidth=1,
        )
    counts = [[int(recalls[s].loc[c, "support"]) for s in splits] for c in classes]
    same = all(len(set(row)) == 1 for row in counts)  # runs on one split: say each count once
    supports = [str(row[0]) if same else "/".join(map(str, row)) for row in counts]
    ax.set_xticks(
        range(len(classes)), [f"{c}\n({n})" for c, n in zip(classes, supports, strict=True)]
    )
    ax.set_xlabel("class (images)" if same else f"class (images: {' / '.join(splits)})")
    ax.set_ylabel("recall (sensitivity) at the argmax")
    ax.set_ylim(0, 1.05)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title)
    return _finish(fig, caption)


def paired_class_changes(
    changes: Mapping[str, pd.DataFrame], *, title: str, caption: str
) -> Figure:
    """Each class's paired change in recall (B − A) per case, as points with interval bars.

    changes maps a case name to a frame indexed by class with columns change, lo and hi (the
    interval ends, NaN when unknown); a zero line marks "no change".
    """
    import numpy as np

    cases = list(changes)
    classes = list(next(iter(changes.values())).index)
    offset = 0.6 / max(1, len(cases))
    fig = Figure(figsize=(9, 4.2))
    ax = fig.subplots()
    ax.axhline(0, color="0.5", linewidth=1)
    for index, case in enumerate(cases):
        table = changes[case].loc[classes]
        x = np.arange(len(classes)) + (index - (len(cases) - 1) / 2) * offset
        value = table["change"].to_numpy(float)
        lo, hi = table["lo"].to_numpy(float), table["hi"].to_numpy(float)
        known = np.isfinite(lo) & np.isfinite(hi)
        ax.plot(x, value, "o", color=f"C{index}", label=case)
        ax.errorbar(
            x[known],
            value[known],
            yerr=[value[known] - lo[known], hi[known] - value[known]],
            fmt="none",
            ecolor=f"C{index}",
            capsize=3,
            linewidth=1,
        )
    ax.set_xticks(range(len(classes)), classes)
    ax.set_xlabel("class")
    ax.set_ylabel("change in recall (paired, 95 % interval)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title)
    return _finish(fig, caption)
