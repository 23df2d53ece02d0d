"""Command line: ``imgclf data`` prepares a data set, ``imgclf run NOTEBOOK [-p NAME VALUE]``
runs a pipeline notebook and writes its report (``train`` and ``retrain`` as registering runs,
``imgclf.loop.registering``), ``imgclf reports`` rewrites ``reports/index.html``, ``imgclf db
upgrade`` migrates the database, ``imgclf worker`` runs retrain jobs, ``imgclf models
list|show [VERSION]|promote VERSION|rollback`` reads and changes the model registry (promote
and rollback through the database: ``imgclf.store.pointer``)."""

from __future__ import annotations

import argparse
import ast
import json
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


def _describe(models_dir, version: str, current: str | None) -> str:
    from imgclf.model import registry

    info = registry.metadata(models_dir, version)
    test = info.get("test_metrics", {})
    mark = "*" if version == current else " "
    return (
        f"{mark} {version}  {info.get('created_at', '')[:19]}  "
        f"acc={test.get('accuracy', float('nan')):.4f}  "
        f"f1={test.get('f1_macro', float('nan')):.4f}"
        f"  classes={len(info.get('class_names', []))}  parent={info.get('parent_version')}"
    )


def _models(args) -> int:
    import json

    from imgclf.model import registry
    from imgclf.store import Store

    models_dir = get_settings().models_dir
    current = registry.current_version(models_dir)
    if args.action == "list":
        for version in registry.list_versions(models_dir):
            print(_describe(models_dir, version, current))
    elif args.action == "show":
        version = args.version or current
        if version is None:
            raise registry.RegistryError("no current model; train one with `make train`")
        print(json.dumps(registry.metadata(models_dir, version), indent=2))
    else:
        store = Store(get_settings().database_url)
        if args.action == "promote":
            if not args.version:
                raise registry.RegistryError("promote needs a VERSION (imgclf models list)")
            pointer = store.promote_version(models_dir, args.version)
        else:
            pointer = store.rollback_version(models_dir)
        print(f"current -> {pointer['version']}")
    return 0


def _literal(text: str):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _run(args) -> int:
    from imgclf import pipeline, reports
    from imgclf.loop import registering

    settings = get_settings()
    parameters = {name: _literal(value) for name, value in args.parameter}
    options = {"show_code": args.show_code, "log_output": True}
    print(f"running {pipeline.NOTEBOOKS[args.notebook]} ...", flush=True)
    try:
        if args.notebook in registering.REGISTERING:
            result = registering.run(args.notebook, parameters, settings, **options).run
        else:
            result = pipeline.run_notebook(args.notebook, parameters, settings, **options)
    except pipeline.PipelineError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    shown = {k: v for k, v in result.summary.items() if k in reports.INDEX_FIELDS}
    print(f"{args.notebook}: {json.dumps(shown)}\nreport: {result.report}")
    return 0


def _reports(args) -> int:
    from imgclf import pipeline

    print(pipeline.update_index(get_settings()))
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
    run = commands.add_parser("run", help="run a pipeline notebook and write its report")
    run.add_argument("notebook", choices=["eda", "train", "evaluate", "retrain"])
    run.add_argument(
        "-p",
        "--parameter",
        nargs=2,
        action="append",
        default=[],
        metavar=("NAME", "VALUE"),
        help="a notebook parameter (a Python literal, else text)",
    )
    run.add_argument("--show-code", action="store_true", help="keep code cells in the HTML")
    run.set_defaults(run=_run)
    commands.add_parser("reports", help="rewrite reports/index.html").set_defaults(run=_reports)
    database = commands.add_parser("db", help="the database schema")
    database.add_argument("action", choices=["upgrade"], help="migrate to the newest schema")
    database.set_defaults(run=_db)
    worker = commands.add_parser("worker", help="claim and run queued retrain jobs")
    worker.add_argument("--once", action="store_true", help="exit after one job")
    worker.set_defaults(run=_worker)
    models = commands.add_parser("models", help="list, show, promote or roll back models")
    models.add_argument("action", choices=["list", "show", "promote", "rollback"])
    models.add_argument("version", nargs="?", help="show: default the current; promote: which")
    models.set_defaults(run=_models)
    args = parser.parse_args(argv)
    from imgclf.model.registry import RegistryError

    try:
        return args.run(args)
    except (folders.DataError, ConfigError, RegistryError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
