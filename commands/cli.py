"""Command line of the worker (`python read_queue.py ...`)."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Callable, Sequence
from typing import Protocol

from chalicelib.queues import open_queue
from chalicelib.settings import Settings, SettingsError, load_settings
from commands import backup, merge, redrive, reprocess, setup_queue, status
from db import netfs
from db.schema import SchemaTooNew
from db.store import DatabaseFault, Store
from worker import logs
from worker.decoders import DECODE_CHOICES, make_decoder
from worker.loop import Limits, Observer, Worker

EXIT_USAGE = 2


def _settings(args: argparse.Namespace) -> Settings:
    overrides = {}
    if getattr(args, "queue_url", None):
        overrides["QUEUE_URL"] = args.queue_url
    if getattr(args, "db", None):
        overrides["DB_PATH"] = args.db
    return load_settings(overrides=overrides)


def cmd_run(args: argparse.Namespace) -> int:
    # A stop asked for while starting up is remembered, so it still ends in a clean exit 0.
    early_stops: list[int] = []
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda number, _frame: early_stops.append(number))
    settings = _settings(args)
    netfs.check_local(settings.db_path, args.allow_network_fs)
    observers: list[Observer] = []
    if args.log_format == "json":
        observers.append(logs.BatchLog())
    metrics = None
    if args.metrics_port is not None:
        from worker.metrics import Metrics  # prometheus_client is needed only with --metrics-port

        metrics = Metrics()
        try:
            metrics.serve(args.metrics_port, args.metrics_addr)
        except OSError as exc:
            print(
                f"read_queue.py: cannot serve metrics on {args.metrics_addr}:{args.metrics_port}: {exc}",
                file=sys.stderr,
            )
            return EXIT_USAGE
        observers.append(metrics)
    store = Store.open(settings.db_path)
    queue = open_queue(settings)
    if metrics is not None:
        metrics.seed(store.db)
    limits = Limits(
        wait_seconds=args.wait_seconds,
        visibility_timeout=args.visibility_timeout,
        max_decoded_bytes=settings.max_decoded_bytes,
    )
    # In JSON mode stderr carries only JSON lines; progress travels in the batch records.
    quiet = args.quiet or args.log_format == "json"
    decoder = make_decoder(args.decode)
    worker = Worker(queue, store, limits, out=None if quiet else sys.stderr, observers=observers, decoder=decoder)
    worker.install_signal_handlers()
    worker.stopping = bool(early_stops)
    logging.getLogger("tune_firehose").info(
        "worker started: queue=%r db=%s",
        queue,
        settings.db_path,
        extra={"data": {"queue": repr(queue), "db": settings.db_path}},
    )
    try:
        return worker.run(until_empty=args.until_empty)
    finally:
        decoder.close()
        if metrics is not None:
            metrics.close()
        store.close()
        queue.close()


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--db", metavar="PATH", help="SQLite database file (overrides DB_PATH)")
    p.add_argument("--queue-url", metavar="URL", help="queue to read: an SQS URL or local:PATH (overrides QUEUE_URL)")


def _add_log_format(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--log-format", choices=logs.FORMATS, default="text", help="text (default) or json: one JSON object per line"
    )


class _Command(Protocol):
    """A day-2 command: one module each (db/status.py, db/merge.py, ...)."""

    NAME: str
    HELP: str
    EPILOG: str

    def add_arguments(
        self, p: argparse.ArgumentParser, add_common: Callable[[argparse.ArgumentParser], None]
    ) -> None: ...

    def run(self, args: argparse.Namespace, settings: Settings) -> int: ...


OPS_COMMANDS: tuple[_Command, ...] = (status, merge, backup, redrive, reprocess)


def _ops_handler(command: _Command) -> Callable[[argparse.Namespace], int]:
    def handler(args: argparse.Namespace) -> int:
        return command.run(args, _settings(args))

    return handler


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
    run.add_argument(
        "--decode",
        choices=DECODE_CHOICES,
        default="auto",
        help="decode the next batch in a helper process while this one is written (process), or in the "
        "worker itself (inline); auto (default): process when the machine has more than one CPU",
    )
    run.add_argument("--quiet", action="store_true", help="no progress line")
    _add_log_format(run)
    run.add_argument("--metrics-port", type=int, metavar="N", help="serve Prometheus metrics on port N (/metrics)")
    run.add_argument(
        "--metrics-addr", default="127.0.0.1", metavar="ADDR", help="address for --metrics-port (default 127.0.0.1)"
    )
    run.add_argument(
        "--allow-network-fs",
        action="store_true",
        help="open the database even on NFS/CIFS/SMB (unsafe if another host ever opens the file)",
    )
    handlers["run"] = cmd_run

    setup_queue.add_parser(sub)
    handlers["setup"] = setup_queue.cmd_setup

    for command in OPS_COMMANDS:
        p = sub.add_parser(
            command.NAME,
            help=command.HELP,
            description=command.__doc__,
            epilog=command.EPILOG,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        command.add_arguments(p, _add_common)
        _add_log_format(p)
        handlers[command.NAME] = _ops_handler(command)
    return parser, handlers


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("botocore").setLevel(logging.WARNING)
    args_list = list(sys.argv[1:] if argv is None else argv)
    parser, handlers = build_parser()
    if not args_list or (args_list[0] not in handlers and args_list[0] not in ("-h", "--help")):
        args_list.insert(0, "run")
    args = parser.parse_args(args_list)
    logs.configure(getattr(args, "log_format", "text"))
    try:
        return handlers[args.command](args)
    except SettingsError as exc:
        print(f"read_queue.py: bad setting: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (SchemaTooNew, DatabaseFault) as exc:
        print(f"read_queue.py: {exc}", file=sys.stderr)
        return 3
