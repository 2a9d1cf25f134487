"""Command line of the worker (`python read_queue.py ...`)."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

from chalicelib.queues import open_queue
from chalicelib.settings import Settings, SettingsError, load_settings

from .schema import SchemaTooNew
from .store import DatabaseFault, Store
from .worker import Limits, Worker

EXIT_USAGE = 2


def _settings(args: argparse.Namespace) -> Settings:
    overrides = {}
    if getattr(args, "queue_url", None):
        overrides["QUEUE_URL"] = args.queue_url
    if getattr(args, "db", None):
        overrides["DB_PATH"] = args.db
    settings = load_settings()
    if overrides:
        import os

        settings = load_settings({**os.environ, **overrides}, dotenv_path=None)
    return settings


def cmd_run(args: argparse.Namespace) -> int:
    settings = _settings(args)
    store = Store.open(settings.db_path)
    queue = open_queue(settings)
    limits = Limits(
        wait_seconds=args.wait_seconds,
        visibility_timeout=args.visibility_timeout,
        max_decoded_bytes=settings.max_decoded_bytes,
    )
    worker = Worker(queue, store, limits, out=None if args.quiet else sys.stderr)
    worker.install_signal_handlers()
    logging.getLogger("tune_firehose").info("worker started: queue=%r db=%s", queue, settings.db_path)
    try:
        return worker.run(until_empty=args.until_empty)
    finally:
        store.close()
        queue.close()


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--db", metavar="PATH", help="SQLite database file (overrides DB_PATH)")
    p.add_argument("--queue-url", metavar="URL", help="queue to read: an SQS URL or local:PATH (overrides QUEUE_URL)")


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, Callable[[argparse.Namespace], int]]]:
    parser = argparse.ArgumentParser(
        prog="read_queue.py",
        description="Land TUNE Firehose events from the queue in SQLite. Without a command, runs the worker.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    handlers: dict[str, Callable[[argparse.Namespace], int]] = {}

    run = sub.add_parser("run", help="run the worker (the default command)")
    _add_common(run)
    run.add_argument("--until-empty", action="store_true", help="drain the queue, then exit 0")
    run.add_argument("--wait-seconds", type=float, default=20, help="long-poll wait per receive (default 20)")
    run.add_argument(
        "--visibility-timeout",
        type=int,
        default=60,
        help="seconds a received message stays hidden; a heartbeat extends it while writing (default 60)",
    )
    run.add_argument("--quiet", action="store_true", help="no progress line")
    handlers["run"] = cmd_run
    return parser, handlers


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("botocore").setLevel(logging.WARNING)
    args_list = list(sys.argv[1:] if argv is None else argv)
    parser, handlers = build_parser()
    if not args_list or (args_list[0] not in handlers and args_list[0] not in ("-h", "--help")):
        args_list.insert(0, "run")
    args = parser.parse_args(args_list)
    try:
        return handlers[args.command](args)
    except SettingsError as exc:
        print(f"read_queue.py: bad setting: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (SchemaTooNew, DatabaseFault) as exc:
        print(f"read_queue.py: {exc}", file=sys.stderr)
        return 3
