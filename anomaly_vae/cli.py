"""The command line: parse, call the core, print. No logic of its own."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from . import __version__


def _demo(args: argparse.Namespace) -> int:
    from .demo import format_result, run_demo

    result = run_demo(alpha=args.alpha, seed=args.seed, verbose=0 if args.quiet else 1,
                      model_dir=Path(args.save) if args.save else None)
    print(format_result(result))
    if args.save:
        print(f"  model saved to       {args.save}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="anomaly-vae", description="Anomaly detection with a calibrated VAE.")
    parser.add_argument("--version", action="version", version=f"anomaly-vae {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="train, calibrate and evaluate on the cardio table that ships with the repo",
                          description="Train on the normal rows of data/cardio.csv, calibrate a threshold for "
                                      "--alpha on held-out normal rows, and report AUROC and the realized "
                                      "false-alarm rate on unseen rows.")
    demo.add_argument("--alpha", type=float, default=0.01, help="target false-alarm rate (default 0.01)")
    demo.add_argument("--seed", type=int, default=0, help="random seed for the split and the fit (default 0)")
    demo.add_argument("--save", metavar="MODEL_DIR", help="also save the trained model to this directory")
    demo.add_argument("--quiet", action="store_true", help="no progress bar")
    demo.set_defaults(func=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (ValueError, FileNotFoundError) as err:
        print(f"anomaly-vae: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
