"""The explanation checks' report: `results/explain/<run>.md` and its figure (the mean deletion
and insertion curves; one test image under every method and under each randomisation step).

Both are drawn from the record `skin_tf.explain.checks.explain_check_run` writes to the run's
explain_check.json, so every number in them is the record's.

Example:
    >>> figure = check_figure(record, image, maps, randomised, run_dir)  # doctest: +SKIP
    >>> write_report(record, run_dir, Path("results/explain"), figure)  # doctest: +SKIP
    PosixPath('results/explain/demo.md')
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

NOT_ADVICE = "research use only — not medical advice"
PRODUCER = "skin_tf.explain.checks.explain_check_run (skin-tf explain-check)"


def check_figure(
    record: dict[str, Any],
    image: np.ndarray,
    maps: dict[str, np.ndarray],
    randomised: dict[str, dict[str, np.ndarray]],
    run_dir: Path,
):
    """Curves on top (mean probability of the explained class against the fraction of pixels
    removed or put back, per method); below, one image under each method (trained model, then
    each randomisation step) and under the two baselines."""
    import matplotlib.pyplot as plt

    from skin_tf.evaluation import plots
    from skin_tf.explain.faithfulness import BASELINES
    from skin_tf.explain.gradcam import overlay
    from skin_tf.runs import run_caption

    methods = list(record["methods"])
    steps = record["randomization"]["steps"]
    columns = 2 + len(steps)
    rows = len(methods) + 1  # the baselines share the last row
    fig = plt.figure(figsize=(1.45 * columns + 0.6, 3.0 + 1.45 * rows))
    grid = fig.add_gridspec(1 + rows, columns, height_ratios=[2.2] + [1.0] * rows)
    half = columns // 2
    fractions = np.asarray(record["fractions"])
    chosen = record["default"]["method"]
    for k, (curve, where) in enumerate(
        (("deletion", grid[0, :half]), ("insertion", grid[0, half:]))
    ):
        ax = fig.add_subplot(where)
        for name in [*methods, *BASELINES]:
            mean = record["mean_curves"][name][curve]
            auc = (record["methods"].get(name) or record["baselines"][name])[curve]["auc"]
            style = {"linestyle": "--", "color": "0.3" if name == "centre" else "0.65"}
            ax.plot(
                fractions,
                mean,
                **(style if name in BASELINES else {}),
                linewidth=2.2 if name == chosen else 1.2,
                label=f"{_short(record, name)} {auc:.3f}",
            )
        ax.set_xlabel("fraction of pixels " + ("removed" if k == 0 else "put back"))
        ax.set_ylabel("mean P(explained class)")
        ax.set_title(f"{curve} (AUC: {'lower' if k == 0 else 'higher'} is better)", fontsize=9)
        ax.legend(fontsize=6, loc="upper right" if k == 0 else "lower right")
        ax.grid(alpha=0.3)
    picture = np.clip(np.round(image), 0, 255).astype(np.uint8)
    for r, method in enumerate(methods, start=1):
        shown = [("image", None), ("trained", maps[method])]
        shown += [(f"{step} random", randomised[method][step]) for step in steps]
        _gallery_row(fig, grid, r, shown, picture, overlay, _short(record, method))
    base_row = [("image", None)] + [(_short(record, n), maps[n]) for n in BASELINES]
    _gallery_row(fig, grid, rows, base_row, picture, overlay, "baselines")
    fig.suptitle(
        f"Explanation checks, run {record['run']}: {record['images']['n']} test images, "
        f"randomisation on {record['randomization']['images']}",
        fontsize=10,
    )
    caption = run_caption(run_dir, f"{PRODUCER}; gallery: test image {record['example']}")
    plots.add_caption(fig, f"{caption} · {NOT_ADVICE}")
    return fig


def _gallery_row(fig, grid, row, shown, picture, overlay, label) -> None:
    for c, (title, heat) in enumerate(shown):
        ax = fig.add_subplot(grid[row, c])
        ax.set_xticks([])
        ax.set_yticks([])
        ax.imshow(picture if heat is None else overlay(picture, heat))
        ax.set_title(title, fontsize=6)
        if c == 0:
            ax.set_ylabel(label, fontsize=6)


def _short(record: dict[str, Any], name: str) -> str:
    facts = record["methods"].get(name) or record["baselines"][name]
    return facts["title"]


# ---------------------------------------------------------------- markdown


def write_report(record: dict[str, Any], run_dir: Path, out_dir: Path, figure) -> Path:
    """Save the figure as `<out_dir>/<run>.png` and the report as `<out_dir>/<run>.md`."""
    from skin_tf.evaluation import plots

    name = _safe(record["run"])
    out_dir.mkdir(parents=True, exist_ok=True)
    plots.save_figure(figure, out_dir / f"{name}.png")
    path = out_dir / f"{name}.md"
    path.write_text(report_text(record, run_dir, f"{name}.png"), encoding="utf-8")
    return path


def report_text(record: dict[str, Any], run_dir: Path, figure_name: str) -> str:
    """The markdown report of one record."""
    from skin_tf.runs import run_caption

    images, curve, choice = record["images"], record["curve"], record["default"]
    config, timing = record["config"], record["timing"]
    steps = record["randomization"]["steps"]
    per_class = ", ".join(f"{c} {n}" for c, n in images["per_class"].items())
    size, subset = _size(record["input_size"]), record["randomization"]["images"]
    fill = "mean colour" if curve["fill"] == "mean" else "Gaussian blur"
    verdict = (
        f"**Default map: {choice['title']}.** {choice['headline']}."
        if choice["explanation"]
        else f"**{choice['headline']}.** The page and the model card say so instead of "
        f"presenting the map as an explanation; the `explain` endpoint computes "
        f"{choice['title']}, the best of the methods that pass."
    )
    if choice.get("not_servable_but_better"):
        verdict += (
            " Better on deletion but not computable by the `explain` endpoint: "
            + ", ".join(record["methods"][m]["title"] for m in choice["not_servable_but_better"])
            + "."
        )
    lines = [
        f"# Explanation checks: {record['run']}",
        "",
        f"_{run_caption(run_dir, PRODUCER)}_",
        "",
        verdict,
        "",
        "## What was measured",
        "",
        f"- **Images**: {images['n']} test images of {images['lesions']} lesions, "
        f"{images['chosen']} ({per_class}); each explained for the class the model predicts "
        f"({images['correct']} of them correctly), at the model's input size {size}.",
        *(
            [
                f"- **Patient fields**: the model also takes {', '.join(record['patient_fields'])}"
                "; every image keeps the fields the metadata records for it through every "
                "curve and map, so only its pixels are removed or randomised against."
            ]
            if record.get("patient_fields")
            else []
        ),
        "- **Deletion / insertion** (Petsiuk et al. 2018): pixels removed (put back) in the "
        f"order of the map, {curve['steps']} steps, a removed pixel becoming the image's {fill} "
        "(`skin_tf.explain.faithfulness` says why); the area under the curve of P(explained "
        "class) against the fraction, by the trapezoid rule. Deletion: lower is better; "
        "insertion: higher is better.",
        *([_rise_line(curve["fill"], record["rise"])] if "rise" in record["methods"] else []),
        "- **Baselines**: a centred Gaussian (the 'lesion is in the middle' prior) and a random "
        f"map on a {_size(record['random_map_grid'])} grid (the last conv layer's), resized "
        "like the maps.",
        f"- **Intervals**: 95% percentile bootstrap over lesions ({config['n_boot']} resamples, "
        f"seed {config['seed']}); 'vs centre' is the paired mean difference from the centred "
        "Gaussian on the same images, with its own interval.",
        f"- **Randomisation** (Adebayo et al. 2018): on the first {subset} images, the model "
        f"re-initialised cumulatively from the top ({' → '.join(steps)}), the maps recomputed "
        "for the same classes; Spearman rank correlation with the trained model's maps (0 for "
        "a constant map). A method passes when its median at `top` (last conv and head "
        f"randomised) is below {config['sanity_limit']}.",
        "",
        "## Faithfulness and sanity",
        "",
        "| method | layers | grid | deletion AUC [95% CI] | vs centre [95% CI] | insertion AUC "
        "[95% CI] | vs centre [95% CI] | median ρ at `top` | sanity | maps, randomised maps "
        "(s) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, facts in record["methods"].items():
        mark = " (default)" if name == choice["method"] else ""
        lines.append(
            f"| {facts['title']}{mark} | {', '.join(facts['layers']) or 'input'} | "
            f"{_size(facts['grid'])} | "
            f"{_cells(facts)} | {facts['spearman_median']['top']:.2f} | "
            f"{'passes' if facts['passes_sanity'] else 'fails'} | {facts['seconds']:.0f}, "
            f"{facts['randomisation_seconds']:.0f} |"
        )
    for facts in record["baselines"].values():
        lines.append(f"| {facts['title']} | – | – | {_cells(facts)} | – | – | – |")
    lines += [
        "",
        "## Randomisation cascade: median Spearman ρ [quartiles]",
        "",
        "| method | " + " | ".join(f"`{s}`" for s in steps) + " |",
        "|---|" + "---|" * len(steps),
    ]
    for facts in record["methods"].values():
        cells = [
            f"{facts['spearman_median'][s]:.2f} [{q[0]:.2f}, {q[1]:.2f}]"
            for s in steps
            for q in [facts["spearman_quartiles"][s]]
        ]
        lines.append(f"| {facts['title']} | " + " | ".join(cells) + " |")
    seconds = timing["seconds"]
    start, end = timing["load_average_start"], timing["load_average_end"]
    lines += [
        "",
        "The centred Gaussian does not depend on the model (its ρ would be 1 at every step) and "
        "the random map does not either; neither can pass.",
        "",
        "## Time",
        "",
        f"{seconds['total']:.0f} s in all on {timing['hardware']}: maps "
        f"{sum(v for k, v in seconds.items() if k.startswith('maps')):.0f} s, deletion and "
        f"insertion {seconds['deletion and insertion']:.0f} s, randomisation "
        f"{seconds['randomisation']:.0f} s. Load average (1, 5, 15 min) "
        f"{_load(start)} at the start and {_load(end)} at the end.",
        "",
        f"Reproduce: `skin-tf explain-check {run_dir} --images {config['images']} --steps "
        f"{config['steps']} --fill {config['fill']} --methods {' '.join(config['methods'])} "
        f"--randomization-images {config['randomization_images']} --cascade-depth "
        f"{config['cascade_depth']} --n-boot {config['n_boot']} --seed {config['seed']}`.",
        "",
        f"![explanation checks]({figure_name})",
        "",
        "Research and teaching use only — not medical advice.",
        "",
    ]
    return "\n".join(lines)


def _rise_line(fill: str, masks: dict[str, Any]) -> str:
    """What RISE is (with the masks the record says it drew), and that it is scored by the
    perturbation it is computed with."""
    same = (
        "the perturbation the deletion curve applies, so RISE is scored by the kind of change "
        "it was computed from (`--fill blur` scores it on another)"
        if fill == "mean"
        else "not the blur the curves apply here"
    )
    return (
        f"- **RISE** (Petsiuk et al. 2018, `skin_tf.explain.rise`): {masks['masks']} copies of "
        f"each image under seeded random masks ({masks['grid']}×{masks['grid']} cells, each "
        f"shown with probability {masks['keep']}, "
        "upsampled and shifted); a hidden pixel shows the image's mean colour, "
        f"{same}. The map is the mean probability of the class over the copies that show each "
        f"pixel; its grid column gives the mask cells."
    )


def _cells(facts: dict[str, Any]) -> str:
    cells = []
    for curve in ("deletion", "insertion"):
        f = facts[curve]
        cells.append(f"{f['auc']:.3f} [{f['ci'][0]:.3f}, {f['ci'][1]:.3f}]")
        low, high = f["vs_centre_ci"]
        cells.append(f"{f['vs_centre']:+.3f} [{low:+.3f}, {high:+.3f}]")
    return " | ".join(cells)


def _size(hw) -> str:
    return "×".join(str(int(d)) for d in hw)


def _load(values) -> str:
    return ", ".join(f"{v:.2f}" for v in values)


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "run"
