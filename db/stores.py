"""Which store the settings select, in one place: PostgreSQL when DATABASE_URL is set, else SQLite at DB_PATH.

`--db postgresql://...` reaches here as DATABASE_URL (commands/cli.py `settings_for`). Both stores
have the verbs the worker uses (`write`, `counts`, `close`); `WritableStore` names them, so code
that only writes batches can be typed against either. PostgreSQL's driver is imported only when
DATABASE_URL is set, so a worker on the SQLite default never loads it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from chalicelib.settings import Settings, SettingsError
from db import netfs
from db.batch import Incoming, Rows
from db.errors import DatabaseFault, DatabaseUrlError, StoppedWhileWaiting
from db.postgres.url import redact
from db.store import Store, WriteStats

if TYPE_CHECKING:
    from db.postgres.store import PostgresStore


class WritableStore(Protocol):
    """What the worker needs of a store: one transaction per batch, keys making a rewrite harmless."""

    def write(self, batch: Rows | Incoming, give_up: Callable[[], bool] = ...) -> WriteStats: ...

    def counts(self) -> dict[str, int]: ...

    def newest_event_time(self, now: float) -> int | None: ...

    def close(self) -> None: ...


def uses_postgres(settings: Settings) -> bool:
    return settings.database_url is not None


def describe(settings: Settings) -> str:
    """Where the store writes, fit to print: the URL without its password, or the SQLite path."""
    return redact(settings.database_url) if settings.database_url is not None else settings.db_path


def open_store(
    settings: Settings,
    give_up: Callable[[], bool] = lambda: False,
    allow_network_fs: bool = False,
    wait_for_server: bool = True,
) -> Store | PostgresStore:
    """Open (migrating) the selected store. PostgreSQL unreachable: retried with a growing pause
    until `give_up()` says stop (then `StoppedWhileWaiting`), or a `DatabaseFault` at once when
    `wait_for_server` is False (a one-shot command, not a daemon). A refused DATABASE_URL (password,
    user, database) is a `SettingsError` naming it (exit 2); a database that cannot be written
    is a `DatabaseFault` (exit 3). The network file system check applies to SQLite files only:
    a server's storage is the server's business."""
    if settings.database_url is None:
        netfs.check_local(settings.db_path, allow_network_fs)
        return Store.open(settings.db_path, give_up=give_up)
    from db.postgres.store import PostgresStore

    try:
        return PostgresStore.open(settings.database_url, give_up=give_up if wait_for_server else lambda: True)
    except DatabaseUrlError as exc:
        raise SettingsError(str(exc)) from None
    except DatabaseFault:
        if wait_for_server and give_up():
            raise StoppedWhileWaiting(f"stopped while waiting for PostgreSQL at {describe(settings)}") from None
        raise


__all__ = ["WritableStore", "describe", "open_store", "uses_postgres"]
