"""`skin-tf` subcommands that use a trained classifier run or an exported model: calibrate,
threshold, gradcam, explain-check, export, ensemble, predict and app. skin_tf.cli.main registers
them; each is a thin wrapper over library calls, with its heavy imports inside.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _calibrate(args: argparse.Namespace) -> int:
    from skin_tf.evaluation.calibration import calibrate_run

    result = calibrate_run(args.run_dir, results_dir=args.results)
    print(
        f"temperature {result['temperature']:.3f} (fitted on val); test NLL "
        f"{result['test']['nll_before']:.4f} -> {result['test']['nll_after']:.4f}, ECE "
        f"{result['test']['ece_before']:.4f} -> {result['test']['ece_after']:.4f}"
    )
    return 0


def add_calibrate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "calibrate", help="fit temperature scaling on a run's validation predictions"
    )
    p.add_argument("run_dir", type=Path, help="a run directory made by `skin-tf train`")
    p.add_argument("--results", type=Path, default=Path("results"), help="where figures go")
    p.set_defaults(func=_calibrate)


def _threshold(args: argparse.Namespace) -> int:
    from skin_tf.evaluation.threshold import threshold_run

    result = threshold_run(
        args.run_dir,
        min_sensitivity=args.min_sensitivity,
        results_dir=args.results,
        n_boot=args.n_boot,
        seed=args.seed,
    )
    val, test = result["val"], result["test"]
    print(f"melanoma threshold {result['threshold']:.4f} chosen on val ({result['note']})")
    print(f"  val : sensitivity {val['sensitivity']:.3f}  specificity {val['specificity']:.3f}")
    print(f"  test: sensitivity {test['sensitivity']:.3f}  specificity {test['specificity']:.3f}")
    print(f"report: {result['report']}")
    return 0


def add_threshold(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "threshold", help="choose the melanoma operating point on val, report it on test"
    )
    p.add_argument("run_dir", type=Path, help="a run directory made by `skin-tf train`")
    p.add_argument("--min-sensitivity", type=float, default=0.85, help="target val sensitivity")
    p.add_argument("--results", type=Path, default=Path("results"), help="where reports go")
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples (over lesions)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_threshold)


def _gradcam(args: argparse.Namespace) -> int:
    from skin_tf.data.ham10000 import CLASSES
    from skin_tf.explain.gallery import gradcam_run

    result = gradcam_run(
        args.run_dir, image_paths=args.images, out_dir=args.out, method=args.method,
        per_class=args.per_class,
        class_index=None if args.class_name is None else CLASSES.index(args.class_name),
        data_root=args.data,
    )  # fmt: skip
    print(f"wrote {result['gallery']}, {len(result['overlays'])} overlays, {result['readme']}")
    return 0


def add_gradcam(sub: argparse._SubParsersAction) -> None:
    from skin_tf.data.ham10000 import CLASSES

    p = sub.add_parser("gradcam", help="Grad-CAM overlays and a per-class gallery for a run")
    p.add_argument("run_dir", type=Path, help="run directory with best.keras")
    p.add_argument("--images", nargs="+", type=Path, help="explain these files instead")
    p.add_argument("--out", type=Path, default=Path("results/gradcam"), help="output folder")
    p.add_argument(
        "--method", default="gradcam",
        help="gradcam, gradcam++, scorecam, layercam (optionally @layers: layercam@block5+top) "
        "or rise",
    )  # fmt: skip
    p.add_argument("--per-class", type=int, default=2, help="correct and wrong per class")
    p.add_argument("--class", dest="class_name", choices=CLASSES, help="explain this class")
    p.add_argument("--data", type=Path, help="HAM10000 folder if not the run's own")
    p.set_defaults(func=_gradcam)


def _explain_check(args: argparse.Namespace) -> int:
    from skin_tf.explain.checks import CheckConfig, explain_check_run

    config = CheckConfig(
        images=args.images, steps=args.steps, fill=args.fill, methods=tuple(args.methods),
        randomization_images=args.randomization_images, cascade_depth=args.cascade_depth,
        n_boot=args.n_boot, seed=args.seed, batch_size=args.batch_size,
    )  # fmt: skip
    record = explain_check_run(args.run_dir, args.out, config, data_root=args.data)
    for facts in [*record["methods"].values(), *record["baselines"].values()]:
        deletion, insertion = facts["deletion"], facts["insertion"]
        sanity = (
            f"  rho(top) {facts['spearman_median']['top']:.2f} "
            f"{'passes' if facts['passes_sanity'] else 'fails'}"
            if "passes_sanity" in facts
            else ""
        )
        print(
            f"{facts['title']:<28} deletion {deletion['auc']:.3f} ({deletion['vs_centre']:+.3f} vs "
            f"centre)  insertion {insertion['auc']:.3f} ({insertion['vs_centre']:+.3f}){sanity}"
        )
    print(f"default: {record['default']['headline']}")
    print(f"took {record['timing']['seconds']['total']:.0f} s; report: {record['report']}")
    return 0


def add_explain_check(sub: argparse._SubParsersAction) -> None:
    from skin_tf.explain.checks import CheckConfig

    d = CheckConfig()  # its module imports no TensorFlow
    p = sub.add_parser(
        "explain-check",
        help="faithfulness (deletion/insertion) and randomisation checks of a run's heatmaps; "
        "chooses the method export and the page use",
    )
    p.add_argument("run_dir", type=Path, help="run directory with best.keras and splits.csv")
    p.add_argument("--out", type=Path, default=Path("results/explain"), help="report folder")
    p.add_argument("--images", type=int, default=d.images, help="test images (by class)")
    p.add_argument("--steps", type=int, default=d.steps, help="steps of each curve")
    p.add_argument("--fill", choices=("mean", "blur"), default=d.fill, help="removed pixels")
    p.add_argument(
        "--methods", nargs="+", default=list(d.methods),
        help="e.g. gradcam gradcam++ scorecam layercam layercam@block5+top rise",
    )  # fmt: skip
    p.add_argument(
        "--randomization-images", type=int, default=d.randomization_images,
        help="images re-explained at each randomisation step",
    )  # fmt: skip
    p.add_argument("--cascade-depth", type=int, default=d.cascade_depth, help="head, top, stages")
    p.add_argument("--n-boot", type=int, default=d.n_boot, help="bootstrap resamples (lesions)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="images per model call")
    p.add_argument("--data", type=Path, help="HAM10000 folder if not the run's own")
    p.set_defaults(func=_explain_check)


def _export(args: argparse.Namespace) -> int:
    from skin_tf.serving.export import export_run
    from skin_tf.serving.served import load_served_metadata

    out = export_run(
        args.run_dir, args.out, overwrite=args.overwrite, data_root=args.data,
        litert_models=not args.no_litert, int8=not args.no_int8,
        calibration_images=args.calibration_images, guard=not args.no_guard,
        guard_images=args.guard_images,
    )  # fmt: skip
    metadata = load_served_metadata(out)
    threshold = metadata.get("mel_threshold", {}).get("value")
    print(f"exported {args.run_dir} -> {out} (melanoma threshold: {threshold})")
    for line in engine_lines(metadata) + guard_lines(metadata):
        print(line)
    return 0


def engine_lines(metadata: dict) -> list[str]:
    """One line per engine of an export: file, size, validation, agreement, threshold, default.

    Example:
        >>> engine_lines({})
        ['engines: savedmodel only']
    """
    block = metadata.get("engines")
    if not block:
        return ["engines: savedmodel only"]
    lines = [f"checked on: {block['checked_on']}"]
    for engine in ("savedmodel", "tflite", "tflite-int8"):
        facts = block.get(engine) or {}
        if facts.get("written") is False:
            lines.append(f"  {engine}: not written ({facts['reason']})")
            continue
        parts = []
        if facts.get("bytes"):
            parts.append(f"{facts['file']} {facts['bytes'] / 1e6:.1f} MB")
        validation = facts.get("validation") or {}
        if validation.get("balanced_accuracy") is not None:
            parts.append(f"val balanced accuracy {validation['balanced_accuracy']:.3f}")
        for key in ("agreement_with_savedmodel", "agreement_with_float"):
            if key in facts:
                agreement = facts[key]
                parts.append(
                    f"{key.replace('_', ' ')}: top-1 {agreement['top1_agreement']:.3f}, max "
                    f"|dp| {agreement['max_abs_diff']:.2g}"
                )
        point = facts.get("mel_threshold") or {}
        if engine != "savedmodel" and point.get("value") is not None:
            parts.append(f"melanoma threshold {point['value']:.4f}")
        if "gate" in facts:
            parts.append(f"int8 check: {facts['gate'].get('why')}")
        lines.append(f"  {engine}: " + "; ".join(parts))
    lines.append(f"default engine: {block['default']}")
    return lines


def guard_lines(metadata: dict) -> list[str]:
    """What an export's out-of-distribution guard is and each engine's threshold.

    Example:
        >>> guard_lines({"ood_guard": {"written": False, "reason": "--no-guard"}})
        ['out-of-distribution guard: none (--no-guard)']
    """
    block = metadata.get("ood_guard") or {}
    if not block.get("method"):
        return [f"out-of-distribution guard: none ({block.get('reason', 'not written')})"]
    comparison = block.get("comparison") or {}
    chosen = (comparison.get("candidates") or {}).get(comparison.get("chosen")) or {}
    rejected = (chosen.get("rejected") or {}).get("all")
    lines = [
        f"out-of-distribution guard: {block['method']} on {block['layer']}"
        + (
            f" (rejects {rejected:.0%} of the generated OOD validation images)"
            if rejected is not None
            else ""
        )
    ]
    thresholds = block.get("thresholds") or {}
    for engine in ("savedmodel", "tflite", "tflite-int8"):
        if engine in thresholds:
            facts = thresholds[engine]
            lines.append(
                f"  {engine}: threshold {facts['threshold']:.4g}, keeps "
                f"{facts['val_kept']:.1%} of {facts['n_images']} validation images"
            )
    return lines


def add_export(sub: argparse._SubParsersAction) -> None:
    from skin_tf.serving.engines import DEFAULT_CALIBRATION_IMAGES
    from skin_tf.serving.guard_choice import DEFAULT_GUARD_IMAGES

    p = sub.add_parser(
        "export", help="SavedModel (serve + explain) and LiteRT models with metadata.json"
    )
    p.add_argument("run_dir", type=Path, help="run directory with best.keras")
    p.add_argument("--out", type=Path, required=True, help="folder for the exported model")
    p.add_argument("--overwrite", action="store_true", help="replace an exported model")
    p.add_argument(
        "--data", type=Path,
        help="HAM10000 folder for the validation check and int8 calibration (default: the run's)",
    )  # fmt: skip
    p.add_argument("--no-litert", action="store_true", help="write the SavedModel only")
    p.add_argument("--no-int8", action="store_true", help="no quantised model_int8.tflite")
    p.add_argument(
        "--calibration-images", type=int, default=DEFAULT_CALIBRATION_IMAGES,
        help="training images that calibrate the int8 model (default: %(default)s)",
    )  # fmt: skip
    p.add_argument(
        "--no-guard",
        action="store_true",
        help="no out-of-distribution guard (ood_score, in_distribution) in the export",
    )
    p.add_argument(
        "--guard-images", type=int, default=DEFAULT_GUARD_IMAGES,
        help="training images the guard is fitted on (default: %(default)s)",
    )  # fmt: skip
    p.set_defaults(func=_export)


def _ensemble(args: argparse.Namespace) -> int:
    """Combine runs into an ensemble run, then calibrate, threshold and evaluate it like a run
    (a results row with intervals) and, with --out, export it."""
    from skin_tf.evaluation.calibration import calibrate_run
    from skin_tf.evaluation.evaluate import evaluate_run
    from skin_tf.evaluation.threshold import threshold_run
    from skin_tf.training.ensemble import ensemble_run

    run = ensemble_run(args.run_dirs, args.runs_dir, args.name, data_root=args.data)
    print(f"ensemble of {len(args.run_dirs)} runs -> {run}")
    temperature = calibrate_run(run, results_dir=args.results)["temperature"]
    point = threshold_run(run, min_sensitivity=args.min_sensitivity, results_dir=args.results)
    test = evaluate_run(run, results_dir=args.results, data_root=args.data)["metrics"]["test"]
    print(
        f"temperature {temperature:.3f}; melanoma threshold {point['threshold']:.4f} (val); "
        f"test balanced accuracy {test['balanced_accuracy']:.3f}, accuracy "
        f"{test['accuracy']:.3f}, melanoma ROC AUC {test['mel_roc_auc']:.3f}"
    )
    if args.out is not None:
        from skin_tf.serving.export import export_run

        out = export_run(run, args.out, overwrite=args.overwrite, data_root=args.data)
        print(f"exported -> {out}")
    print(run)
    return 0


def add_ensemble(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "ensemble",
        help="combine calibrated runs into one model, evaluated (and exported) like a run",
    )
    p.add_argument("run_dirs", nargs="+", type=Path, help="calibrated runs, split alike")
    p.add_argument("--name", default="ensemble", help="the ensemble run's name")
    p.add_argument("--runs-dir", type=Path, default=Path("runs"), help="where the run goes")
    p.add_argument("--results", type=Path, default=Path("results"), help="where reports go")
    p.add_argument("--min-sensitivity", type=float, default=0.85, help="target val sensitivity")
    p.add_argument("--out", type=Path, help="also export it here (e.g. saved_models/ensemble)")
    p.add_argument("--overwrite", action="store_true", help="replace an exported model at --out")
    p.add_argument("--data", type=Path, help="HAM10000 folder if not the members' own")
    p.set_defaults(func=_ensemble)


def _predict(args: argparse.Namespace) -> int:
    """Exit code 1 when any file failed (the others are still predicted), else 0."""
    from skin_tf.serving.predict import format_predictions, predict_files
    from skin_tf.serving.served import load_served

    served = load_served(args.model, engine=args.engine)
    print(f"engine: {served.engine}" + (f" ({served.engine_note})" if served.engine_note else ""),
          file=sys.stderr)  # fmt: skip
    if served.guard_note:
        print(f"note: {served.guard_note}", file=sys.stderr)
    if served.fields and args.meta is None:
        print(f"note: this model also takes {', '.join(served.fields)} (--meta FILE.csv); none "
              "given, so every image is scored without them", file=sys.stderr)  # fmt: skip
    results = predict_files(
        served, args.images, top_k=args.top_k, batch_size=args.batch_size, progress=True,
        meta=args.meta,
    )  # fmt: skip
    print(format_predictions(results, json=args.json))
    if not args.json:
        print(f"({served.disclaimer})", file=sys.stderr)
    return 1 if any(r["error"] is not None for r in results) else 0


def add_predict(sub: argparse._SubParsersAction) -> None:
    from skin_tf.serving.engines import ENGINES

    p = sub.add_parser("predict", help="top-k classes and the melanoma flag for image files")
    p.add_argument("model", type=Path, help="exported model folder (skin-tf export)")
    p.add_argument("images", nargs="+", help="image files and/or folders of images")
    p.add_argument("--json", action="store_true", help="one JSON object per image")
    p.add_argument("--top-k", type=int, default=3, help="classes to list per image")
    p.add_argument(
        "--engine", choices=ENGINES,
        help="what computes the probabilities (default: the export's fastest faithful engine)",
    )  # fmt: skip
    p.add_argument("--batch-size", type=int, default=32, help="images per LiteRT call")
    p.add_argument(
        "--meta", type=Path, metavar="FILE.csv",
        help="patient fields for a model trained with them: columns image, age, sex, "
        "localization (any may be empty; an image without a row has none given)",
    )  # fmt: skip
    p.set_defaults(func=_predict)


def _app(args: argparse.Namespace) -> int:
    from skin_tf.serving.launch import app_command

    return app_command(args.model, args.models_dir, args.port, args.address, engine=args.engine)


def add_app(sub: argparse._SubParsersAction) -> None:
    from skin_tf.serving.launch import add_app_arguments

    p = sub.add_parser(
        "app", help="Streamlit page: upload images, see top-k, Grad-CAM and the melanoma flag"
    )
    add_app_arguments(p)
    p.set_defaults(func=_app)
