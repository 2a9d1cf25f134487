"""The command line (`python read_queue.py ...`): a click group whose default command runs the worker.

Each command's work lives in a module of its own (commands/run.py, status.py, merge.py, ...); this
module only declares the options, validates them, loads the settings and maps failures to exit codes:
0 done, 1 done with problems (status, redrive), 2 bad usage or setting, 3 the database cannot be used.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import click
import click_default_group

from chalicelib.settings import Settings, SettingsError, load_settings
from db.errors import DatabaseFault, SchemaTooNew
from worker import logs
from worker.decoders import DECODE_CHOICES

from . import backup, merge, redrive, reprocess, setup_queue, status
from .run import RunOptions, run_worker

EXIT_USAGE, EXIT_DATABASE = 2, 3
PROG = "read_queue.py"

F = TypeVar("F", bound=Callable[..., Any])

# click-default-group ships no type information. Its DefaultGroup is a click.Group (one that runs
# a default command), and typing it as that keeps every `@cli.command` decorator typed.
DefaultGroup: type[click.Group] = click_default_group.DefaultGroup


def settings_for(db: str | None = None, queue_url: str | None = None) -> Settings:
    """The settings from the environment and .env, with the command line's --db / --queue-url winning."""
    overrides = {}
    if queue_url:
        overrides["QUEUE_URL"] = queue_url
    if db:  # postgresql://... selects PostgreSQL (db/stores.py); a path, SQLite there even if DATABASE_URL is set
        is_url = db.lower().startswith(("postgresql://", "postgres://"))
        overrides.update({"DATABASE_URL": db} if is_url else {"DB_PATH": db, "DATABASE_URL": ""})
    return load_settings(overrides=overrides)


def verbatim(text: str) -> str:
    """Help text click prints as written: it rewraps every paragraph except one that starts with \\b."""
    return "\n\n".join("\b\n" + paragraph for paragraph in text.split("\n\n"))


# -- shared options ---------------------------------------------------------------------------


def db_option(help: str = "SQLite database file (overrides DB_PATH)") -> Callable[[F], F]:
    return click.option("--db", metavar="PATH", help=help)


def queue_url_option(f: F) -> F:
    return click.option(
        "--queue-url", metavar="URL", help="queue to read: an SQS URL or local:PATH (overrides QUEUE_URL)"
    )(f)


def _configure_logs(_ctx: click.Context, _param: click.Parameter, value: str) -> str:
    logs.configure(value)
    return value


def log_format_option(f: F) -> F:
    return click.option(
        "--log-format",
        type=click.Choice(logs.FORMATS),
        default="text",
        show_default=True,
        help="text, or json: one JSON object per line",
        callback=_configure_logs,
        is_eager=True,
    )(f)


def allow_network_fs_option(help: str) -> Callable[[F], F]:
    return click.option("--allow-network-fs", is_flag=True, help=help)


# -- the group --------------------------------------------------------------------------------


@click.group(
    cls=DefaultGroup,
    default="run",
    default_if_no_args=True,
    # Options before the command name belong to the default command: `read_queue.py --until-empty`.
    context_settings={"ignore_unknown_options": True, "help_option_names": ["-h", "--help"]},
)
def cli() -> None:
    """Land TUNE Firehose events from the queue in SQLite. Without a command, runs the worker."""


@cli.command(name="run")
@db_option()
@queue_url_option
@click.option("--until-empty", is_flag=True, help="drain the queue, then exit 0")
@click.option(
    "--wait-seconds", type=click.FloatRange(0, 20), default=20, show_default=True, help="long-poll wait per receive"
)
@click.option(
    "--visibility-timeout",
    type=click.IntRange(1, 43200),
    default=60,
    show_default=True,
    help="seconds a received message stays hidden; a heartbeat extends it while writing",
)
@click.option(
    "--decode",
    type=click.Choice(DECODE_CHOICES),
    default="auto",
    show_default=True,
    help="decode the next batch in a helper process while this one is written (process), or in the worker "
    "itself (inline); auto: process when this process may run on more than one CPU; with as many workers "
    "on the host as CPUs, inline is faster",
)
@click.option("--quiet", is_flag=True, help="no progress line")
@log_format_option
@click.option("--metrics-port", type=click.IntRange(0, 65535), metavar="N", help="serve Prometheus metrics on port N")
@click.option(
    "--metrics-addr", default="127.0.0.1", show_default=True, metavar="ADDR", help="address for --metrics-port"
)
@allow_network_fs_option("open the database even on NFS/CIFS/SMB (unsafe if another host ever opens the file)")
def run_command(db: str | None, queue_url: str | None, **options: Any) -> int:
    """Run the worker until SIGINT/SIGTERM (the default command)."""
    return run_worker(RunOptions(**options), settings_for(db, queue_url))


@cli.command(name="setup", help=setup_queue.HELP, epilog=setup_queue.DESCRIPTION)
@click.argument("name")
@click.option("--region", help="AWS region (default: AWS_REGION, then your AWS config)")
@click.option(
    "--max-receive-count",
    type=click.IntRange(1, 1000),
    default=setup_queue.DEFAULT_MAX_RECEIVE_COUNT,
    show_default=True,
    help="receives before a message moves to the DLQ",
)
@click.option(
    "--visibility-timeout",
    type=click.IntRange(0, 43200),
    default=setup_queue.DEFAULT_VISIBILITY_TIMEOUT,
    show_default=True,
    help="queue default visibility timeout in seconds; the worker's heartbeat extends it while a batch is written",
)
@click.option(
    "--retention-days", type=click.IntRange(1, 14), default=14, show_default=True, help="days SQS keeps unread messages"
)
@click.option(
    "--sender-arn", default=setup_queue.TUNE_SENDER_ARN, show_default=True, help="the one principal allowed to send"
)
def setup_command(**options: Any) -> int:
    return setup_queue.cmd_setup(**options)


@cli.command(name=status.NAME, help=status.HELP, epilog=verbatim(status.EPILOG))
@db_option("SQLite file or postgresql:// URL to read (default: DATABASE_URL, else DB_PATH)")
@queue_url_option
@click.option(
    "--rejects",
    type=click.IntRange(0),
    default=5,
    show_default=True,
    metavar="N",
    help="how many recent reject reasons",
)
@click.option("--json", "json_", is_flag=True, help="print one JSON document instead of text")
@log_format_option
def status_command(db: str | None, queue_url: str | None, rejects: int, json_: bool, log_format: str) -> int:
    return status.run(settings_for(db, queue_url), rejects=rejects, as_json=json_)


@cli.command(name=merge.NAME, help=merge.HELP, epilog=verbatim(merge.EPILOG))
@click.argument("target")
@click.argument("sources", nargs=-1, required=True)
@click.option(
    "--overlap",
    type=click.IntRange(0),
    default=merge.DEFAULT_OVERLAP_SECONDS,
    show_default=True,
    metavar="SECONDS",
    help="re-read this many seconds before each high-water mark",
)
@click.option("--chunk", type=click.IntRange(1), default=merge.DEFAULT_CHUNK_ROWS, hidden=True)
@allow_network_fs_option("allow files on NFS/CIFS/SMB (not recommended)")
@log_format_option
def merge_command(
    target: str, sources: tuple[str, ...], overlap: int, chunk: int, allow_network_fs: bool, log_format: str
) -> int:
    return merge.run(target, sources, overlap=overlap, chunk=chunk, allow_network_fs=allow_network_fs)


@cli.command(name=backup.NAME, help=backup.HELP, epilog=verbatim(backup.EPILOG))
@click.argument("dest")
@db_option("SQLite database to copy (default: DB_PATH; on PostgreSQL use pg_dump)")
@click.option("--force", is_flag=True, help="replace DEST if it exists")
@click.option("--no-verify", is_flag=True, help="skip the quick_check of the copy")
@log_format_option
def backup_command(dest: str, db: str | None, force: bool, no_verify: bool, log_format: str) -> int:
    return backup.run_selected(db, settings_for, dest, force=force, verify=not no_verify)


@cli.command(name=redrive.NAME, help=redrive.HELP, epilog=verbatim(redrive.EPILOG))
@db_option()
@queue_url_option
@click.option("--max", "max_", type=click.IntRange(1), metavar="N", help="move at most N messages (default: all)")
@log_format_option
def redrive_command(db: str | None, queue_url: str | None, max_: int | None, log_format: str) -> int:
    return redrive.run(settings_for(db, queue_url), limit=max_)


@cli.command(name=reprocess.NAME, help=reprocess.HELP, epilog=verbatim(reprocess.EPILOG))
@db_option("SQLite file or postgresql:// URL whose rejects to retry (default: DATABASE_URL, else DB_PATH)")
@click.option("--dry-run", is_flag=True, help="count what would succeed; write nothing")
@allow_network_fs_option("allow a database on NFS/CIFS/SMB (not recommended)")
@log_format_option
def reprocess_command(db: str | None, dry_run: bool, allow_network_fs: bool, log_format: str) -> int:
    return reprocess.run(settings_for(db), dry_run=dry_run, allow_network_fs=allow_network_fs)


@cli.command(name="prune", help="drop the months of events older than a date (PostgreSQL)")
@click.option(
    "--before", required=True, type=click.DateTime(formats=["%Y-%m-%d"]), metavar="YYYY-MM-DD", help="first day kept"
)
@click.option("--dry-run", is_flag=True, help="list the months that would be dropped; drop nothing")
@db_option("PostgreSQL URL (overrides DATABASE_URL)")
@log_format_option
def prune_command(before: Any, dry_run: bool, db: str | None, log_format: str) -> int:
    from . import prune  # commands/prune.py: its help, epilog and the work

    return prune.run(settings_for(db), before.date(), dry_run=dry_run)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code (the caller passes it to sys.exit)."""
    logs.configure("text")
    try:
        result = cli.main(args=list(sys.argv[1:] if argv is None else argv), prog_name=PROG, standalone_mode=False)
    except click.exceptions.Exit as exc:  # --help
        return exc.exit_code
    except click.ClickException as exc:  # bad usage: the message names the option
        exc.show()
        return EXIT_USAGE
    except click.Abort:
        return 1
    except SettingsError as exc:
        print(f"{PROG}: bad setting: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (SchemaTooNew, DatabaseFault) as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return EXIT_DATABASE
    return int(result or 0)
