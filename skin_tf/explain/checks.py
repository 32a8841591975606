"""Explanations that are checked, not just drawn: which heatmap method says something about a
run's model, measured on its test images (`skin-tf explain-check RUN_DIR`).

    skin-tf explain-check runs/20261206T061141Z__demo            # 200 test images
    skin-tf explain-check runs/… --images 50 --methods gradcam layercam@block5+top

The story, top to bottom in `explain_check_run`:
1. `pick_images`: N test images, as equal per class as the classes allow, in class turns (so
   the first R, the randomisation subset, are balanced too); each explained for the class the
   model predicts. A run trained with patient fields (issue 31) gets each image's recorded age,
   sex and site, held through every map and curve: only the pixels change.
2. maps of every method (`skin_tf.explain.gradcam`) and the two baselines a map must beat: a
   centred Gaussian ("the lesion is in the middle") and a random map on the CAMs' own grid.
3. deletion and insertion curves (`skin_tf.explain.faithfulness`): per-image areas, their means
   with 95% lesion-bootstrap intervals and each method's paired difference from the centred
   Gaussian (`skin_tf.evaluation.compare.paired_mean_differences`). These curves and the
   trained model's RISE and Score-CAM maps (which read its answers on altered copies: most of
   the check's forward passes) run on the model's LiteRT float32 copy
   (`faithfulness.probability_function`), faster on a CPU than TensorFlow with the same answers
   to float rounding; gradients and every randomised model's maps, TensorFlow.
4. the randomisation cascade (`skin_tf.explain.sanity`) on the first R images: the median
   Spearman correlation of each method's maps with its maps on the model re-initialised from
   the head down; a method passes when randomising the top block (`top`: the last conv and
   the head) takes it below 0.3. RISE's masked copies of these images go through the layers
   the cascade never re-initialises once, on LiteRT (`skin_tf.explain.rise.RiseOnTrunk`, held
   in memory: R x masks x the cut's float32 feature map, e.g. 50 x 500 x 8 x 8 x 112 x 4
   bytes = 0.7 GB for Lite0 at 128 px), for the trained model's maps of them as for every
   step's.
5. `skin_tf.explain.choice.choose_default`: the method the page and the `explain` endpoint use
   and what may be said about it. The record goes to `<run>/explain_check.json`, which
   `skin-tf export` reads (`skin_tf.explain.choice.explain_choice`), and the report to
   `results/explain/<run>.md` with a figure (`skin_tf.explain.check_report`).

Example:
    >>> record = explain_check_run("runs/20261206T061141Z__demo")  # doctest: +SKIP
    >>> record["default"]["headline"]  # doctest: +SKIP
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from skin_tf.data.ham10000 import CLASSES
from skin_tf.explain.choice import CHECK_FILE, SANITY_STEP, choose_default
from skin_tf.explain.methods import ENDPOINT_METHODS, method_title, parse_method
from skin_tf.runs import file_digest, patient_fields, read_json, write_json

FORMAT = "skin_tf.explain_check/1"
DEFAULT_METHODS = (
    "gradcam",
    "gradcam++",
    "scorecam",
    "layercam",
    "gradcam@block5",  # one layer with a grid twice as fine as the last conv
    "layercam@block5+top",  # two layers fused
    "rise",  # no layer: masked copies of the input (rise.MASKS forward passes an image)
)
SANITY_LIMIT = 0.3
# the same float32 network, answered faster on a CPU (faithfulness.probability_function)
FORWARD_PASSES = (
    "curves, the trained model's RISE and Score-CAM masked copies and the RISE trunk's pass: "
    "LiteRT float32 (XNNPACK); gradients, activations and every randomised model: TensorFlow"
)
BASELINE_TITLES = {"centre": "centred Gaussian", "random": "random map"}


@dataclass(frozen=True)
class CheckConfig:
    """What `explain_check_run` measures; the defaults are the issue's (200 images, 16 steps).

    images: test images (stratified by class); steps: points of each curve after the first;
    fill: what a removed pixel becomes ("mean" colour or "blur", see
    `skin_tf.explain.faithfulness`); randomization_images: how many of them the cascade
    re-explains; cascade_depth: head, top, then this many minus two stages (each step costs
    every method again); batch_size: images per model call. With these defaults the check
    took 5.6 min on the demo's 96 px model and 9.1 min at 128 px on a 2-core AMD EPYC
    (benchmarks/README.md, "The whole check at 128 px with them").
    """

    images: int = 200
    steps: int = 16
    fill: str = "mean"
    methods: tuple[str, ...] = DEFAULT_METHODS
    randomization_images: int = 50
    cascade_depth: int = 4
    n_boot: int = 1000
    seed: int = 0
    batch_size: int = 128
    sanity_limit: float = SANITY_LIMIT


# ---------------------------------------------------------------- the story


def explain_check_run(
    run_dir: str | os.PathLike,
    out_dir: str | os.PathLike = Path("results/explain"),
    config: CheckConfig = CheckConfig(),
    data_root: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Measure every method of `config` on the run's test images; write the record to
    `<run_dir>/explain_check.json`, the report and figure to `out_dir`; return the record.

    Example:
        >>> explain_check_run("runs/…__demo", config=CheckConfig(images=50))  # doctest: +SKIP
    """
    import keras

    from skin_tf.data.pipeline import load_image, resize_rule
    from skin_tf.explain import check_report, faithfulness, sanity
    from skin_tf.explain.gradcam import cam_layers, gradcam_heatmaps, grid_shape, logit_model
    from skin_tf.explain.rise import RiseOnTrunk, rise_maps_of, rise_settings
    from skin_tf.models.meta_fusion import image_input
    from skin_tf.runs import hardware, run_name_of

    started, load_start = time.time(), os.getloadavg()
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    _check_config(config)
    model_path = run_dir / "best.keras"
    if not model_path.is_file():
        raise FileNotFoundError(f"{model_path} not found: train the run first (skin-tf train)")
    resize = resize_rule(str(read_json(run_dir / "config.json").get("resize", "squash")))
    model = keras.models.load_model(model_path, compile=False)
    hw = tuple(int(d) for d in image_input(model).shape[1:3])
    layers = {m: list(cam_layers(model, parse_method(m)[1])) for m in config.methods}

    picked = pick_images(held_out_images(run_dir, data_root), config.images, config.seed)
    images = np.stack([load_image(p, hw, resize) for p in picked["path"]]).astype(np.float32)
    fields = recorded_fields(picked, patient_fields(run_dir))
    predict = faithfulness.probability_function(model)
    probs = faithfulness.predict_in_batches(predict, images, fields, config.batch_size)
    classes = probs.argmax(axis=1)
    seconds: dict[str, float] = {}

    maps, logits = {}, logit_model(model)  # one linear-head copy for every method
    subset = min(config.randomization_images, len(images))  # the cascade's images
    held = None if fields is None else fields[:subset]
    # RISE's masked copies of the cascade's images go once through the layers the cascade never
    # re-initialises (RiseOnTrunk): every model's maps of them then cost only its upper part
    with_rise = any(parse_method(m)[0] == "rise" for m in config.methods)
    split = sanity.trunk_split(logits, config.cascade_depth) if with_rise else None
    trunk = None
    for method in config.methods:
        tic = time.time()
        if parse_method(method)[0] == "rise":
            first = subset if split else 0  # the rest: the curves' engine, one chunk a call
            parts = []
            if split:
                trunk = RiseOnTrunk(split[0], images[:subset], held)
                parts.append(_scaled(trunk.maps(split[1], classes[:subset])))
            if first < len(images):
                rest = None if fields is None else fields[first:]
                parts.append(_scaled(rise_maps_of(predict, images[first:], classes[first:], rest)))
            maps[method] = np.concatenate(parts)
        else:
            maps[method] = gradcam_heatmaps(
                logits, images, classes.tolist(), method, logits=True, fields=fields,
                predict=predict,
            )  # fmt: skip
        seconds[f"maps {method}"] = time.time() - tic
    cam_grid = grid_shape(model, "gradcam")
    maps[faithfulness.CENTRE] = np.repeat(faithfulness.centred_gaussian(hw)[None], len(images), 0)
    maps[faithfulness.RANDOM] = faithfulness.random_maps(len(images), hw, cam_grid, config.seed)

    tic = time.time()
    curves = faithfulness.deletion_insertion(
        predict, images, maps, classes, config.steps, config.fill, config.seed, config.batch_size,
        fields,
    )  # fmt: skip
    seconds["deletion and insertion"] = time.time() - tic
    per_image = auc_frame(picked, classes, curves)
    faithful = summarise(per_image, list(maps), picked["lesion_id"], config.n_boot, config.seed)

    tic = time.time()
    rho: dict[str, dict[str, np.ndarray]] = {m: {} for m in config.methods}
    randomised_maps: dict[str, dict[str, np.ndarray]] = {m: {} for m in config.methods}
    for method in config.methods:
        seconds[f"randomisation {method}"] = 0.0
    upper = None  # the cascade re-initialises one copy in place: its upper part serves every step
    for step, random_model in sanity.cascade(logits, config.cascade_depth, config.seed):
        if trunk is not None and upper is None:
            upper = sanity.trunk_split(random_model, config.cascade_depth)[1]
        for method in config.methods:
            started_method = time.time()
            if parse_method(method)[0] == "rise" and trunk is not None:
                again = _scaled(trunk.maps(upper, classes[:subset]))
            else:
                again = gradcam_heatmaps(
                    random_model, images[:subset], classes[:subset].tolist(), method,
                    logits=True, fields=held,
                )  # fmt: skip
            rho[method][step] = sanity.spearman_rows(maps[method][:subset], again)
            randomised_maps[method][step] = again[0]
            seconds[f"randomisation {method}"] += time.time() - started_method
    seconds["randomisation"] = time.time() - tic

    methods = {
        method: {
            "title": method_title(method),
            "layers": layers[method],
            "grid": list(grid_shape(model, method)),
            "servable": parse_method(method)[0] in ENDPOINT_METHODS,
            **faithful[method],
            "spearman_median": {s: float(np.median(v)) for s, v in rho[method].items()},
            "spearman_quartiles": {
                s: [float(q) for q in np.quantile(v, [0.25, 0.75])] for s, v in rho[method].items()
            },
            "passes_sanity": bool(np.median(rho[method][SANITY_STEP]) < config.sanity_limit),
            "seconds": seconds[f"maps {method}"],
            "randomisation_seconds": seconds[f"randomisation {method}"],
        }
        for method in config.methods
    }
    baselines = {
        name: {"title": BASELINE_TITLES[name], **faithful[name]} for name in faithfulness.BASELINES
    }
    seconds["total"] = time.time() - started
    record = {
        "format": FORMAT,
        "run": run_name_of(run_dir),
        "model_sha256": file_digest(model_path),
        "model": read_json(run_dir / "config.json").get("model"),
        "input_size": list(hw),
        # a model trained with patient fields is explained with each image's recorded fields held
        "patient_fields": list(patient_fields(run_dir)),
        "images": _images_block(picked, classes),
        "config": asdict(config),
        "curve": {"steps": config.steps, "fill": config.fill, "class": "predicted"},
        "random_map_grid": list(cam_grid),
        "rise": rise_settings(),  # export compares them with its own (explain_choice)
        "methods": methods,
        "baselines": baselines,
        "randomization": {"images": subset, "steps": list(next(iter(rho.values())))},
        "mean_curves": {
            name: {
                "deletion": c.deletion.mean(0).tolist(),
                "insertion": c.insertion.mean(0).tolist(),
            }
            for name, c in curves.items()
        },
        "fractions": curves[faithfulness.CENTRE].fractions.tolist(),
        "timing": {
            "seconds": seconds,
            "hardware": f"{hardware()}{_vector_units()}",
            "forward_passes": FORWARD_PASSES,
            "load_average_start": list(load_start),
            "load_average_end": list(os.getloadavg()),
        },
    }
    record["default"] = choose_default(record)
    example = _example(picked, classes)
    record["example"] = f"{picked['image_id'][example]} ({picked['dx'][example]})"
    write_json(run_dir / CHECK_FILE, record)
    figure = check_report.check_figure(
        record,
        images[example],
        {m: maps[m][example] for m in maps},
        randomised_maps,
        run_dir,
    )
    record["report"] = str(check_report.write_report(record, run_dir, out_dir, figure))
    write_json(run_dir / CHECK_FILE, record)
    return record


def _scaled(raw: np.ndarray) -> np.ndarray:
    """RISE maps scaled to 0..1 per image, as `gradcam_heatmaps` scales them."""
    from skin_tf.explain.gradcam import normalize_heatmaps

    return np.clip(normalize_heatmaps(raw).numpy(), 0.0, 1.0)


def _example(picked: pd.DataFrame, classes: np.ndarray) -> int:
    """The gallery's image: the first melanoma the model calls melanoma, else the first image."""
    right = (picked["dx"] == "mel").to_numpy() & (classes == CLASSES.index("mel"))
    return int(np.argmax(right)) if right.any() else 0


def _check_config(config: CheckConfig) -> None:
    from skin_tf.explain.faithfulness import FILLS

    if config.images < 2:
        raise ValueError(f"images must be at least 2, got {config.images}")
    if config.randomization_images < 1:
        raise ValueError(f"randomization_images must be at least 1: {config.randomization_images}")
    if config.cascade_depth < 2:
        raise ValueError(
            f"cascade_depth must be at least 2 (head, then {SANITY_STEP!r}, which the test "
            f"reads), got {config.cascade_depth}"
        )
    if config.fill not in FILLS:
        raise ValueError(f"unknown fill {config.fill!r}: choose one of {', '.join(FILLS)}")
    if not config.methods:
        raise ValueError("give at least one method (e.g. gradcam)")
    for method in config.methods:
        parse_method(method)  # names the problem for an unknown method


# ---------------------------------------------------------------- images


def held_out_images(run_dir: Path, data_root: str | os.PathLike | None = None) -> pd.DataFrame:
    """The run's test split (image_id, lesion_id, dx, path and the patient fields the metadata
    records), its files found under the run's data folder (meta.json) or `data_root`."""
    from skin_tf.data.ham10000 import read_metadata
    from skin_tf.data.meta_fields import META_FIELDS
    from skin_tf.data.splits import read_splits

    splits = read_splits(run_dir / "splits.csv")
    test = splits[splits["split"] == "test"]
    if test.empty:
        raise ValueError(f"{run_dir / 'splits.csv'} has no test rows: use a complete run")
    root = data_root or read_json(run_dir / "meta.json").get("data", {}).get("root")
    if root is None or not Path(root).is_dir():
        raise FileNotFoundError(
            f"the run's data folder {root} is not on this machine: pass data_root (--data)"
        )
    recorded = read_metadata(root).set_index("image_id")
    paths = recorded["path"]
    missing = sorted(set(test["image_id"]) - set(paths.index))
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} test images of the run are not in {root} (e.g. {missing[:3]}): "
            "pass the HAM10000 folder the run was trained on (--data)"
        )
    test = test.drop(columns=[c for c in META_FIELDS if c in test.columns])
    test = test.join(recorded[list(META_FIELDS)], on="image_id")
    return test.assign(path=test["image_id"].map(paths).astype(str)).reset_index(drop=True)


def recorded_fields(picked: pd.DataFrame, fields: Sequence[str]) -> np.ndarray | None:
    """The encoded patient fields (`skin_tf.data.meta_fields.encode_fields`) of the picked
    images as the metadata records them, None when the run takes none."""
    from skin_tf.data.meta_fields import encode_fields

    return encode_fields(picked, tuple(fields)) if fields else None


def pick_images(frame: pd.DataFrame, n: int, seed: int = 0) -> pd.DataFrame:
    """n rows of `frame`, as equal per class (dx) as the classes allow, in class turns: the
    first image of each class (in CLASSES order), then the second, … A class with too few
    images gives all it has; the others fill its place. Any prefix is as balanced as it can be.

    Example:
        >>> f = pd.DataFrame({"dx": ["nv"] * 6 + ["mel", "df"], "image_id": list("abcdefgh")})
        >>> pick_images(f, 5)["dx"].tolist()
        ['df', 'mel', 'nv', 'nv', 'nv']
    """
    shuffled = frame.sample(frac=1.0, random_state=seed)
    turn = shuffled.groupby("dx", sort=False).cumcount()
    order = shuffled.assign(_turn=turn, _class=shuffled["dx"].map(CLASSES.index))
    order = order.sort_values(["_turn", "_class"], kind="stable")
    return order.head(n).drop(columns=["_turn", "_class"]).reset_index(drop=True)


def _images_block(picked: pd.DataFrame, classes: np.ndarray) -> dict[str, Any]:
    return {
        "n": int(len(picked)),
        "lesions": int(picked["lesion_id"].nunique()),
        "per_class": {c: int((picked["dx"] == c).sum()) for c in CLASSES},
        "correct": int((picked["dx"].map(CLASSES.index).to_numpy() == classes).sum()),
        "chosen": "the run's test split, as equal per class as the classes allow (seeded)",
    }


# ---------------------------------------------------------------- numbers


def auc_frame(picked: pd.DataFrame, classes: np.ndarray, curves: dict) -> pd.DataFrame:
    """One row per image: ids, true and explained class, and every map's deletion and
    insertion AUC (columns `<name>:deletion`, `<name>:insertion`)."""
    frame = picked[["image_id", "lesion_id", "dx"]].copy()
    frame["explained"] = [CLASSES[c] for c in classes]
    for name, curve in curves.items():
        frame[f"{name}:deletion"] = curve.deletion_auc
        frame[f"{name}:insertion"] = curve.insertion_auc
    return frame


def summarise(
    per_image: pd.DataFrame, names: Sequence[str], lesions: Sequence[object], n_boot: int, seed: int
) -> dict[str, dict[str, Any]]:
    """Per map family: deletion and insertion AUC means with lesion-bootstrap intervals, and the
    paired difference from the centred Gaussian with its interval."""
    from skin_tf.evaluation.compare import paired_mean_differences
    from skin_tf.explain.faithfulness import CENTRE

    out: dict[str, dict[str, Any]] = {name: {} for name in names}
    for curve in ("deletion", "insertion"):
        scores = per_image[[f"{name}:{curve}" for name in names]]
        scores.columns = list(names)
        table = paired_mean_differences(scores, CENTRE, list(lesions), n_boot, seed)
        for name in names:
            row = table.loc[name]
            out[name][curve] = {
                "auc": float(row["mean"]),
                "ci": [float(row["low"]), float(row["high"])],
                "vs_centre": float(row["diff"]),
                "vs_centre_ci": [float(row["diff_low"]), float(row["diff_high"])],
            }
    return out


def _vector_units() -> str:
    """ ", AVX-512" or ", AVX2" from /proc/cpuinfo (a CPU's speed depends on them); "" elsewhere."""
    try:
        flags = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return ""
    return ", AVX-512" if "avx512f" in flags else ", AVX2" if "avx2" in flags else ""
