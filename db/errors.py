"""Every exception the stores raise on purpose, in one module (the Lambda's are in chalicelib/errors.py).

The command line chooses its exit code by class: a `DatabaseFault` (or a subclass) is exit 3,
`SchemaTooNew` is exit 3 with its own advice, `StoppedWhileWaiting` is a clean stop. The
messages are for people: each names the database (a URL always with its password removed).
"""

from __future__ import annotations


class DatabaseFault(RuntimeError):
    """The database cannot be written (disk full, read-only, corrupt): stop, delete nothing."""


class NetworkFileSystem(DatabaseFault):
    """The database file would live on a network file system."""


class ServerTooOld(DatabaseFault):
    """The server predates a feature the schema needs."""


class DatabaseUrlError(DatabaseFault):
    """DATABASE_URL names a database that refuses these credentials or does not exist."""


class SchemaTooNew(RuntimeError):
    """The database was migrated by newer code than this; writing to it could break it."""


class StoppedWhileWaiting(Exception):
    """A stop (SIGTERM/SIGINT) came while the worker waited for an unreachable server; nothing was read."""
