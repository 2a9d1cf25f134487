"""The analyst views and the documented queries are exact and never fail, whatever was stored.

Invariant (property test): for any events, updates and rejects with in-bounds values (|money| <=
1e9 currency units, |num| <= 1e6 per row), including the extremes, NULLs, two currencies and
thousands of maximal rows in one group, every view and every documented query of docs/data.md
runs, and every count and money total equals the sum this test computes itself with Python
integers: exactly (one rounding, printed as the exact decimal) below 1e9 currency units, to half a
cent below 2^63 micro-units, and to 12 significant digits beyond.
"""

from __future__ import annotations

import functools
import math
import os
import re
import sqlite3
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chalicelib.queues.local import LocalQueue
from db.schema import migrate
from tests.kit import deliver, drain

ROOT = Path(__file__).resolve().parent.parent
MAX_MICROS = 10**15  # 1e9 currency units: the largest amount the worker stores
MAX_NUM = 10**6
INGESTED_AT = 1_800_000_000
FUZZ = bool(os.environ.get("FIREHOSE_FUZZ"))


# -- the data -------------------------------------------------------------------------------------


@dataclass
class Event:
    key: str
    action: str
    currency: str | None
    offer: int | None
    affiliate: int | None
    event_time: int | None
    num: int | None
    payout: int | None
    revenue: int | None
    sale: int | None
    status: str | None
    ingested_at: int = INGESTED_AT


@dataclass
class Update:
    seq: int
    target: str
    action: str
    num: int | None
    payout: int | None
    revenue: int | None
    sale: int | None
    status: str | None
    currency: str | None
    time: int | None


@dataclass
class Stored:
    events: list[Event] = field(default_factory=list)
    updates: list[Update] = field(default_factory=list)
    rejects: list[tuple[str, int]] = field(default_factory=list)  # (reason, rejected_at)


@functools.lru_cache(maxsize=65_536)
def iso(epoch: int | None) -> str | None:
    if epoch is None:
        return None
    t = datetime.fromtimestamp(epoch, UTC)
    return f"{t.year:04d}-{t.month:02d}-{t.day:02d}T{t.hour:02d}:{t.minute:02d}:{t.second:02d}Z"


def day(epoch: int | None) -> str | None:
    text = iso(epoch)
    return None if text is None else text[:10]


def store(path: Path, data: Stored) -> None:
    db = sqlite3.connect(path, isolation_level=None)
    migrate(db)
    db.execute("BEGIN")
    db.executemany(
        "INSERT INTO events (tune_event_id, key_source, action, event_time, event_time_utc, currency, offer_id, "
        "affiliate_id, num, payout_micros, revenue_micros, sale_amount_micros, status, raw_json, ingested_at) "
        "VALUES (?, 'tune_event_id', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, '{}', ?)",
        [
            (
                e.key,
                e.action,
                e.event_time,
                iso(e.event_time),
                e.currency,
                e.offer,
                e.affiliate,
                e.num,
                e.payout,
                e.revenue,
                e.sale,
                e.status,
                e.ingested_at,
            )
            for e in data.events
        ],
    )
    db.executemany(
        "INSERT INTO adjustments (adjustment_sequence_id, tune_event_id, action, num, payout_micros, revenue_micros, "
        "sale_amount_micros, status, currency, adjustment_timestamp, adjustment_time_utc, raw_json, ingested_at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, '{}', ?)",
        [
            (
                u.seq,
                u.target,
                u.action,
                u.num,
                u.payout,
                u.revenue,
                u.sale,
                u.status,
                u.currency,
                u.time,
                iso(u.time),
                INGESTED_AT,
            )
            for u in data.updates
        ],
    )
    db.executemany(
        "INSERT INTO rejects VALUES (?, NULL, NULL, ?, 'raw', ?)",
        [(f"r{i}", reason, at) for i, (reason, at) in enumerate(data.rejects)],
    )
    db.execute("COMMIT")
    db.close()


# -- the oracle: the same answers from Python integers ---------------------------------------------


@dataclass(frozen=True)
class Money:
    """An exact amount in micro-units, to compare with what a view shows in currency units."""

    micros: int


@dataclass(frozen=True)
class Micros:
    """An exact integer of micro-units; past 2^63 SQLite holds it as a REAL instead of failing."""

    micros: int


@dataclass(frozen=True)
class Near:
    value: float
    tolerance: float


@dataclass
class Reconciled:
    event: Event
    status: str | None
    gross_num: int
    num: int
    gross: dict[str, int]
    net: dict[str, int]

    @property
    def date(self) -> str | None:
        return day(self.event.event_time)


def reconcile(data: Stored) -> list[Reconciled]:
    by_target: dict[str, list[Update]] = defaultdict(list)
    for u in data.updates:
        by_target[u.target].append(u)
    out = []
    for e in data.events:
        ups = sorted(by_target[e.key], key=lambda u: u.seq)
        gross = {"payout": e.payout or 0, "revenue": e.revenue or 0, "sale": e.sale or 0}
        net = {k: v + sum(getattr(u, k) or 0 for u in ups) for k, v in gross.items()}
        statuses = [u.status for u in ups if u.status is not None]
        gross_num = 1 if e.num is None else e.num
        num = gross_num + sum(u.num or 0 for u in ups)
        out.append(Reconciled(e, statuses[-1] if statuses else e.status, gross_num, num, gross, net))
    return out


Rows = dict[tuple[Any, ...], dict[str, Any]]


def group(items: Iterable[Reconciled], key: Callable[[Reconciled], tuple[Any, ...]]) -> dict[Any, list[Reconciled]]:
    groups: dict[Any, list[Reconciled]] = defaultdict(list)
    for r in items:
        groups[key(r)].append(r)
    return groups


def sums(rs: list[Reconciled], net_num_name: str = "net_num") -> dict[str, Any]:
    return {
        "events": len(rs),
        "gross_num": sum(r.gross_num for r in rs),
        net_num_name: sum(r.num for r in rs),
        "gross_payout": Money(sum(r.gross["payout"] for r in rs)),
        "net_payout": Money(sum(r.net["payout"] for r in rs)),
        "gross_revenue": Money(sum(r.gross["revenue"] for r in rs)),
        "net_revenue": Money(sum(r.net["revenue"] for r in rs)),
        "payout_impact": Money(sum(r.gross["payout"] - r.net["payout"] for r in rs)),
        "revenue_impact": Money(sum(r.gross["revenue"] - r.net["revenue"] for r in rs)),
        **{f"{a}s": sum(r.num for r in rs if r.event.action == a) for a in ("impression", "click", "conversion")},
    }


def per_event(r: Reconciled) -> dict[str, Any]:
    e = r.event
    return {
        "tune_event_id": e.key,
        "action": e.action,
        "event_time_utc": iso(e.event_time),
        "date": r.date,
        "currency": e.currency,
        "offer_id": e.offer,
        "affiliate_id": e.affiliate,
        "status": r.status,
        "gross_num": r.gross_num,
        "num": r.num,
        "gross_payout": Money(r.gross["payout"]),
        "payout": Money(r.net["payout"]),
        "gross_revenue": Money(r.gross["revenue"]),
        "revenue": Money(r.net["revenue"]),
        "gross_sale_amount": Money(r.gross["sale"]),
        "sale_amount": Money(r.net["sale"]),
    }


def ledger(data: Stored) -> Rows:
    events = {e.key: e for e in data.events}
    rows: Rows = {}
    entries: list[tuple[Event, str, int | None, Any]] = [(e, "event", None, e) for e in data.events]
    entries += [(events[u.target], "update", u.seq, u) for u in data.updates if u.target in events]
    for e, kind, seq, entry in entries:
        rows[(e.key, kind, seq)] = {
            "date": day(e.event_time),
            "event_time": e.event_time,
            "action": e.action,
            "currency": e.currency,
            "offer_id": e.offer,
            "affiliate_id": e.affiliate,
            "num": (1 if entry.num is None else entry.num) if kind == "event" else entry.num,
            "payout_micros": entry.payout,
            "revenue_micros": entry.revenue,
            "sale_amount_micros": entry.sale,
        }
    return rows


def bare_reason(reason: str) -> str:
    reason = re.sub(r"^event [0-9].*?: ", "", reason, count=1) if re.match(r"^event [0-9]", reason) else reason
    return reason.split(", got ", 1)[0]


def c_div(a: int, b: int) -> int:
    """SQLite's integer division and remainder truncate toward zero, as C does."""
    return int(Fraction(a, b))


def expected(data: Stored) -> dict[str, tuple[tuple[str, ...], Rows]]:
    """For each view and documented query (by its canned-query name): key columns and the rows."""
    rec = reconcile(data)
    out: dict[str, tuple[tuple[str, ...], Rows]] = {}

    def add(name: str, keys: tuple[str, ...], groups: dict[Any, list[Reconciled]], **extra: Any) -> None:
        out[name] = (keys, {k: sums(v, **extra) for k, v in groups.items()})

    add("totals", ("currency", "action"), group(rec, lambda r: (r.event.currency, r.event.action)))
    add("daily_totals", ("date", "currency"), group(rec, lambda r: (r.date, r.event.currency)))
    add(
        "daily_offers",
        ("date", "currency", "offer_id"),
        group(rec, lambda r: (r.date, r.event.currency, r.event.offer)),
    )
    dims = ("date", "currency", "action", "offer_id", "affiliate_id")
    e_dims = lambda r: (r.date, r.event.currency, r.event.action, r.event.offer, r.event.affiliate)  # noqa: E731
    add("daily_stats", dims, group(rec, e_dims))
    out["events_reconciled"] = (("tune_event_id",), {(r.event.key,): per_event(r) for r in rec})
    out["ledger"] = (("tune_event_id", "kind", "adjustment_sequence_id"), ledger(data))
    out["totals-by-currency-and-action"] = out["totals"]
    out["revenue-and-payout-per-day"] = out["daily_totals"]
    out["net-revenue-by-offer-per-day"] = out["daily_offers"]

    conversions = [r for r in rec if r.event.action == "conversion"]
    out["conversions-per-offer-and-affiliate"] = (
        ("offer_id", "affiliate_id"),
        {
            k: {"gross_conversions": sum(r.gross_num for r in v), "conversions": sum(r.num for r in v)}
            for k, v in group(conversions, lambda r: (r.event.offer, r.event.affiliate)).items()
        },
    )
    rates: Rows = {}
    for k, v in group(rec, lambda r: (r.event.affiliate,)).items():
        clicks = sum(r.num for r in v if r.event.action == "click")
        converted = sum(r.num for r in v if r.event.action == "conversion")
        if clicks > 0:
            rates[k] = {
                "clicks": clicks,
                "gross_conversions": sum(r.gross_num for r in v if r.event.action == "conversion"),
                "conversions": converted,
                "conversion_rate_pct": Near(100 * converted / clicks, 0.0051),
            }
    out["conversion-rate-by-affiliate"] = (("affiliate_id",), rates)
    out["rejected-conversions"] = (
        ("tune_event_id",),
        {(r.event.key,): per_event(r) for r in conversions if r.status == "rejected"},
    )
    known = {e.key for e in data.events}
    pending = {
        (u.seq,): {
            "tune_event_id": u.target,
            "action": u.action,
            "adjustment_time_utc": iso(u.time),
            "currency": u.currency,
            "num": u.num,
            "payout": None if u.payout is None else Money(u.payout),
            "revenue": None if u.revenue is None else Money(u.revenue),
            "status": u.status,
        }
        for u in data.updates
        if u.target not in known
    }
    out["adjustments_pending"] = out["adjustments-waiting-for-their-original"] = (("adjustment_sequence_id",), pending)

    def hour(r: Reconciled) -> int | None:
        t = r.event.event_time
        return None if t is None else c_div(t - 86400 * c_div(t, 86400), 3600)

    out["events-per-hour"] = (
        ("date", "hour", "action"),
        {k: {"events": len(v)} for k, v in group(rec, lambda r: (r.date, hour(r), r.event.action)).items()},
    )
    rejects: dict[Any, list[int]] = defaultdict(list)
    for reason, at in data.rejects:
        rejects[(day(at), bare_reason(reason))].append(at)
    out["rejects_daily"] = out["rejects-per-day-and-reason"] = (
        ("date", "reason"),
        {k: {"rejects": len(v), "last_seen_utc": iso(max(v))} for k, v in rejects.items()},
    )
    lags: dict[Any, list[Event]] = defaultdict(list)
    for e in data.events:
        if e.event_time is not None:
            lags[(day(e.event_time),)].append(e)
    out["ingestion_lag"] = out["ingestion-lag-per-day"] = (
        ("date",),
        {
            k: {
                "events": len(v),
                "min_lag_s": min(e.ingested_at - e.event_time for e in v),  # type: ignore[operator]
                "avg_lag_s": Near(sum(e.ingested_at - e.event_time for e in v) / len(v), 0.51),  # type: ignore[operator]
                "max_lag_s": max(e.ingested_at - e.event_time for e in v),  # type: ignore[operator]
                "last_ingested_utc": iso(max(e.ingested_at for e in v)),
            }
            for k, v in lags.items()
        },
    )
    return out


# -- comparing --------------------------------------------------------------------------------------


def assert_money(shown: Any, exact: int, where: str) -> None:
    assert isinstance(shown, float), (where, shown)
    assert money_problem(shown, exact) is None, (where, shown, exact, money_problem(shown, exact))


@functools.lru_cache(maxsize=65_536)  # many rows of one test repeat the same amounts
def money_problem(shown: float, exact: int) -> str | None:
    """One division of the exact integer sum: the nearest double, printed as the exact decimal."""
    truth = Fraction(exact, 10**6)
    if abs(exact) < 2**53:
        if shown != exact / 10**6:  # int / int is correctly rounded in Python
            return "not the double nearest to the exact amount"
        # 15 significant digits: what sqlite3 and Datasette print is the exact decimal.
        if abs(exact) < 10**15 and not Decimal(repr(shown)) == Decimal(f"{shown:.15g}") == Decimal(exact).scaleb(-6):
            return "printed with float noise"
    elif abs(exact) < 2**63:
        if abs(Fraction(shown) - truth) > Fraction(1, 200):
            return "more than half a cent off"
    elif not math.isclose(shown, float(truth), rel_tol=1e-12):
        return "more than 12 significant digits off"
    return None


def assert_value(shown: Any, want: Any, where: str) -> None:
    if isinstance(want, Money):
        assert_money(shown, want.micros, where)
    elif isinstance(want, Micros) and abs(want.micros) >= 2**63:
        assert isinstance(shown, float) and math.isclose(shown, want.micros, rel_tol=1e-12), (where, shown, want)
    elif isinstance(want, Micros):
        assert shown == want.micros and type(shown) is int, (where, shown, want)
    elif isinstance(want, Near):
        assert shown is not None and abs(shown - want.value) <= want.tolerance, (where, shown, want)
    else:
        assert shown == want and type(shown) is type(want), (where, shown, want)


def assert_rows(db: sqlite3.Connection, name: str, sql: str, keys: tuple[str, ...], want: Rows) -> None:
    cursor = db.execute(sql)
    columns = [d[0] for d in cursor.description]
    got = {}
    for row in cursor.fetchall():
        record = dict(zip(columns, row, strict=True))
        got[tuple(record[k] for k in keys)] = record
    assert set(got) == set(want), (name, set(got) ^ set(want))
    for key, record in got.items():
        for column, value in record.items():
            if column in want[key]:
                assert_value(value, want[key][column], f"{name} {key} {column}")


def documented_queries() -> dict[str, str]:
    """The ```sql blocks under "## Querying the data" in docs/data.md, by their canned-query name."""
    text = (ROOT / "docs" / "data.md").read_text()
    section = text.split("\n## Querying the data", 1)[1].split("\n## ", 1)[0]
    found = {}
    for chunk in section.split("\n### ")[1:]:
        title = chunk.partition("\n")[0]
        block = re.search(r"```sql\n(.*?)```", chunk, flags=re.S)
        if block:
            found[re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")] = block.group(1)
    return found


VIEWS = (
    "ledger events_reconciled adjustments_pending daily_stats daily_offers daily_totals totals "
    "rejects_daily ingestion_lag"
).split()


def check_everything(path: Path, data: Stored) -> None:
    want = expected(data)
    db = sqlite3.connect(path)
    try:
        views = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'view'")}
        assert views == set(VIEWS)
        for view in VIEWS:
            keys, rows = want[view]
            assert_rows(db, view, f"SELECT * FROM {view}", keys, rows)
        queries = documented_queries()
        assert set(queries) <= set(want), set(queries) - set(want)
        for name, sql in queries.items():
            keys, rows = want[name]
            assert_rows(db, name, sql, keys, rows)
    finally:
        db.close()


# -- the property ------------------------------------------------------------------------------------

extreme_money = st.sampled_from([MAX_MICROS, -MAX_MICROS, MAX_MICROS - 1, 1, -1, 0, 999_999, 10**15 - 10**6 + 1])
money = st.one_of(st.none(), extreme_money, st.integers(-MAX_MICROS, MAX_MICROS))
num = st.one_of(st.none(), st.sampled_from([MAX_NUM, -MAX_NUM, 0, 1, -1]), st.integers(-MAX_NUM, MAX_NUM))
times = st.one_of(
    st.none(),
    st.sampled_from([0, -1, 86_399, 86_400, 1_790_000_000, -62_135_596_800, 253_402_300_799]),
    st.integers(-62_135_596_800, 253_402_300_799),
)
currencies = st.sampled_from(["USD", "EUR", None])
actions = st.sampled_from(["impression", "click", "conversion"])
small_ids = st.sampled_from([1, 2, None])
statuses = st.sampled_from([None, "approved", "rejected"])
REASONS = [
    "event 3: payout must be a number, got 'lots'",
    "event 12: num is out of range, got '99999999'",
    "event 0: has no 'action'",
    "message undecodable: gzip data is truncated",
    "message undecodable: base64 body does not hold gzip or JSON",
]


@st.composite
def stored(draw: st.DrawFn) -> Stored:
    data = Stored()
    for i in range(draw(st.integers(0, 25))):
        data.events.append(
            Event(
                f"e{i}", draw(actions), draw(currencies), draw(small_ids), draw(small_ids), draw(times),
                draw(num), draw(money), draw(money), draw(money), draw(statuses),
                draw(st.sampled_from([INGESTED_AT, INGESTED_AT + 7, 0])),
            )
        )  # fmt: skip
    targets = [e.key for e in data.events] + ["missing-1", "missing-2"]
    for seq in range(draw(st.integers(0, 15))):
        data.updates.append(
            Update(
                seq, draw(st.sampled_from(targets)), draw(actions), draw(num), draw(money), draw(money),
                draw(money), draw(statuses), draw(currencies), draw(times),
            )
        )  # fmt: skip
    # Many maximal rows: past 9,223 events of the largest payout a plain sum() fails.
    heavy = draw(st.sampled_from([0, 0, 0, 0, 0, 1, 9_224, 10_000]))
    sign = draw(st.sampled_from([1, -1]))
    template = Event("h", "conversion", "USD", 1, 1, 1_790_000_000, MAX_NUM * sign, MAX_MICROS * sign,
                     -MAX_MICROS * sign, MAX_MICROS, "approved")  # fmt: skip
    data.events += [Event(**{**template.__dict__, "key": f"h{i}"}) for i in range(heavy)]
    # Many maximal updates of one event: its own net amount passes 2^63 micro-units.
    many = draw(st.sampled_from([0, 0, 0, 2, 9_300]))
    if data.events and many:
        target = data.events[-1].key
        base = len(data.updates)
        data.updates += [
            Update(base + i, target, "conversion", MAX_NUM, MAX_MICROS, MAX_MICROS, MAX_MICROS, None, None, None)
            for i in range(many)
        ]
    data.rejects = draw(st.lists(st.tuples(st.sampled_from(REASONS), st.integers(0, 4_102_444_800)), max_size=6))
    return data


@settings(
    max_examples=400 if FUZZ else 16,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(data=stored())
def test_views_and_documented_queries_are_exact_and_never_fail(
    tmp_path_factory: pytest.TempPathFactory, data: Stored
) -> None:
    path = tmp_path_factory.mktemp("views") / "f.db"
    store(path, data)
    check_everything(path, data)


# -- the edges, named ----------------------------------------------------------------------------------


def test_ten_thousand_maximal_payouts_in_one_group_through_the_worker(tmp_path: Path) -> None:
    """Issue 12, finding 2: ~9,300 events of payout 1e9 made every view fail with "integer overflow"."""
    queue = LocalQueue(tmp_path / "q.db")
    events = [
        {"action": "conversion", "tune_event_id": f"max-{i}", "datetime": 1_790_000_000, "offer_id": 1,
         "affiliate_id": 1, "currency": "USD", "payout": 1_000_000_000, "revenue": -1_000_000_000, "num": MAX_NUM}
        for i in range(10_000)
    ]  # fmt: skip
    deliver(queue, events[:5_000], events[5_000:])
    drain(queue, tmp_path / "f.db")
    db = sqlite3.connect(tmp_path / "f.db")
    with pytest.raises(sqlite3.OperationalError, match="integer overflow"):  # what a plain sum() does
        db.execute("SELECT sum(payout_micros) FROM events").fetchall()
    assert db.execute("SELECT events, net_num, gross_payout, net_payout, net_revenue FROM totals").fetchall() == [
        (10_000, 10_000 * MAX_NUM, 1e13, 1e13, -1e13)
    ]
    db.close()
    data = Stored(
        events=[
            Event(f"max-{i}", "conversion", "USD", 1, 1, 1_790_000_000, MAX_NUM, MAX_MICROS, -MAX_MICROS, None, None)
            for i in range(10_000)
        ]
    )
    want = expected(data)
    db = sqlite3.connect(tmp_path / "f.db")
    for name, sql in documented_queries().items():
        if name in ("totals-by-currency-and-action", "revenue-and-payout-per-day", "net-revenue-by-offer-per-day"):
            keys, rows = want[name]
            assert_rows(db, name, sql, keys, rows)
        else:
            db.execute(sql).fetchall()
    db.close()


@pytest.mark.parametrize(
    "amounts, shown",
    [
        ([999_999_999_999_999], "999999999.999999"),  # the largest total exact to the micro-unit: 15 digits
        ([MAX_MICROS] * 9_223 + [372_036_854_770_000], "9223372036854.77"),  # the largest exact whole cents
        ([MAX_MICROS] * 9_223 + [372_036_854_775_807], "9223372036854.78"),  # 2^63 - 1 micro-units
        ([MAX_MICROS] * 9_224, "9224000000000"),  # past 2^63 micro-units: no error, still to the cent
        ([-MAX_MICROS] * 9_224 + [-1], "-9224000000000"),
        ([MAX_MICROS, -MAX_MICROS, 1], "1e-06"),
    ],
)
def test_money_at_the_bounds(tmp_path: Path, amounts: list[int], shown: str) -> None:
    data = Stored(
        events=[
            Event(f"b{i}", "click", "EUR", 1, 1, 1_790_000_000, None, amount, None, None, None)
            for i, amount in enumerate(amounts)
        ]
    )
    store(tmp_path / "f.db", data)
    check_everything(tmp_path / "f.db", data)
    db = sqlite3.connect(tmp_path / "f.db")
    (payout,) = db.execute("SELECT gross_payout FROM daily_totals").fetchone()
    db.close()
    assert f"{payout:.15g}" == shown  # as sqlite3 prints it


def test_rows_stored_before_the_bounds_cannot_break_a_view(tmp_path: Path) -> None:
    """A database written before the worker bounded num and money: the views still answer."""
    path = tmp_path / "f.db"
    store(path, Stored())
    db = sqlite3.connect(path)
    for i in range(3):
        db.execute(
            "INSERT INTO events (tune_event_id, key_source, action, event_time, event_time_utc, num, payout_micros, "
            "revenue_micros, currency, raw_json, ingested_at) VALUES (?, 'x', 'conversion', 0, "
            "'1970-01-01T00:00:00Z', ?, ?, ?, 'USD', '{}', 1)",
            (f"old-{i}", 2**63 - 1, 2**63 - 1, -(2**63)),
        )
        db.execute(
            "INSERT INTO adjustments (adjustment_sequence_id, tune_event_id, action, num, payout_micros, raw_json, "
            "ingested_at) VALUES (?, 'old-0', 'conversion', ?, ?, '{}', 1)",
            (i, 2**63 - 1, 2**63 - 1),
        )
    db.commit()
    for view in VIEWS:
        assert db.execute(f"SELECT * FROM {view}").fetchall() is not None
    (num, payout) = db.execute("SELECT net_num, net_payout FROM totals").fetchone()
    assert num == 2**63 - 1  # saturated, not an error
    assert math.isclose(payout, 6 * (2**63 - 1) / 1e6, rel_tol=1e-9)
    db.close()
