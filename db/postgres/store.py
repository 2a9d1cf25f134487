"""The PostgreSQL store: the verbs of db/store.py's `Store` (open, write, counts, close) for many
workers, on many hosts, writing one database.

Each batch is one transaction. Its rows are copied (COPY, PostgreSQL's fastest way in) into
temporary staging tables as the parts of the batch arrive, then moved into the real tables with
one `INSERT ... SELECT ... ORDER BY key ON CONFLICT DO NOTHING` per table:

- Exactly once: every table has its key (events: tune_event_id with its event time, see
  migrations/0001), and a key seen before changes nothing, whichever worker wrote it first. A
  worker that finds another's uncommitted row with its key waits for that transaction to end.
- No deadlocks: a writer waits only for a key another writer inserted and has not committed.
  Every transaction inserts the tables in the same order (events, adjustments, envelopes,
  rejects) and each table's rows in the order of its whole unique key, so a writer only ever
  waits for a key ordered after every key it holds; a cycle of writers each waiting for the next
  would need a key ordered after itself. Months are created before any of these inserts.
- Durable before deleted: the COMMIT returns after the WAL is flushed (a batch never commits
  with synchronous_commit off), and only then does the worker delete the batch's messages.

Faults: a lost connection (server restart, failover, network) and the lock errors PostgreSQL asks
clients to retry are retried, reconnecting as needed, until `give_up()` says stop; a full or
read-only server is a `DatabaseFault` (the worker exits 3, deleting nothing); a wrong password or
database is a `DatabaseUrlError` naming DATABASE_URL. Rows PostgreSQL refuses but SQLite takes
(text holding U+0000) are written again with U+FFFD in its place (docs/scaling-out.md).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import cache, cached_property
from typing import Any

import psycopg
from psycopg import sql
from psycopg.abc import Buffer
from psycopg.conninfo import conninfo_to_dict
from psycopg.types.numeric import FloatDumper

from db.batch import ADJUSTMENT_COLUMNS, ENVELOPE_COLUMNS, EVENT_COLUMNS, REJECT_COLUMNS, Incoming, Rows
from db.errors import DatabaseFault, DatabaseUrlError, ServerTooOld
from db.postgres import partitions as parts_of_events
from db.postgres.partitions import Partitions
from db.postgres.schema import migrate
from db.postgres.url import redact, scrub
from db.store import FUTURE_SKEW_SECONDS, WriteStats

log = logging.getLogger("tune_firehose.postgres")

_EVENT_TIME = EVENT_COLUMNS.index("event_time")
# How long to wait for a server that does not answer, per attempt.
CONNECT_TIMEOUT_SECONDS = 10
MAX_RETRY_PAUSE_SECONDS = 5.0

# SQLSTATEs PostgreSQL asks clients to retry: serialization failure, deadlock, lock timeout.
_RETRY = {"40001", "40P01", "55P03"}
# The server cannot take writes: out of disk or memory (53), read-only (25006), I/O or
# corruption (58, XX), no permission (42501). Nothing a retry of the batch would fix.
_FATAL_CLASSES = {"53", "58", "XX"}
_FATAL = {"25006", "42501"}
# At connect: a password, user or database that is wrong (exit 2, naming DATABASE_URL).
_BAD_SETTING_CLASSES = {"28"}
_BAD_SETTING = {"3D000"}


class _Unreachable(Exception):
    """The server did not answer or dropped the connection: worth retrying."""


@dataclass(frozen=True)
class _Table:
    name: str
    columns: list[str]
    key: tuple[str, ...]  # its unique key: rows are inserted in this order

    # Composed once, as bytes: composing them for each batch took a quarter of the worker's CPU.
    @cached_property
    def copy_statement(self) -> bytes:
        return self.copy().as_bytes(None)

    @cached_property
    def move_statement(self) -> bytes:
        return self.move().as_bytes(None)

    @property
    def stage(self) -> str:
        return f"stage_{self.name}"

    def create_stage(self) -> sql.Composed:
        # `ord` keeps the batch's order, so among rows with one key the first one wins (as in SQLite).
        return sql.SQL(
            "CREATE TEMP TABLE IF NOT EXISTS {} (LIKE {} INCLUDING DEFAULTS, ord bigint GENERATED ALWAYS AS IDENTITY) "
            "ON COMMIT DELETE ROWS"
        ).format(sql.Identifier(self.stage), sql.Identifier(self.name))

    def copy(self) -> sql.Composed:
        return sql.SQL("COPY {} ({}) FROM STDIN").format(sql.Identifier(self.stage), self._columns())

    def move(self) -> sql.Composed:
        return sql.SQL("INSERT INTO {} ({}) SELECT {} FROM {} ORDER BY {}, ord ON CONFLICT DO NOTHING").format(
            sql.Identifier(self.name),
            self._columns(),
            self._columns(),
            sql.Identifier(self.stage),
            sql.SQL(", ").join(map(sql.Identifier, self.key)),
        )

    def _columns(self) -> sql.Composed:
        return sql.SQL(", ").join(map(sql.Identifier, self.columns))


# In this order in every transaction (see the module's notes on deadlocks).
EVENTS = _Table("events", EVENT_COLUMNS, ("tune_event_id", "event_time_utc"))
ADJUSTMENTS = _Table("adjustments", ADJUSTMENT_COLUMNS, ("adjustment_sequence_id",))
ENVELOPES = _Table("envelopes", ENVELOPE_COLUMNS, ("message_id",))
REJECTS = _Table("rejects", REJECT_COLUMNS, ("reject_key",))
TABLES = (EVENTS, ADJUSTMENTS, ENVELOPES, REJECTS)


def _rows_of(part: Rows) -> tuple[list[tuple[Any, ...]], ...]:
    return part.events, part.adjustments, part.envelopes, part.rejects


class _NanAsNull(FloatDumper):
    """A float NaN is copied as NULL. Rows built for SQLite hold a NaN for an empty column (it binds
    fastest there, worker/rows.py), and no column ever holds a real NaN. Rows built for this store
    hold None (`build_empty_as_none`), which psycopg copies without calling this at all: a NaN costs
    a Python call, so such rows are taken as they are, not mapped first."""

    def dump(self, obj: float) -> Buffer | None:
        return None if obj != obj else super().dump(obj)


def sanitised(row: Sequence[Any]) -> tuple[Any, ...]:
    """A row PostgreSQL's text accepts: U+0000 and lone surrogates become U+FFFD."""
    return tuple([_clean_text(v) if type(v) is str else v if v == v else None for v in row])


def _clean_text(text: str) -> str:
    text = text.replace("\x00", "\ufffd")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: valid in JSON, not in UTF-8 text
        text = "".join("\ufffd" if "\ud800" <= c <= "\udfff" else c for c in text)
    return text


@dataclass
class _Staged:
    rows: dict[str, int] = field(default_factory=lambda: dict.fromkeys((t.name for t in TABLES), 0))
    months: set[int] = field(default_factory=set)


class PostgresStore:
    def __init__(self, url: str) -> None:
        self.url = url
        self.location = redact(url)
        self.conn: Any = None
        self.partitions = Partitions()
        self._ahead_checked = 0.0
        self._migrated = False
        self._force_sync = False
        # Why writes were retried, by SQLSTATE ("connection" for a lost or refused connection).
        self.retried: Counter[str] = Counter()
        # Rows each table gained in the last write (`merge` reports them; WriteStats has no envelopes).
        self.inserted: dict[str, int] = {}

    def __repr__(self) -> str:
        return f"PostgresStore({self.location})"

    # -- open, close -------------------------------------------------------------------------

    @classmethod
    def open(cls, url: str, give_up: Callable[[], bool] = lambda: True) -> PostgresStore:
        """Connect, migrate and create the months ahead. An unreachable server is retried with
        a growing pause until `give_up()` says stop (by default at once: a `DatabaseFault`)."""
        store = cls(url)
        attempt = 0
        while True:
            try:
                store._connect()
                break
            except _Unreachable as exc:
                attempt += 1
                if give_up():
                    raise DatabaseFault(f"cannot reach PostgreSQL at {store.location}: {exc}") from None
                pause = _pause(attempt)
                log.error("PostgreSQL at %s is unreachable, retrying in %.1f s: %s", store.location, pause, exc)
                time.sleep(pause)
        try:
            store.partitions.load(store.conn)
            store._ensure_ahead()
        except psycopg.Error as exc:
            store.close()
            raise DatabaseFault(f"cannot prepare PostgreSQL at {store.location}: {store._scrub(exc)}") from None
        except BaseException:
            store.close()
            raise
        return store

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def _connect(self) -> None:
        self.close()
        try:
            # Defaults only: a parameter in DATABASE_URL wins.
            given = conninfo_to_dict(self.url)
            defaults: dict[str, Any] = {"connect_timeout": CONNECT_TIMEOUT_SECONDS, "application_name": "tune-firehose"}
            conn = psycopg.connect(self.url, autocommit=True, **{k: v for k, v in defaults.items() if k not in given})
        except psycopg.OperationalError as exc:
            message = self._scrub(exc)
            if _is_bad_setting(exc, message):
                raise DatabaseUrlError(f"DATABASE_URL ({self.location}) is refused: {message}") from None
            raise _Unreachable(message) from None
        except psycopg.ProgrammingError as exc:  # a malformed URL
            raise DatabaseUrlError(f"DATABASE_URL ({self.location}) is not usable: {self._scrub(exc)}") from None
        # No server-side prepared statements: they live in the session, which a pooler in
        # transaction mode may swap between transactions.
        conn.prepare_threshold = None
        conn.adapters.register_dumper(float, _NanAsNull)
        try:
            if not self._migrated:  # once per store: its first connection brings the schema up to date
                migrate(conn)
                self._migrated = True
            # The guarantee needs the COMMIT on disk before the messages are deleted.
            asynchronous = conn.execute("SELECT current_setting('synchronous_commit') = 'off'").fetchone()
            self._force_sync = asynchronous == (True,)
        except psycopg.OperationalError as exc:
            conn.close()
            raise _Unreachable(self._scrub(exc)) from None
        except psycopg.Error as exc:
            conn.close()
            raise DatabaseFault(f"cannot prepare PostgreSQL at {self.location}: {self._scrub(exc)}") from None
        except BaseException:
            conn.close()
            raise
        self.conn = conn

    def _scrub(self, exc: BaseException) -> str:
        return scrub(str(exc).strip(), self.url)

    # -- write -------------------------------------------------------------------------------

    def write(
        self,
        batch: Rows | Incoming,
        give_up: Callable[[], bool] = lambda: False,
        then: Callable[[Any], None] | None = None,
    ) -> WriteStats:
        """Write the whole batch in one transaction. A lost connection or a lock conflict is
        retried until `give_up()` says stop; an `Incoming` batch is staged part by part as it arrives.
        `then(cursor)` runs in the same transaction after the rows are in, again on each retry
        (reprocess-rejects deletes the rejects it fixed there); it must only update or delete rows
        other writers do not hold, so it never waits for them (see the notes on deadlocks)."""
        attempt, clean = 0, False
        while True:
            try:
                if self.conn is None:
                    self._connect()
                return self._write_once(batch.parts() if isinstance(batch, Incoming) else [batch], clean, then)
            except (psycopg.DataError, UnicodeEncodeError) as exc:
                if clean:
                    raise  # not a text problem: the worker writes the batch's messages one at a time
                log.warning("PostgreSQL refused a text value (%s); writing the batch again with U+FFFD for it", exc)
                clean = True
                continue
            except (psycopg.Error, _Unreachable) as exc:
                reason = self._fault(exc)
                self.retried[getattr(exc, "sqlstate", None) or "connection"] += 1
                attempt += 1
                if give_up():
                    raise DatabaseFault(f"PostgreSQL at {self.location} stayed unavailable: {reason}") from None
                pause = _pause(attempt)
                log.warning(
                    "PostgreSQL at %s: %s (attempt %d); retrying in %.1f s, nothing is deleted until it commits",
                    self.location,
                    reason,
                    attempt,
                    pause,
                )
                time.sleep(pause)

    def _fault(self, exc: BaseException) -> str:
        """Why a write failed, when a retry may succeed; raises when it cannot."""
        if isinstance(exc, _Unreachable):
            return str(exc)
        assert isinstance(exc, psycopg.Error)
        state = exc.sqlstate or ""
        message = self._scrub(exc)
        if state in _FATAL or state[:2] in _FATAL_CLASSES:
            raise DatabaseFault(f"cannot write to PostgreSQL at {self.location}: {message}") from None
        if state in _RETRY:
            return message
        if isinstance(exc, psycopg.OperationalError) or self.conn is None or self.conn.broken:
            self._forget_connection()
            return message
        raise exc  # the batch's own problem (a constraint, a value): the worker isolates its messages

    def _forget_connection(self) -> None:
        try:
            self.close()
        except psycopg.Error:
            self.conn = None

    def _write_once(self, parts: Iterable[Rows], clean: bool, then: Callable[[Any], None] | None = None) -> WriteStats:
        conn = self.conn
        self._ensure_ahead()
        staged = _Staged()
        with conn.transaction():
            conn.execute(self._preamble())
            with conn.cursor() as cur:
                for part in _gathered(parts):
                    self._stage(cur, part, staged, clean)
                created = self.partitions.create(conn, staged.months) if staged.months else []
                moved = {t.name: cur.execute(t.move_statement).rowcount if staged.rows[t.name] else 0 for t in TABLES}
                if then is not None:
                    then(cur)
        self.partitions.add(created)
        self.inserted = moved
        return WriteStats(
            events=moved["events"],
            duplicates=staged.rows["events"] - moved["events"],
            adjustments=moved["adjustments"],
            duplicate_adjustments=staged.rows["adjustments"] - moved["adjustments"],
            rejects=moved["rejects"],
        )

    def _preamble(self) -> bytes:
        return _preamble(self._force_sync)

    def _stage(self, cur: Any, part: Rows, staged: _Staged, clean: bool) -> None:
        for table, rows in zip(TABLES, _rows_of(part), strict=True):
            if not rows:
                continue
            with cur.copy(table.copy_statement) as copy:
                write_row = copy.write_row
                for row in map(sanitised, rows) if clean else rows:
                    write_row(row)
            staged.rows[table.name] += len(rows)
        if part.events:
            staged.months |= self.partitions.missing(row[_EVENT_TIME] for row in part.events)

    def _ensure_ahead(self) -> None:
        """Create this month and the next ones, once an hour at most, outside any batch."""
        now = time.time()
        if now - self._ahead_checked < 3600:
            return
        months = self.partitions.ahead(now)
        if months:
            with self.conn.transaction():
                created = self.partitions.create(self.conn, months)
            self.partitions.add(created, now)
        self._ahead_checked = now

    # -- read --------------------------------------------------------------------------------

    def counts(self) -> dict[str, int]:
        return {
            t.name: self.conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(t.name))).fetchone()[0]
            for t in TABLES
        }

    def months(self) -> list[parts_of_events.Month]:
        return parts_of_events.months(self.conn)

    def connection(self) -> Any:
        """The open connection (autocommit), made again if a write lost it."""
        if self.conn is None:
            try:
                self._connect()
            except _Unreachable as exc:
                raise DatabaseFault(f"cannot reach PostgreSQL at {self.location}: {exc}") from None
        return self.conn

    def newest_event_time(self, now: float) -> int | None:
        """db/store.newest_event_time's rule, on this database."""
        try:
            return newest_event_time(self.connection(), now)
        except psycopg.Error as exc:
            raise DatabaseFault(f"cannot read PostgreSQL at {self.location}: {self._scrub(exc)}") from None


def newest_event_time(conn: Any, now: float) -> int | None:
    """The newest event time not in the future (beyond FUTURE_SKEW_SECONDS): the rule of
    db/store.newest_event_time, the same statement and bound; events_by_time makes it cheap."""
    row = conn.execute("SELECT max(event_time) FROM events WHERE event_time <= %s", (int(now + FUTURE_SKEW_SECONDS),))
    (newest,) = row.fetchone()
    return None if newest is None else int(newest)


# Parts are copied in groups of about this many rows (or decoded bytes): one COPY per message cost a
# round trip and a statement's start-up per table, which at 100 events a message was most of the
# worker's time on the server's side.
GATHER_ROWS = 2_000
GATHER_BYTES = 1 << 20
SORT_MEMORY = "64MB"


def _gathered(parts: Iterable[Rows]) -> Iterator[Rows]:
    group = Rows()
    for part in parts:
        group.extend(part)
        if group.size + len(group.envelopes) >= GATHER_ROWS or group.decoded_bytes >= GATHER_BYTES:
            yield group
            group = Rows()
    if group.size or group.envelopes:
        yield group


@cache
def _preamble(force_sync: bool) -> bytes:
    """Each transaction's first statement: the session state it needs, made if missing. Per
    transaction, not per connection, so a pooler that hands each transaction another server
    session (PgBouncer in transaction mode) works too. One round trip (no parameters: psycopg
    sends it as one simple query)."""
    statements: list[sql.Composable] = [
        sql.SQL("SET LOCAL client_min_messages = warning"),  # no NOTICEs
        # The moves sort whole rows by key; at the default 4 MB a batch of 5,000 events sorted on
        # disk (a temporary file of 6-8 MB, each batch). The most a sort holds, 5,000 rows just
        # under the TOAST threshold (~2 KB: a longer row is compressed or moved out of line
        # first), fits in this. LOCAL: this transaction's alone.
        sql.SQL("SET LOCAL work_mem = {}").format(sql.Literal(SORT_MEMORY)),
    ]
    statements += [table.create_stage() for table in TABLES]
    if force_sync:
        statements.append(sql.SQL("SET LOCAL synchronous_commit = on"))
    return sql.SQL("; ").join(statements).as_bytes(None)


def _pause(attempt: int) -> float:
    return min(0.1 * 2.0 ** min(attempt, 10), MAX_RETRY_PAUSE_SECONDS)


def _is_bad_setting(exc: psycopg.OperationalError, message: str) -> bool:
    state = exc.sqlstate or ""
    if state in _BAD_SETTING or state[:2] in _BAD_SETTING_CLASSES:
        return True
    # libpq reports a refused login, or a parameter it cannot use, without a SQLSTATE.
    lowered = message.lower()
    return any(phrase in lowered for phrase in _BAD_SETTING_PHRASES) or ("invalid " in lowered and " value" in lowered)


_BAD_SETTING_PHRASES = (
    "password authentication failed",
    "does not exist",  # the database, or the role
    "no password supplied",
    "no pg_hba.conf entry",
    "is not permitted to log in",
)


__all__ = ["DatabaseFault", "DatabaseUrlError", "PostgresStore", "ServerTooOld", "WriteStats"]
