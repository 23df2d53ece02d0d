"""Command line: ``imgclf data`` prepares a data set; registry and pipeline have their own CLIs."""

from __future__ import annotations

import argparse
import sys

from imgclf import data
from imgclf.config import ConfigError, get_settings


def main(argv: list[str] | None = None) -> int:
    """Entry point; prints errors without a traceback and returns 1 on failure."""
    parser = argparse.ArgumentParser(prog="imgclf")
    commands = parser.add_subparsers(dest="command", required=True)
    prepare = commands.add_parser("data", help="write a data set into DATA_DIR as class folders")
    prepare.add_argument(
        "--source",
        default="digits",
        choices=["digits", "mnist", "fashion_mnist", "cifar10"],
        help="digits is bundled (offline); the others download (online)",
    )
    prepare.add_argument("--limit", type=int, help="at most this many images per split")
    args = parser.parse_args(argv)
    try:
        settings = get_settings()
        if args.source == "digits":
            written = data.prepare_digits(settings.data_dir, seed=settings.seed)
            state = "written" if written else "already there"
        else:
            data.prepare_keras_dataset(args.source, settings.data_dir, args.limit)
            state = "written"
    except (data.DataError, ConfigError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    train = data.discover(settings.train_dir)
    print(
        f"data {state}: {settings.data_dir} ({len(train.paths)} training images, "
        f"{len(train.class_names)} classes)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
