"""Does the cVAE help? Measure it: reconstruction error, recognisability, the synth ablation.

    >>> recon = reconstruction_error(vae_run)                                  # doctest: +SKIP
    >>> recog = recognisability(classifier_run, "artifacts/synth")              # doctest: +SKIP
    >>> cvae_report(vae_run, recon=recon, recog=recog, classifier_run=classifier_run,
    ...             baseline_run=baseline_cpu, synth_run=with_synth_cpu)        # doctest: +SKIP
    PosixPath('results/summary_cvae.md')

- reconstruction error: mean squared error per pixel (pixels scaled to 0..1) between each
  validation image and its reconstruction through the posterior mean, per class, with a lesion
  bootstrap interval; beside it the error of replacing each image by its own mean colour, a
  floor any useful autoencoder must beat.
- recognisability: the share of synthetic images of each class that a trained classifier labels as
  that class (Wilson 95% interval), beside that classifier's recall on real validation images.
- ablation: `baseline` vs `baseline_with_synth` test metrics from each run's metrics.json, plus a
  paired lesion-bootstrap interval of the difference from their predictions_test.csv.
Nothing here is ever filled in without a measurement: a missing input says "not measured".
"""

from __future__ import annotations

import datetime as dt
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from skin_tf.cvae.model import data_root_of, load_vae
from skin_tf.data.ham10000 import CLASSES
from skin_tf.data.splits import split_frames
from skin_tf.evaluation.compare import COMPARE_METRICS, paired_difference

REPORT_NAME = "summary_cvae.md"
_IGNORED_CONFIG_KEYS = {"name", "description", "synthetic_dir", "profile"}


# ------------------------------------------------------------------------- reconstruction error


def reconstruction_error(
    run_dir: str | os.PathLike,
    data_root: str | os.PathLike | None = None,
    batch_size: int = 64,
    n_boot: int = 1000,
    seed: int = 0,
) -> pd.DataFrame:
    """Per-class (then "all") reconstruction MSE on the run's validation split.

    Columns: dx, n_images, n_lesions, mse, mse_ci_low, mse_ci_high (lesion bootstrap, 95%),
    flat_mse (error of each image's mean colour), mse_vs_flat (mse / flat_mse: < 1 is better
    than a flat colour).

    >>> reconstruction_error("/work/runs/…__vae_quick")[["dx", "mse"]]  # doctest: +SKIP
    """
    from skin_tf.data.pipeline import make_dataset
    from skin_tf.evaluation.metrics import bootstrap_ci

    vae, config = load_vae(run_dir)
    val = split_frames(Path(run_dir) / "splits.csv", data_root or data_root_of(run_dir))["val"]
    dataset = make_dataset(val, config.image_size, training=False, batch_size=batch_size,
                           cache=False)  # fmt: skip
    errors, flat = [], []
    for images, labels in dataset:
        pixels = images.numpy() / 255.0
        recon = np.asarray(vae((images, labels), training=False)) / 255.0
        errors.append(np.mean((pixels - recon) ** 2, axis=(1, 2, 3)))
        flat.append(np.mean((pixels - pixels.mean(axis=(1, 2), keepdims=True)) ** 2, (1, 2, 3)))
    frame = val[["dx", "lesion_id"]].assign(mse=np.concatenate(errors), flat=np.concatenate(flat))
    rows = []
    groups = [(dx, frame[frame["dx"] == dx]) for dx in CLASSES] + [("all", frame)]
    for dx, part in groups:
        if part.empty:
            continue
        mse = part["mse"].to_numpy()
        low, high = (math.nan, math.nan)
        if n_boot:
            stat = {"mse": lambda y, _p: float(np.mean(y))}
            lesions = part["lesion_id"].to_numpy()
            low, high = bootstrap_ci(mse, mse, lesions, stat, n_boot, seed)["mse"]
        rows.append({
            "dx": dx, "n_images": len(part), "n_lesions": part["lesion_id"].nunique(),
            "mse": float(mse.mean()), "mse_ci_low": low, "mse_ci_high": high,
            "flat_mse": float(part["flat"].mean()),
            "mse_vs_flat": float(mse.mean() / part["flat"].mean()),
        })  # fmt: skip
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------- recognisability


def load_classifier(classifier: Any) -> tuple[Any, Path | None]:
    """(Keras model, its run dir or None) from a model, a .keras file or a run dir (best.keras)."""
    import keras

    if isinstance(classifier, keras.Model):
        return classifier, None
    path = Path(classifier)
    run_dir = path if path.is_dir() else path.parent
    if path.is_dir():
        path = path / "best.keras"
    if not path.is_file():
        raise FileNotFoundError(
            f"no classifier at {path}: pass a Keras model, a .keras file, or a classifier run "
            "directory holding best.keras"
        )
    model = keras.models.load_model(path, compile=False)
    return model, run_dir if (run_dir / "meta.json").is_file() else None


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score 95% interval of a proportion (NaN for n = 0).

    >>> [round(x, 3) for x in wilson_interval(8, 10)]
    [0.49, 0.943]
    """
    if n == 0:
        return math.nan, math.nan
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def recognisability(
    classifier: Any, synth_dir: str | os.PathLike, batch_size: int = 64
) -> pd.DataFrame:
    """How a trained classifier labels the synthetic images of each class (from manifest.csv).

    Images go through the pipeline's decode/resize to the classifier's input size, as they do in
    training with `synthetic_dir`. Columns: dx, n, recognised (share labelled dx), ci_low,
    ci_high (Wilson 95%), mean_p_dx (mean probability of dx), top_other (most frequent other
    label) and real_val_recall (the classifier's recall on real validation images of dx, from
    its run's predictions_val.csv; NaN when the classifier is not given as a run).

    >>> recognisability("runs/…__baseline-cpu", "artifacts/synth")  # doctest: +SKIP
    """
    from skin_tf.cvae.synth import read_manifest
    from skin_tf.data.pipeline import make_dataset

    model, run_dir = load_classifier(classifier)
    manifest = read_manifest(synth_dir)
    size = int(model.input_shape[1])
    dataset = make_dataset(manifest, size, training=False, batch_size=batch_size, cache=False)
    probs = model.predict(dataset, verbose=0)
    predicted = probs.argmax(axis=1)
    real_recall = _real_val_recall(run_dir)
    rows = []
    for dx in [c for c in CLASSES if c in set(manifest["dx"])]:
        label = CLASSES.index(dx)
        mine = (manifest["label"] == label).to_numpy()
        hits = int(np.sum(predicted[mine] == label))
        others = pd.Series(predicted[mine][predicted[mine] != label]).map(lambda i: CLASSES[i])
        low, high = wilson_interval(hits, int(mine.sum()))
        rows.append({
            "dx": dx, "n": int(mine.sum()), "recognised": hits / mine.sum(), "ci_low": low,
            "ci_high": high, "mean_p_dx": float(probs[mine, label].mean()),
            "top_other": others.mode().iloc[0] if len(others) else "",
            "real_val_recall": real_recall.get(dx, math.nan),
        })  # fmt: skip
    return pd.DataFrame(rows)


def _real_val_recall(run_dir: Path | None) -> dict[str, float]:
    from skin_tf.evaluation.metrics import read_predictions

    if run_dir is None or not (run_dir / "predictions_val.csv").is_file():
        return {}
    frame = read_predictions(run_dir, "val")
    predicted = frame[[f"p_{c}" for c in CLASSES]].to_numpy().argmax(axis=1)
    return {
        dx: float(np.mean(predicted[frame["label"] == i] == i))
        for i, dx in enumerate(CLASSES)
        if (frame["label"] == i).any()
    }


# ------------------------------------------------------------------------- the synth ablation


def compare_runs(
    baseline_run: str | os.PathLike, synth_run: str | os.PathLike, n_boot: int = 1000, seed: int = 0
) -> dict[str, Any]:
    """Test metrics of `baseline` vs `baseline_with_synth` and a paired bootstrap of the change.

    Per-run values and 95% intervals come from each run's metrics.json (`skin-tf evaluate`); the
    difference (with synth − without) is resampled over the test lesions both runs share, from
    their predictions_test.csv. Raises ValueError if the baseline uses synthetic images, the
    other run does not, or their test images differ. Other config differences are listed.

    >>> compare_runs(baseline_cpu, with_synth_cpu)["diff"]["balanced_accuracy"]  # doctest: +SKIP
    """
    from skin_tf.evaluation.metrics import read_predictions
    from skin_tf.runs import read_json
    from skin_tf.training.config import config_from_dict

    runs = {"baseline": Path(baseline_run), "with_synth": Path(synth_run)}
    # Completed with today's defaults: a run made before a config field existed trained with
    # that field's default, so the field's absence is not a difference.
    configs = {
        k: config_from_dict(read_json(p / "config.json"), source=str(p)).to_dict()
        for k, p in runs.items()
    }
    if configs["baseline"].get("synthetic_dir"):
        raise ValueError(f"{baseline_run} trained with synthetic images: pass a run without them")
    if not configs["with_synth"].get("synthetic_dir"):
        raise ValueError(f"{synth_run} has synthetic_dir=null: pass a baseline_with_synth run")
    differs = sorted(
        key
        for key in set(configs["baseline"]) | set(configs["with_synth"])
        if key not in _IGNORED_CONFIG_KEYS
        and configs["baseline"].get(key) != configs["with_synth"].get(key)
    )
    metrics = {}
    for key, path in runs.items():
        if not (path / "metrics.json").is_file():
            raise FileNotFoundError(f"{path} has no metrics.json: run `skin-tf evaluate {path}`")
        metrics[key] = read_json(path / "metrics.json")["test"]
    frames = {k: read_predictions(p, "test") for k, p in runs.items()}
    diff = paired_difference(
        frames["baseline"], frames["with_synth"], COMPARE_METRICS, n_boot, seed
    )
    return {
        "runs": {k: str(p) for k, p in runs.items()},
        "metrics": metrics,
        "diff": diff,
        "config_differences": differs,
        "n_test_images": len(frames["baseline"]),
        "n_test_lesions": int(frames["baseline"]["lesion_id"].nunique()),
        "method": f"paired percentile bootstrap over test lesions, {n_boot} resamples, seed {seed}",
    }


def verdict(comparison: dict[str, Any]) -> str:
    """One plain sentence on balanced accuracy (the ISIC 2018 metric) from `compare_runs`."""
    value, low, high = comparison["diff"]["balanced_accuracy"]
    text = f"{value:+.3f} (95% CI {low:+.3f} to {high:+.3f})"
    if low > 0:
        return f"Synthetic images improved test balanced accuracy by {text}."
    if high < 0:
        return f"Synthetic images made test balanced accuracy worse: {text}."
    return (
        f"No measurable benefit: the change in test balanced accuracy is {text}, an interval "
        "that includes zero. On this evidence the cVAE images do not help the classifier."
    )


# ------------------------------------------------------------------------- figures and report


def cvae_report(
    vae_run: str | os.PathLike,
    results_dir: str | os.PathLike = Path("results"),
    *,
    classifier: Any = None,
    synth_dir: str | os.PathLike | None = None,
    baseline_run: str | os.PathLike | None = None,
    synth_run: str | os.PathLike | None = None,
    data_root: str | os.PathLike | None = None,
    n_boot: int = 1000,
    figures: bool = True,
) -> Path:
    """Measure what the inputs allow and write results/summary_cvae.md; return its path.

    Always: the cVAE run's training summary and per-class reconstruction error on validation
    (and, with figures=True, the two figures). With `classifier` (a run dir, a .keras file or a
    model) and `synth_dir`: recognisability. With `baseline_run` and `synth_run` (evaluated
    classifier runs): the ablation. Sections without their inputs say they were not measured.

    >>> cvae_report("/work/runs/…__vae_quick", classifier="runs/…__baseline-cpu",
    ...             synth_dir="artifacts/synth")  # doctest: +SKIP
    """
    from skin_tf.runs import provenance

    results_dir = Path(results_dir)
    from skin_tf.cvae.synth import draw_cvae_figures

    drawn = draw_cvae_figures(vae_run, results_dir, data_root) if figures else {}
    recon = reconstruction_error(vae_run, data_root, n_boot=n_boot)
    lines = [
        "# cVAE: reconstructions, samples, and whether synthetic images help",
        "",
        "Research/teaching tool, not a medical device. Written by "
        f"`skin_tf.cvae.quality.cvae_report` on {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC.",
        "",
        *_run_section(Path(vae_run), provenance(vae_run), drawn, results_dir),
        *_recon_section(recon),
        *_recog_section(classifier, synth_dir),
        *_ablation_section(baseline_run, synth_run, n_boot),
    ]
    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / REPORT_NAME
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _run_section(run: Path, caption: str, drawn: dict[str, Path], results_dir: Path) -> list[str]:
    from skin_tf.runs import read_json

    config = read_json(run / "config.json")
    last = pd.read_csv(run / "history.csv").iloc[-1]
    lines = [
        "## The cVAE run",
        "",
        f"Run `{run.name}` — {caption}.",
        f"Image size {config['image_size']} px, latent {config['latent_dim']}, class embedding "
        f"{config['embed_dim']}, β {config['beta']} after a {config['kl_warmup_epochs']}-epoch "
        f"KL warm-up, batch {config['batch_size']}, Adam {config['learning_rate']}. Trained on "
        "the training split of the classifier's lesion split (seed "
        f"{config['seed']}, fractions {config['fractions']}).",
        "",
        f"Last epoch: train loss {last['loss']:.1f} (reconstruction {last['reconstruction']:.1f}"
        f", KL {last['kl']:.1f}); validation loss {last['val_loss']:.1f} (reconstruction "
        f"{last['val_reconstruction']:.1f}, KL {last['val_kl']:.1f}) — nats per image, "
        "reconstruction = binary cross-entropy summed over pixels.",
        "",
    ]
    for name, figure in drawn.items():
        lines += [f"![cVAE {name}]({os.path.relpath(figure, results_dir)})", ""]
    return lines


def _recon_section(recon: pd.DataFrame) -> list[str]:
    lines = [
        "## Reconstruction error on validation",
        "",
        "Mean squared error per pixel (pixels scaled to 0..1) between each validation image and "
        "its reconstruction through the posterior mean; 95% interval by bootstrap over lesions. "
        "`flat` is the error of replacing each image by its own mean colour; `ratio` < 1 means "
        "the cVAE keeps more than the average colour.",
        "",
        "| class | images | lesions | MSE | 95% CI | flat | ratio |",
        "|---|---:|---:|---:|---|---:|---:|",
    ]
    for row in recon.itertuples():
        lines.append(
            f"| {row.dx} | {row.n_images} | {row.n_lesions} | {row.mse:.4f} | "
            f"{row.mse_ci_low:.4f}–{row.mse_ci_high:.4f} | {row.flat_mse:.4f} | "
            f"{row.mse_vs_flat:.2f} |"
        )
    return [*lines, ""]


def _recog_section(classifier: Any, synth_dir: str | os.PathLike | None) -> list[str]:
    lines = ["## Recognisability of synthetic images", ""]
    if classifier is None or synth_dir is None:
        return [
            *lines,
            "Not measured yet: needs a trained classifier (`classifier=`) and a synthetic folder "
            "(`synth_dir=`, from `skin-tf synth`).",
            "",
        ]
    from skin_tf.cvae.synth import read_manifest
    from skin_tf.runs import provenance

    _, run_dir = load_classifier(classifier)
    table = recognisability(classifier, synth_dir)
    manifest = read_manifest(synth_dir)
    source = f"run `{run_dir.name}` — {provenance(run_dir)}" if run_dir else str(classifier)
    lines += [
        f"Classifier: {source}. Synthetic images: {len(manifest)} from `{synth_dir}` (cVAE run "
        f"{', '.join(sorted(set(manifest['vae_run'])))}).",
        "`recognised` is the share of a class's synthetic images the classifier labels as that "
        "class (Wilson 95% interval); `real val recall` is the same classifier on real "
        "validation images of the class, for scale.",
        "",
        "| class | n | recognised | 95% CI | mean P(class) | most common other label "
        "| real val recall |",
        "|---|---:|---:|---|---:|---|---:|",
    ]
    for row in table.itertuples():
        real = "—" if math.isnan(row.real_val_recall) else f"{row.real_val_recall:.2f}"
        lines.append(
            f"| {row.dx} | {row.n} | {row.recognised:.2f} | {row.ci_low:.2f}–{row.ci_high:.2f} | "
            f"{row.mean_p_dx:.2f} | {row.top_other or '—'} | {real} |"
        )
    return [*lines, ""]


def _ablation_section(
    baseline_run: str | os.PathLike | None, synth_run: str | os.PathLike | None, n_boot: int
) -> list[str]:
    lines = ["## Does it help? baseline vs baseline_with_synth", ""]
    if baseline_run is None or synth_run is None:
        return [
            *lines,
            "Not measured yet: the `baseline` and `baseline_with_synth` classifier runs "
            "(`--profile cpu`) have not been done, so there is no evidence either way. To measure:",
            "",
            "    skin-tf synth <VAE_RUN> --per-class N --out artifacts/synth",
            "    skin-tf train --config baseline --profile cpu",
            "    skin-tf train --config baseline_with_synth --profile cpu",
            "    skin-tf evaluate <each run>",
            "",
            "then pass both run directories to `cvae_report(baseline_run=…, synth_run=…)`.",
            "",
        ]
    from skin_tf.runs import provenance

    comparison = compare_runs(baseline_run, synth_run, n_boot=n_boot)
    lines += [
        f"- baseline: `{Path(baseline_run).name}` — {provenance(baseline_run)}",
        f"- with synth: `{Path(synth_run).name}` — {provenance(synth_run)}",
        f"- test set: {comparison['n_test_images']} images, {comparison['n_test_lesions']} "
        f"lesions; change interval: {comparison['method']}.",
        "- other config differences: "
        + (", ".join(comparison["config_differences"]) or "none (only synthetic_dir)"),
        "",
        "| test metric | baseline (95% CI) | with synth (95% CI) | change (95% CI) |",
        "|---|---|---|---|",
    ]
    for name in COMPARE_METRICS:
        cells = [_with_ci(comparison["metrics"][k], name) for k in ("baseline", "with_synth")]
        value, low, high = comparison["diff"][name]
        lines.append(
            f"| {name} | {cells[0]} | {cells[1]} | {value:+.3f} ({low:+.3f} to {high:+.3f}) |"
        )
    return [*lines, "", f"**Verdict:** {verdict(comparison)}", ""]


def _with_ci(metrics: dict[str, Any], name: str) -> str:
    value = metrics.get(name)
    if value is None:
        return "—"
    ci = metrics.get("ci", {}).get(name)
    if not ci or ci[0] is None:
        return f"{value:.3f}"
    return f"{value:.3f} ({ci[0]:.3f}–{ci[1]:.3f})"
