"""Command line: ``imgclf data`` prepares a data set, ``imgclf db upgrade`` migrates the
database, ``imgclf worker`` runs retrain jobs. Registry and pipeline have their own CLIs."""

from __future__ import annotations

import argparse
import sys

from imgclf.config import ConfigError, get_settings
from imgclf.data import folders


def _data(args) -> int:
    settings = get_settings()
    if args.source == "digits":
        written = folders.prepare_digits(settings.data_dir, seed=settings.seed)
    else:
        written = folders.prepare_public_dataset(args.source, settings.data_dir, args.limit)
    state = "written" if written else "already there: nothing written"
    if not written and args.source != "digits":
        state += " (for another data set, set DATA_DIR to an empty folder)"
    train = folders.discover(settings.train_dir)
    print(
        f"data {state}: {settings.data_dir} ({len(train.paths)} training images, "
        f"{len(train.class_names)} classes)"
    )
    return 0


def _db(args) -> int:
    from imgclf.store import migrations
    from imgclf.store.database import describe_url

    url = get_settings().database_url
    before, after = migrations.upgrade(url)
    change = f"{before or 'empty'} -> {after}" if before != after else f"already at {after}"
    print(f"database {describe_url(url)}: {change}")
    return 0


def _worker(args) -> int:
    from imgclf.loop import worker

    return worker.main(once=args.once)


def main(argv: list[str] | None = None) -> int:
    """Entry point; prints errors without a traceback and returns 1 on failure."""
    parser = argparse.ArgumentParser(prog="imgclf")
    commands = parser.add_subparsers(dest="command", required=True)
    prepare = commands.add_parser("data", help="write a data set into DATA_DIR as class folders")
    prepare.add_argument(
        "--source",
        default="digits",
        choices=["digits", "mnist", "fashion_mnist", "cifar10"],
        help="digits is bundled; fashion_mnist is read from Debian's dataset-fashion-mnist "
        "when installed (offline); otherwise these download (online)",
    )
    prepare.add_argument("--limit", type=int, help="keep the first this many images of each split")
    prepare.set_defaults(run=_data)
    database = commands.add_parser("db", help="the database schema")
    database.add_argument("action", choices=["upgrade"], help="migrate to the newest schema")
    database.set_defaults(run=_db)
    worker = commands.add_parser("worker", help="claim and run queued retrain jobs")
    worker.add_argument("--once", action="store_true", help="exit after one job")
    worker.set_defaults(run=_worker)
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except (folders.DataError, ConfigError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
