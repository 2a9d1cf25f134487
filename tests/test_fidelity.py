"""Firehose fidelity through the real path: message in the queue -> worker -> SQLite.

Every expected number here is worked out by hand in the comments next to it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from chalicelib.queues.local import LocalQueue
from tests.kit import deliver, drain, one, rows
from worker.coerce import iso_utc

CLICK = {
    "action": "click",
    "tune_event_id": "c-1",
    "datetime": 1476127152,
    "offer_id": "12",
    "affiliate_id": 7,
    "advertiser_manager_id": "0",
    "transaction_id": "102d3eb8a6d5ef5d67a4db4e2f16d9",
    "payout": 0.1,
    "revenue": 0.2,
    "is_click_unique": True,
    "currency": "EUR",
    "mystery_field": {"kept": [1, 2]},
}
CONVERSION = {
    "action": "conversion",
    "tune_event_id": "v-1",
    "datetime": "2022-10-03 18:13:32",
    "offer_id": 12,
    "affiliate_id": 7,
    "advertiser_id": 3,
    "payout": 10,
    "revenue": "20.00",
    "sale_amount": 99.99,
    "status": "approved",
    "goal_id": "2",
}
CREATE = {
    "action": "conversion",
    "adjust_action": "create",
    "tune_event_id": "v-2",
    "adjustment_sequence_id": 16648208123366,
    "adjustment_timestamp": 1664820812,
    "created_timestamp": 1664820700,
    "created_from_adjustment": True,
    "conversion_id": 1234,
    "num": 1,
    "payout": 1.0,
    "revenue": 2.0,
    "current_payout": 1.0,
    "current_revenue": 2.0,
    "offer_id": 12,
    "affiliate_id": 7,
    "datetime": "2022-10-03T18:13:32Z",
}
REJECT_V1 = {  # the documented example: rejecting a conversion worth 10 / 20
    "action": "conversion",
    "adjust_action": 2,
    "tune_event_id": "v-1",
    "adjustment_sequence_id": 16648208130001,
    "adjustment_timestamp": 1664820813,
    "num": -1,
    "payout": -10,
    "revenue": -20,
    "current_payout": 0,
    "current_revenue": 0,
    "status": "rejected",
}
BUMP_V1 = {
    "action": "conversion",
    "adjust_action": "UPDATE",
    "tune_event_id": "v-1",
    "adjustment_sequence_id": 16648208120001,
    "adjustment_timestamp": 1664820812,
    "num": 0,
    "payout": 2.5,
    "revenue": "3.10",
    "status": "pending",
}


@pytest.fixture()
def db(tmp_path: Path) -> Path:
    return tmp_path / "firehose.db"


def test_typed_columns_and_raw_json(local_queue: LocalQueue, db: Path) -> None:
    deliver(local_queue, [CLICK, CONVERSION])
    drain(local_queue, db)
    [row] = rows(
        db,
        "SELECT offer_id, typeof(offer_id), affiliate_id, advertiser_manager_id, event_time, event_time_utc, "
        "payout_micros, revenue_micros, is_click_unique, currency, key_source, raw_json FROM events "
        "WHERE tune_event_id = 'c-1'",
    )
    assert row[:11] == (
        12,
        "integer",
        7,
        0,
        1476127152,
        "2016-10-10T19:19:12Z",
        100_000,
        200_000,
        1,
        "EUR",
        "tune_event_id",
    )
    assert json.loads(row[11]) == CLICK  # unknown fields survive in the raw JSON
    [conv] = rows(
        db,
        "SELECT event_time, event_time_utc, datetime_raw, goal_id, sale_amount_micros, revenue_micros "
        "FROM events WHERE tune_event_id = 'v-1'",
    )
    # "2022-10-03 18:13:32" read as UTC = 1664820812
    assert conv == (1664820812, "2022-10-03T18:13:32Z", "2022-10-03 18:13:32", 2, 99_990_000, 20_000_000)


def test_create_is_an_event_and_updates_are_a_ledger(local_queue: LocalQueue, db: Path) -> None:
    deliver(local_queue, [CONVERSION, CREATE, REJECT_V1])
    drain(local_queue, db)
    assert rows(db, "SELECT tune_event_id, created_from_adjustment FROM events ORDER BY 1") == [("v-1", 0), ("v-2", 1)]
    assert rows(db, "SELECT adjustment_sequence_id, tune_event_id, num, payout_micros, status FROM adjustments") == [
        (16648208130001, "v-1", -1, -10_000_000, "rejected")
    ]


def test_reconciled_totals_by_hand(local_queue: LocalQueue, db: Path) -> None:
    # v-1: original 10/20, num 1; bump +2.5/+3.10 num 0 (status pending); reject -10/-20 num -1 (status rejected,
    # later sequence id).  Net: num 1+0-1 = 0, payout 10+2.5-10 = 2.5, revenue 20+3.1-20 = 3.1, status rejected.
    deliver(local_queue, [CONVERSION, BUMP_V1], [REJECT_V1, CREATE, CLICK])
    drain(local_queue, db)
    assert rows(
        db,
        "SELECT gross_num, num, gross_payout, payout, gross_revenue, revenue, status, updates "
        "FROM events_reconciled WHERE tune_event_id = 'v-1'",
    ) == [(1, 0, 10.0, 2.5, 20.0, 3.1, "rejected", 2)]
    # daily_stats for 2022-10-03 conversions of offer 12 / affiliate 7: v-1 and v-2 (v-2 dated 2022-10-03 too).
    # gross: num 1+1 = 2, payout 10+1 = 11, revenue 20+2 = 22;  net: num 0+1 = 1, payout 2.5+1 = 3.5, revenue 5.1
    assert rows(
        db,
        "SELECT events, gross_num, gross_payout, gross_revenue, net_num, net_payout, net_revenue FROM daily_stats "
        "WHERE date = '2022-10-03' AND action = 'conversion' AND offer_id = 12 AND affiliate_id = 7",
    ) == [(2, 2, 11.0, 22.0, 1, 3.5, 5.1)]


def test_orphan_update_waits_then_applies_when_the_original_arrives(local_queue: LocalQueue, db: Path) -> None:
    deliver(local_queue, [REJECT_V1])
    drain(local_queue, db)
    assert one(db, "SELECT count(*) FROM adjustments_pending") == 1
    assert one(db, "SELECT count(*) FROM events_reconciled") == 0
    deliver(local_queue, [CONVERSION])
    drain(local_queue, db)
    assert one(db, "SELECT count(*) FROM adjustments_pending") == 0
    assert rows(db, "SELECT num, payout, revenue, status FROM events_reconciled") == [(0, 0.0, 0.0, "rejected")]


def test_update_twice_and_message_twice_count_once(local_queue: LocalQueue, db: Path) -> None:
    deliver(local_queue, [CONVERSION, REJECT_V1, REJECT_V1])
    deliver(local_queue, [CONVERSION, REJECT_V1, REJECT_V1])  # the whole message again (a TUNE re-send)
    worker = drain(local_queue, db)
    assert one(db, "SELECT count(*) FROM adjustments") == 1
    assert rows(db, "SELECT num, payout FROM events_reconciled") == [(0, 0.0)]
    assert worker.totals.written.duplicate_adjustments == 3 and worker.totals.written.duplicates == 1


@pytest.mark.parametrize("form", [1, "1", "create", "Create", "CREATE"])
def test_adjust_action_create_forms(local_queue: LocalQueue, db: Path, form: object) -> None:
    deliver(local_queue, [{**CREATE, "adjust_action": form}])
    drain(local_queue, db)
    assert rows(db, "SELECT tune_event_id, created_from_adjustment FROM events") == [("v-2", 1)]


@pytest.mark.parametrize("form", [2, "2", "update", "Update", " UPDATE "])
def test_adjust_action_update_forms(local_queue: LocalQueue, db: Path, form: object) -> None:
    deliver(local_queue, [{**REJECT_V1, "adjust_action": form}])
    drain(local_queue, db)
    assert one(db, "SELECT count(*) FROM adjustments") == 1 and one(db, "SELECT count(*) FROM events") == 0


def test_keys_fall_back_to_event_id_then_content_hash(local_queue: LocalQueue, db: Path) -> None:
    legacy = {"action": "click", "event_id": "8f3e4e2a-8f0e-11e6-8b77-86f30ca893d3", "offer_id": 1}
    anonymous = {"action": "impression", "offer_id": 1, "datetime": 1476127152}
    deliver(local_queue, [legacy, anonymous, dict(anonymous)])
    drain(local_queue, db)
    keys = dict(rows(db, "SELECT key_source, tune_event_id FROM events"))
    assert keys["event_id"] == legacy["event_id"]
    assert keys["hash"].startswith("sha256:") and one(db, "SELECT count(*) FROM events") == 2


def test_bad_events_are_rejected_and_the_rest_of_the_envelope_is_stored(local_queue: LocalQueue, db: Path) -> None:
    bad = [
        {"tune_event_id": "no-action"},
        {**CLICK, "tune_event_id": "money", "payout": "ten"},
        {**CLICK, "tune_event_id": "huge", "revenue": 1e300},
        {**REJECT_V1, "adjustment_sequence_id": None},
        {**REJECT_V1, "adjustment_sequence_id": 2**64},
        {**REJECT_V1, "adjust_action": "delete"},
        "not an object",
    ]
    deliver(local_queue, [CLICK, *bad, CONVERSION])
    drain(local_queue, db)
    assert one(db, "SELECT count(*) FROM events") == 2
    reasons = [r for (r,) in rows(db, "SELECT reason FROM rejects ORDER BY event_index")]
    assert reasons == [
        "event 1: has no 'action'",
        "event 2: payout must be a number, got 'ten'",
        "event 3: revenue is out of range: '1e+300'",
        "event 4: update has no adjustment_sequence_id, so it could be applied twice",
        "event 5: adjustment_sequence_id must be a 64-bit integer, got '18446744073709551616'",
        "event 6: adjust_action must be 1, 2, 'create' or 'update', got 'delete'",
        "event 7: must be a JSON object, got str",
    ]
    assert json.loads(one(db, "SELECT raw FROM rejects WHERE event_index = 2"))["payout"] == "ten"


def test_type_variants_never_crash(local_queue: LocalQueue, db: Path) -> None:
    odd = {
        **CLICK,
        "tune_event_id": "odd",
        "offer_id": "abc",
        "affiliate_id": 3.0,
        "datetime": "yesterday",
        "is_click_unique": "maybe",
        "num": "1",
        "status_code": [1],
        "country_code": 44,
        "goal_id": "²",  # str.isdigit() says yes, int() says no
    }
    deliver(local_queue, [odd])
    drain(local_queue, db)
    assert rows(
        db,
        "SELECT offer_id, affiliate_id, event_time, datetime_raw, is_click_unique, num, status_code, "
        "country_code, goal_id FROM events",
    ) == [(None, 3, None, "yesterday", None, 1, None, "44", None)]


def test_money_sums_without_float_drift(local_queue: LocalQueue, db: Path) -> None:
    # Ten clicks at 0.1 and ten at 0.2: in floats 0.1 * 10 + 0.2 * 10 drifts (2.9999999999999996); here it is 3.
    clicks = [
        {
            "action": "click",
            "tune_event_id": f"m{i}",
            "payout": 0.1 if i < 10 else 0.2,
            "offer_id": 1,
            "affiliate_id": 1,
            "datetime": 1700000000,
        }
        for i in range(20)
    ]
    deliver(local_queue, clicks)
    drain(local_queue, db)
    assert sum([0.1] * 10 + [0.2] * 10) != 3.0
    assert one(db, "SELECT sum(payout_micros) FROM events") == 3_000_000
    assert one(db, "SELECT gross_payout FROM daily_stats") == 3.0


def test_envelope_audit_row(local_queue: LocalQueue, db: Path) -> None:
    from tests.kit import tune_message

    assert local_queue.send_all([tune_message([CLICK, CONVERSION], network_id="acme", version=7)]).ok
    drain(local_queue, db)
    [(received_at, count, control, receives)] = rows(
        db, "SELECT received_at, event_count, control_json, receive_count FROM envelopes"
    )
    assert count == 2 and json.loads(control) == {"network_id": "acme", "version": 7} and receives == 1
    assert received_at > 1_700_000_000


def test_indexes_for_analyst_filters(local_queue: LocalQueue, db: Path) -> None:
    deliver(local_queue, [CLICK])
    drain(local_queue, db)
    indexed = {
        r[0]
        for r in rows(
            db,
            "SELECT il.name FROM pragma_index_list('events') AS l, "
            "pragma_index_info(l.name) AS il WHERE l.origin = 'c'",
        )
    }
    assert {"event_time", "action", "offer_id", "affiliate_id", "advertiser_id", "transaction_id"} <= indexed
    plan = " ".join(str(r) for r in rows(db, "EXPLAIN QUERY PLAN SELECT * FROM events WHERE offer_id = 12"))
    assert "events_by_offer" in plan


def test_lone_surrogate_is_a_reject_not_a_crash(local_queue: LocalQueue, db: Path) -> None:
    # Valid JSON, invalid Unicode: SQLite cannot store it as text, so it is kept (escaped) in rejects.
    body = (
        '{"events": [{"action": "click", "tune_event_id": "s1", "aff_sub": "\\ud800"}, '
        '{"action": "click", "tune_event_id": "s2"}]}'
    )
    assert local_queue.send_all([body]).ok
    drain(local_queue, db)
    assert rows(db, "SELECT tune_event_id FROM events") == [("s2",)]
    [(reason, raw)] = rows(db, "SELECT reason, raw FROM rejects")
    assert "lone UTF-16 surrogate" in reason and json.loads(raw)["aff_sub"] == "\ud800"


@given(st.integers(min_value=-62_135_596_800 - 86_400 * 2, max_value=253_402_300_799 + 86_400 * 2))
@example(0)
@example(-1)
@example(86_399)
@example(-62_135_596_800)  # 0001-01-01T00:00:00Z, the first second to_epoch accepts
@example(253_402_300_799)  # 9999-12-31T23:59:59Z, the last
@example(253_402_300_800)
@example(10**20)
@example(1_476_127_152)  # CLICK's datetime
@example(951_782_400)  # 2000-02-29, a leap day in a century year
@example(-2_203_891_200)  # 1900-03-01, the day after a century year with no leap day
def test_event_time_utc_is_spelt_as_iso_8601_everywhere(epoch: int) -> None:
    """`iso_utc` formats the time of day itself (datetime formatting per event was a tenth of the
    decoding time). It is held to a reference that shares no code with it, neither `_iso_utc` nor
    `datetime`: the calendar computed from the day count, years 1 to 9999, None outside."""
    assert iso_utc(epoch) == reference_iso_utc(epoch)


def reference_iso_utc(epoch: int) -> str | None:
    """YYYY-MM-DDTHH:MM:SSZ of a Unix time in the proleptic Gregorian calendar, by Howard Hinnant's
    days-to-civil algorithm (eras of 400 years, years starting on 1 March)."""
    days, second = divmod(epoch, 86_400)
    era, day_of_era = divmod(days + 719_468, 146_097)  # days since 0000-03-01, split in 400-year eras
    year_of_era = (day_of_era - day_of_era // 1_460 + day_of_era // 36_524 - day_of_era // 146_096) // 365
    day_of_year = day_of_era - (365 * year_of_era + year_of_era // 4 - year_of_era // 100)
    shifted_month = (5 * day_of_year + 2) // 153  # 0 is March
    day = day_of_year - (153 * shifted_month + 2) // 5 + 1
    month = shifted_month + 3 if shifted_month < 10 else shifted_month - 9
    year = year_of_era + 400 * era + (month <= 2)
    if not 1 <= year <= 9_999:
        return None
    hours, rest = divmod(second, 3_600)
    return f"{year:04d}-{month:02d}-{day:02d}T{hours:02d}:{rest // 60:02d}:{rest % 60:02d}Z"


def test_the_reference_calendar_knows_fixed_dates() -> None:
    """The reference itself, on dates known from outside the code."""
    assert reference_iso_utc(0) == "1970-01-01T00:00:00Z"
    assert reference_iso_utc(-1) == "1969-12-31T23:59:59Z"
    assert reference_iso_utc(951_868_799) == "2000-02-29T23:59:59Z"
    assert reference_iso_utc(1_709_164_800) == "2024-02-29T00:00:00Z"
    assert reference_iso_utc(-62_135_596_800) == "0001-01-01T00:00:00Z"
    assert reference_iso_utc(253_402_300_799) == "9999-12-31T23:59:59Z"
    assert reference_iso_utc(253_402_300_800) is None and reference_iso_utc(-62_135_596_801) is None
