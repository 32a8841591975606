"""The `skin-tf` command line. Each subcommand is a thin wrapper over one library call.

Heavy imports (TensorFlow) happen inside the commands so `skin-tf --help` stays instant.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from skin_tf.data import DataError

Command = Callable[[argparse.Namespace], int]


def _split(args: argparse.Namespace) -> int:
    from skin_tf.data import (
        read_metadata,
        resolve_data_root,
        split_by_lesion,
        split_table,
        write_splits,
    )

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
    from skin_tf.download import download_command

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


def _calibrate(args: argparse.Namespace) -> int:
    from skin_tf.calibration import calibrate_run

    result = calibrate_run(args.run_dir, results_dir=args.results)
    print(
        f"temperature {result['temperature']:.3f} (fitted on val); test NLL "
        f"{result['test']['nll_before']:.4f} -> {result['test']['nll_after']:.4f}, ECE "
        f"{result['test']['ece_before']:.4f} -> {result['test']['ece_after']:.4f}"
    )
    return 0


def _add_calibrate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "calibrate", help="fit temperature scaling on a run's validation predictions"
    )
    p.add_argument("run_dir", type=Path, help="a run directory made by `skin-tf train`")
    p.add_argument("--results", type=Path, default=Path("results"), help="where figures go")
    p.set_defaults(func=_calibrate)


def _threshold(args: argparse.Namespace) -> int:
    from skin_tf.threshold import threshold_run

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


def _add_threshold(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "threshold", help="choose the melanoma operating point on val, report it on test"
    )
    p.add_argument("run_dir", type=Path, help="a run directory made by `skin-tf train`")
    p.add_argument("--min-sensitivity", type=float, default=0.85, help="target val sensitivity")
    p.add_argument("--results", type=Path, default=Path("results"), help="where reports go")
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples (over lesions)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_threshold)


def _tfds_prepare(args: argparse.Namespace) -> int:
    from skin_tf.data import resolve_data_root
    from skin_tf.tfds_ham10000 import prepare_ham10000

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


REGISTRY: list[Callable[[argparse._SubParsersAction], None]] = [
    _add_split,
    _add_download,
    _add_calibrate,
    _add_threshold,
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="skin-tf",
        description="HAM10000 skin-lesion classification toolkit (research/teaching only; "
        "not a medical device).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in REGISTRY:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (DataError, FileExistsError, FileNotFoundError, ValueError) as err:
        print(f"skin-tf {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
