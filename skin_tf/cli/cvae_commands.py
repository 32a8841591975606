"""`skin-tf` subcommands of the conditional VAE: train-vae, synth and cvae-report. skin_tf.cli.main
registers them; each is a thin wrapper over one library call, with its heavy imports inside.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def _train_vae(args: argparse.Namespace) -> int:
    from skin_tf.cvae.config import load_vae_config
    from skin_tf.cvae.model import train_vae

    config = None if args.resume else load_vae_config(args.config, args.profile, args.set)
    run_dir = train_vae(
        config, data_root=args.data, runs_dir=args.runs_dir, run_name=args.run_name,
        resume=args.resume,
    )  # fmt: skip
    print(run_dir)
    return 0


def add_train_vae(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train-vae", help="train the conditional VAE on the training split")
    p.add_argument("--config", default="vae_quick", help="shipped VAE config name or a JSON path")
    p.add_argument("--profile", choices=("full", "smoke"), default="full")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override")
    p.add_argument(
        "--data", type=Path, help="HAM10000 folder (default: $SKIN_TF_DATA or data/ham10000)"
    )
    p.add_argument("--runs-dir", type=Path, default=Path("runs"))
    p.add_argument("--run-name", help="run name (default: the config name)")
    p.add_argument("--resume", type=Path, metavar="RUN_DIR", help="continue an interrupted run")
    p.set_defaults(func=_train_vae)


def _synth(args: argparse.Namespace) -> int:
    from skin_tf.cvae.synth import synth_to_folder
    from skin_tf.data.ham10000 import CLASSES

    classes = args.classes or list(CLASSES)
    manifest = synth_to_folder(
        args.run_dir, args.per_class, args.out, classes=classes, seed=args.seed,
        overwrite=args.overwrite,
    )  # fmt: skip
    print(f"wrote {len(manifest)} images to {args.out} (+ manifest.csv)")
    return 0


def add_synth(sub: argparse._SubParsersAction) -> None:
    from skin_tf.data.ham10000 import CLASSES

    p = sub.add_parser("synth", help="sample synthetic images per class from a trained cVAE run")
    p.add_argument("run_dir", type=Path, help="a run directory made by `skin-tf train-vae`")
    p.add_argument("--per-class", type=int, required=True, help="images per class")
    p.add_argument("--out", type=Path, default=Path("artifacts/synth"))
    p.add_argument("--classes", nargs="+", choices=CLASSES, help="default: all seven")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="replace an earlier synth set in --out")
    p.set_defaults(func=_synth)


def _cvae_report(args: argparse.Namespace) -> int:
    from skin_tf.cvae.quality import cvae_report

    path = cvae_report(
        args.vae_run, results_dir=args.results, classifier=args.classifier,
        synth_dir=args.synth_dir, baseline_run=args.baseline, synth_run=args.with_synth,
        data_root=args.data,
    )  # fmt: skip
    print(path)
    return 0


def add_cvae_report(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("cvae-report", help="write results/summary_cvae.md (does synthetic help?)")
    p.add_argument("vae_run", type=Path, help="a run directory made by `skin-tf train-vae`")
    p.add_argument("--classifier", type=Path, help="classifier run dir for recognisability")
    p.add_argument("--synth-dir", type=Path, help="folder written by `skin-tf synth`")
    p.add_argument("--baseline", type=Path, help="baseline classifier run dir")
    p.add_argument("--with-synth", type=Path, help="baseline_with_synth classifier run dir")
    p.add_argument("--results", type=Path, default=Path("results"))
    p.add_argument("--data", type=Path, help="HAM10000 folder")
    p.set_defaults(func=_cvae_report)
