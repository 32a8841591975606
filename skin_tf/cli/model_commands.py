"""`skin-tf` subcommands that use a trained classifier run or an exported model: calibrate,
threshold, gradcam, export, predict and app. skin_tf.cli.main registers them; each is a thin wrapper
over one library call, with its heavy imports inside.
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
    p.add_argument("--method", choices=("gradcam", "gradcam++", "scorecam"), default="gradcam")
    p.add_argument("--per-class", type=int, default=2, help="correct and wrong per class")
    p.add_argument("--class", dest="class_name", choices=CLASSES, help="explain this class")
    p.add_argument("--data", type=Path, help="HAM10000 folder if not the run's own")
    p.set_defaults(func=_gradcam)


def _export(args: argparse.Namespace) -> int:
    from skin_tf.serving.export import export_run, load_served_metadata

    out = export_run(args.run_dir, args.out, overwrite=args.overwrite)
    threshold = load_served_metadata(out).get("mel_threshold", {}).get("value")
    print(f"exported {args.run_dir} -> {out} (melanoma threshold: {threshold})")
    return 0


def add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="SavedModel (serve + explain endpoints) with metadata.json")
    p.add_argument("run_dir", type=Path, help="run directory with best.keras")
    p.add_argument("--out", type=Path, required=True, help="folder for the SavedModel")
    p.add_argument("--overwrite", action="store_true", help="replace an exported model")
    p.set_defaults(func=_export)


def _predict(args: argparse.Namespace) -> int:
    """Exit code 1 when any file failed (the others are still predicted), else 0."""
    from skin_tf.serving.export import load_served
    from skin_tf.serving.predict import format_predictions, predict_files

    served = load_served(args.model)
    results = predict_files(served, args.images, top_k=args.top_k)
    print(format_predictions(results, json=args.json, threshold=served.threshold))
    if not args.json:
        print(f"({served.disclaimer})", file=sys.stderr)
    return 1 if any(r["error"] is not None for r in results) else 0


def add_predict(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="top-k classes and the melanoma flag for image files")
    p.add_argument("model", type=Path, help="exported SavedModel folder (skin-tf export)")
    p.add_argument("images", nargs="+", help="image files and/or folders of images")
    p.add_argument("--json", action="store_true", help="one JSON object per image")
    p.add_argument("--top-k", type=int, default=3, help="classes to list per image")
    p.set_defaults(func=_predict)


def _app(args: argparse.Namespace) -> int:
    from skin_tf.serving.launch import app_command

    return app_command(args.model, args.models_dir, args.port, args.address)


def add_app(sub: argparse._SubParsersAction) -> None:
    from skin_tf.serving.launch import add_app_arguments

    p = sub.add_parser(
        "app", help="Streamlit page: upload images, see top-k, Grad-CAM and the melanoma flag"
    )
    add_app_arguments(p)
    p.set_defaults(func=_app)
