"""A run's Grad-CAM gallery: pick test examples, draw overlays and a gallery, keep a README.

    skin-tf gradcam runs/20250101T120000Z__baseline --out results/gradcam
    skin-tf gradcam runs/… --images lesion1.jpg lesion2.jpg --method gradcam++

`gradcam_run` loads a run's best.keras, explains either the most confident correct and wrong test
predictions per class (from predictions_test.csv) or given image files, and writes one
original | overlay PNG per image, a gallery figure with its caption, and a section of
`results/gradcam/README.md`. The heatmaps and overlays themselves come from
`skin_tf.explain.gradcam`.

Example:
    >>> result = gradcam_run("runs/20250101T120000Z__baseline", per_class=2)  # doctest: +SKIP
    >>> result["gallery"]  # doctest: +SKIP
    'results/gradcam/gallery_baseline_gradcam.png'
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np

from skin_tf.data.ham10000 import CLASSES
from skin_tf.data.sizes import image_hw
from skin_tf.explain.gradcam import cam_layers, gradcam_heatmaps, overlay
from skin_tf.explain.methods import method_slug, method_title, parse_method
from skin_tf.models.meta_fusion import META_INPUT
from skin_tf.runs import patient_fields, read_json

NOT_ADVICE = "research use only — not medical advice"


# ---------------------------------------------------------------- gallery figure


@dataclass(frozen=True)
class Example:
    """One explained image: the original, its overlay, and what the model said."""

    image_id: str
    original: np.ndarray  # RGB uint8 at the image's own size
    overlay: np.ndarray  # same size
    probs: np.ndarray  # (7,) model probabilities
    true_class: str | None  # None when unknown (images given by path)

    @property
    def predicted(self) -> str:
        return CLASSES[int(np.argmax(self.probs))]

    @property
    def correct(self) -> bool | None:
        return None if self.true_class is None else self.predicted == self.true_class

    def label(self) -> str:
        p_pred = float(np.max(self.probs))
        lines = [self.image_id, f"pred {self.predicted} {p_pred:.2f}"]
        if self.true_class is not None:
            p_true = float(self.probs[CLASSES.index(self.true_class)])
            mark = "correct" if self.correct else "WRONG"
            lines.append(f"true {self.true_class} {p_true:.2f} ({mark})")
        return "\n".join(lines)


def gallery_figure(
    rows: Sequence[tuple[str, Sequence[Example | None]]], *, title: str, caption: str
):
    """A grid: one row per (label, examples); each example is an original | overlay pair.

    `None` in a row leaves a labelled empty slot (e.g. a class with no misclassified image).
    The caption footer (what produced it) is required and ends with "research use only".
    """
    import matplotlib.pyplot as plt

    from skin_tf.evaluation import plots

    if not rows:
        raise ValueError("gallery_figure needs at least one row")
    if not caption.strip():
        raise ValueError("the gallery needs a caption saying what produced it (run, data, model)")
    n_cols = 2 * max(len(examples) for _, examples in rows)
    fig, axes = plt.subplots(
        len(rows), n_cols, figsize=(1.75 * n_cols, 2.1 * len(rows)), squeeze=False
    )
    for r, (row_label, examples) in enumerate(rows):
        for slot in range(n_cols // 2):
            left, right = axes[r, 2 * slot], axes[r, 2 * slot + 1]
            for ax in (left, right):
                ax.set_xticks([])
                ax.set_yticks([])
            example = examples[slot] if slot < len(examples) else None
            if example is None:
                left.axis("off")
                right.axis("off")
                left.text(0.5, 0.5, "none", ha="center", va="center", color="0.5", fontsize=7)
                continue
            left.imshow(example.original)
            right.imshow(example.overlay)
            left.set_title(example.label(), fontsize=6, loc="left")
            if example.correct is False:
                for spine in right.spines.values():
                    spine.set_edgecolor("red")
                    spine.set_linewidth(2)
        axes[r, 0].set_ylabel(row_label, fontsize=8)
    fig.suptitle(title, fontsize=10)
    plots.add_caption(fig, f"{caption} · {NOT_ADVICE}")
    return fig


# ---------------------------------------------------------------- a run → figures + README


def gradcam_run(
    run_dir: str | Path,
    image_paths: Sequence[str | Path] | None = None,
    out_dir: Path = Path("results/gradcam"),
    method: str = "gradcam",
    per_class: int = 2,
    class_index: int | None = None,
    data_root: str | Path | None = None,
) -> dict[str, Any]:
    """Explain a run's predictions: per-image overlays, a gallery figure, and README.md.

    Without `image_paths`, takes from predictions_test.csv, for each class, the `per_class`
    most confident correct and the `per_class` most confident wrong test images (the images
    are found under the run's data root from meta.json, or `data_root`). With `image_paths`,
    explains those files. Returns the written paths. Overlays an earlier call wrote for the
    same gallery (run name, method, image choice) are removed first, so the folder matches it.

    Example:
        >>> gradcam_run("runs/20250101T120000Z__baseline", per_class=2)["gallery"]  # doctest: +SKIP
        'results/gradcam/gallery_baseline_gradcam.png'
    """
    from skin_tf.data.images import read_rgb_image
    from skin_tf.data.pipeline import load_image, resize_rule
    from skin_tf.evaluation.calibration import apply_temperature, read_temperature
    from skin_tf.runs import run_caption, run_name_of

    run_dir, out_dir = Path(run_dir), Path(out_dir)
    parse_method(method)  # an unknown method fails here, before the model loads
    if per_class < 1:
        raise ValueError(f"per_class must be at least 1, got {per_class}")
    config = read_json(run_dir / "config.json")
    image_size = image_hw(config["image_size"])
    resize = resize_rule(str(config.get("resize", "squash")))
    model_path = run_dir / "best.keras"
    if not model_path.is_file():
        raise FileNotFoundError(f"{model_path} not found: train the run first (skin-tf train)")
    model = keras.models.load_model(model_path, compile=False)
    run_name = run_name_of(run_dir)

    if image_paths is None:
        picks = pick_test_examples(run_dir, per_class, data_root)
    else:
        picks = [(Path(p).stem, Path(p), None, None) for p in image_paths]
    inputs = np.stack([load_image(str(path), image_size, resize) for _, path, _, _ in picks])
    fields = patient_fields(run_dir)
    vectors = _recorded_fields(picks, fields, run_dir, data_root) if fields else None
    probs = model.predict(inputs if vectors is None else {"image": inputs, META_INPUT: vectors},
                          verbose=0)  # fmt: skip
    temperature = read_temperature(run_dir)
    if temperature is not None:  # show the probabilities the exported model would give
        probs = apply_temperature(probs, temperature)
    maps = gradcam_heatmaps(model, inputs, class_index=class_index, method=method, fields=vectors)

    # One name per (method, image choice, class): galleries never overwrite one another.
    tag = method_slug(method) + ("" if image_paths is None else "_images")
    tag += "" if class_index is None else f"_{CLASSES[class_index]}"
    figure_dir = out_dir / _safe(run_name)
    figure_dir.mkdir(parents=True, exist_ok=True)
    # This gallery's overlays from an earlier call (e.g. a retrained run of the same name) show
    # other images and another model: remove them so the folder matches the gallery it sits beside.
    for stale in figure_dir.glob(f"*_{tag}.png"):
        stale.unlink()
    examples: list[tuple[Example, str | None]] = []
    written: list[str] = []
    for (image_id, path, true_class, kind), p, heat in zip(picks, probs, maps, strict=True):
        original = read_rgb_image(path)
        example = Example(image_id, original, overlay(original, heat, resize=resize), p, true_class)
        examples.append((example, kind))
        target = figure_dir / f"{_safe(image_id)}_{tag}.png"
        _save_pair(example, target)
        written.append(str(target))

    title_method = method_title(method)
    target_text = "predicted class" if class_index is None else f"class {CLASSES[class_index]}"
    caption = run_caption(
        run_dir,
        f"skin_tf.explain.gallery.gradcam_run: {title_method} (tf-keras-vis) on layer "
        f"{'+'.join(cam_layers(model, parse_method(method)[1]))}, for the {target_text}; "
        "probabilities "
        + ("uncalibrated" if temperature is None else f"temperature-scaled (T={temperature:.3g})")
        + (f"; the patient's {', '.join(fields)} held at each image's recorded values (not given "
           "for files outside HAM10000's metadata): the map covers the image only"
           if fields else ""),
    )  # fmt: skip
    if image_paths is None:
        rows = _class_rows(examples, per_class)
        title = (
            f"{title_method} on test images, run {run_name}: per true class, the {per_class} "
            f"most confident correct (left) and wrong (right, red frame) predictions"
        )
    else:
        rows = [("images", [e for e, _ in examples])]
        title = f"{title_method} on given images, run {run_name}"
    gallery = out_dir / f"gallery_{_safe(run_name)}_{tag}.png"
    from skin_tf.evaluation import plots

    plots.save_figure(gallery_figure(rows, title=title, caption=caption), gallery)
    readme = update_readme(
        out_dir, run_name, method, gallery, figure_dir, caption, image_paths, target_text, tag
    )
    return {"gallery": str(gallery), "overlays": written, "readme": str(readme)}


def _recorded_fields(
    picks: Sequence[tuple[str, Path, Any, Any]],
    fields: tuple[str, ...],
    run_dir: Path,
    data_root: str | Path | None,
) -> np.ndarray:
    """The encoded fields HAM10000's metadata records for each picked image (by image id, the
    file's stem for given files); "not given" for an image it does not list."""
    import pandas as pd

    from skin_tf.data.ham10000 import read_metadata
    from skin_tf.data.meta_fields import encode_fields

    root = data_root or read_json(run_dir / "meta.json").get("data", {}).get("root")
    table = read_metadata(root).set_index("image_id") if root and Path(root).is_dir() else None
    rows = [
        table.loc[image_id, list(fields)].to_dict()
        if table is not None and image_id in table.index
        else {}
        for image_id, *_ in picks
    ]
    return encode_fields(pd.DataFrame(rows, columns=list(fields)), fields)


def pick_test_examples(
    run_dir: Path, per_class: int, data_root: str | Path | None = None
) -> list[tuple[str, Path, str, str]]:
    """(image_id, path, true class, "correct"/"wrong") of the most confident test predictions.

    Per class in CLASSES order: the `per_class` correct images with the highest P(true class),
    then the `per_class` wrong ones with the highest P(predicted class).
    """
    import pandas as pd

    from skin_tf.data.ham10000 import read_metadata
    from skin_tf.evaluation.metrics import PROB_COLUMNS

    csv = run_dir / "predictions_test.csv"
    if not csv.is_file():
        raise FileNotFoundError(f"{csv} not found: evaluate the run first, or pass --images")
    frame = pd.read_csv(csv, dtype={"image_id": str, "dx": str})
    probs = frame[list(PROB_COLUMNS)].to_numpy(float)
    frame["pred"] = [CLASSES[i] for i in probs.argmax(axis=1)]
    frame["p_pred"] = probs.max(axis=1)
    root = data_root or read_json(run_dir / "meta.json").get("data", {}).get("root")
    if root is None or not Path(root).is_dir():
        raise FileNotFoundError(
            f"the run's data folder {root} is not on this machine: pass data_root (--data) "
            "or explain given files with --images"
        )
    paths = read_metadata(root).set_index("image_id")["path"]
    picks = []
    for code in CLASSES:
        of_class = frame[frame["dx"] == code]
        right = of_class[of_class["pred"] == code].sort_values("p_pred", ascending=False)
        wrong = of_class[of_class["pred"] != code].sort_values("p_pred", ascending=False)
        for kind, chosen in (("correct", right), ("wrong", wrong)):
            for image_id in chosen["image_id"].head(per_class):
                picks.append((image_id, Path(paths[image_id]), code, kind))
    if not picks:
        raise ValueError(f"{csv} has no rows to explain")
    return picks


def _class_rows(
    examples: Sequence[tuple[Example, str | None]], per_class: int
) -> list[tuple[str, list[Example | None]]]:
    rows = []
    for code in CLASSES:
        of_class = [(e, k) for e, k in examples if e.true_class == code]
        if not of_class:
            continue
        right = [e for e, k in of_class if k == "correct"]
        wrong = [e for e, k in of_class if k == "wrong"]
        slots: list[Example | None] = [*right, *[None] * (per_class - len(right))]
        slots += [*wrong, *[None] * (per_class - len(wrong))]
        rows.append((code, slots))
    return rows


def _save_pair(example: Example, target: Path) -> None:
    from PIL import Image

    pair = np.concatenate([example.original, example.overlay], axis=1)
    Image.fromarray(pair).save(target)


def update_readme(
    out_dir: Path,
    run_name: str,
    method: str,
    gallery: Path,
    figure_dir: Path,
    caption: str,
    image_paths: Sequence[str | Path] | None,
    target_text: str = "predicted class",
    tag: str | None = None,
) -> Path:
    """Write or replace the section of `out_dir/README.md` for this run and gallery."""
    readme = out_dir / "README.md"
    key = f"{run_name}:{tag or method_slug(method)}"
    start, end = f"<!-- gradcam {key} -->", f"<!-- /gradcam {key} -->"
    chosen = (
        "given image files"
        if image_paths is not None
        else "test images picked from predictions_test.csv: per true class the most confident "
        "correct predictions (left half of each row) and the most confident wrong ones (right "
        "half, red frame); 'none' marks a class without such an image"
    )
    section = "\n".join(
        [
            start,
            f"## {method_title(method)} — run `{run_name}` ({gallery.name})",
            "",
            f"- `{gallery.name}`: {chosen}. Each example is the original image and the "
            f"{method_title(method)} heatmap of the {target_text} overlaid on it (jet "
            "colormap, alpha 0.4, at the image's own size); titles give the image id, the "
            "predicted class with its probability and, for test images, the true class with its "
            "probability.",
            f"- `{figure_dir.name}/*_{tag or method_slug(method)}.png`: one PNG per image, "
            "original | overlay side by side.",
            f"- Produced by: {caption}.",
            "",
            end,
        ]
    )
    header = (
        "# Grad-CAM figures\n\n"
        "Class-activation maps on the last conv layer of trained runs (`skin-tf gradcam`). "
        "They show where the model looked, not why, and not whether it is right. "
        "Research and teaching use only — not medical advice.\n\n"
    )
    text = readme.read_text() if readme.is_file() else header
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.DOTALL)
    text = pattern.sub(lambda _: section, text) if pattern.search(text) else text + section + "\n"
    readme.write_text(text if text.endswith("\n") else text + "\n")
    return readme


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "x"
