-- Version 4: analyst views that are exact by construction and cannot fail, whatever was stored.
--
-- Money. Tables hold integer micro-units. SQLite's sum() raises "integer overflow" (and the whole
-- query fails) once a running total passes 2^63 - 1 micro-units, about 9,223 events at the
-- largest payout the worker accepts (1e9 units). So money is summed in two integer parts that
-- cannot overflow for any realistic row count:
--     units = sum(x / 1000000)   (|x / 1000000| <= 1e9 per row: overflows after 9.2e9 rows)
--     rest  = sum(x % 1000000)   (|x % 1000000| <  1e6 per row: overflows after 9.2e12 rows)
-- and combined once, (units * 1000000 + rest) / 1e6. SQLite's `*` and `+` turn to REAL instead
-- of failing when they overflow, so the combination never fails either. The integer
-- units * 1000000 + rest is exact while the total is below 2^63 micro-units (9.2e12 currency
-- units); the one division gives the REAL nearest to it, which sqlite3 (15 significant digits)
-- and Datasette (shortest repr) show as the exact decimal: every micro-unit below 1e9 currency
-- units, every cent below 2^63 micro-units.
--
-- Sums are taken over `ledger` (each event as received, and each update as its own row), never
-- over per-event net amounts, so a total is exact however large the amounts inside it are.
--
-- Counts are summed with total() (a double, which never raises) and cast back to an integer: exact
-- while a group's counts stay below 2^53 (9.0e15), i.e. 9e9 events at the largest num (1e6).
--
-- Days. `date` in every view is the UTC calendar day of `event_time` (substr of event_time_utc):
-- one definition for every view. TUNE's own `date` field (time zone unstated) stays in
-- `events.date` as sent and is used by no view.
--
-- Currency. Money is summed per currency wherever it is summed. An update's deltas count in the
-- currency of the event they change.

DROP VIEW IF EXISTS daily_stats;
DROP VIEW IF EXISTS adjustments_pending;
DROP VIEW IF EXISTS events_reconciled;

-- One row per entry that counts: each event as received (kind 'event'), and each update of a
-- stored event (kind 'update', with its adjustment_sequence_id), under the event's dimensions;
-- money in exact integer micro-units. Summing every entry gives the net amounts, summing the
-- 'event' entries the gross ones. The base of the summing views, and of exact sums of your own.
-- Updates whose event has not arrived are in adjustments_pending instead.
CREATE VIEW ledger AS
SELECT
    e.tune_event_id,
    'event' AS kind,
    NULL AS adjustment_sequence_id,
    e.action,
    e.event_time,
    substr(e.event_time_utc, 1, 10) AS date,
    e.currency,
    e.offer_id,
    e.affiliate_id,
    e.advertiser_id,
    coalesce(e.num, 1) AS num,
    e.payout_micros,
    e.revenue_micros,
    e.sale_amount_micros
FROM events e
UNION ALL
SELECT
    e.tune_event_id,
    'update' AS kind,
    a.adjustment_sequence_id,
    e.action,
    e.event_time,
    substr(e.event_time_utc, 1, 10) AS date,
    e.currency,
    e.offer_id,
    e.affiliate_id,
    e.advertiser_id,
    a.num,
    a.payout_micros,
    a.revenue_micros,
    a.sale_amount_micros
FROM adjustments a
JOIN events e ON e.tune_event_id = a.tune_event_id;

-- Each event after all its updates, money in currency units. A standard event without `num`
-- counts as 1. One event's own net amount is exact below 2^63 micro-units (9,223 updates of the
-- largest amount); past that it is a REAL, approximate but never an error.
CREATE VIEW events_reconciled AS
SELECT
    e.tune_event_id,
    e.action,
    e.created_from_adjustment,
    e.event_time_utc,
    substr(e.event_time_utc, 1, 10) AS date,
    e.currency,
    e.offer_id,
    e.affiliate_id,
    e.advertiser_id,
    e.goal_id,
    e.transaction_id,
    coalesce(
        (SELECT s.status FROM adjustments s
          WHERE s.tune_event_id = e.tune_event_id AND s.status IS NOT NULL
          ORDER BY s.adjustment_sequence_id DESC LIMIT 1),
        e.status
    ) AS status,
    coalesce(a.updates, 0) AS updates,
    coalesce(e.num, 1) AS gross_num,
    coalesce(e.num, 1) + coalesce(a.num, 0) AS num,
    coalesce(e.payout_micros, 0) / 1e6 AS gross_payout,
    (coalesce(e.payout_micros, 0) + coalesce(a.payout_units * 1000000 + a.payout_rest, 0)) / 1e6 AS payout,
    coalesce(e.revenue_micros, 0) / 1e6 AS gross_revenue,
    (coalesce(e.revenue_micros, 0) + coalesce(a.revenue_units * 1000000 + a.revenue_rest, 0)) / 1e6 AS revenue,
    coalesce(e.sale_amount_micros, 0) / 1e6 AS gross_sale_amount,
    (coalesce(e.sale_amount_micros, 0) + coalesce(a.sale_amount_units * 1000000 + a.sale_amount_rest, 0)) / 1e6
        AS sale_amount
FROM events e
LEFT JOIN (
    SELECT
        tune_event_id,
        count(*) AS updates,
        CAST(total(num) AS INTEGER) AS num,
        sum(payout_micros / 1000000) AS payout_units,
        sum(payout_micros % 1000000) AS payout_rest,
        sum(revenue_micros / 1000000) AS revenue_units,
        sum(revenue_micros % 1000000) AS revenue_rest,
        sum(sale_amount_micros / 1000000) AS sale_amount_units,
        sum(sale_amount_micros % 1000000) AS sale_amount_rest
    FROM adjustments
    GROUP BY tune_event_id
) a ON a.tune_event_id = e.tune_event_id;

-- Updates whose original event has not arrived (yet): deltas in currency units, times in UTC.
CREATE VIEW adjustments_pending AS
SELECT
    a.adjustment_sequence_id,
    a.tune_event_id,
    a.action,
    a.adjustment_time_utc,
    a.status,
    a.currency,
    a.offer_id,
    a.affiliate_id,
    a.advertiser_id,
    a.goal_id,
    a.transaction_id,
    a.num,
    a.payout_micros / 1e6 AS payout,
    a.revenue_micros / 1e6 AS revenue,
    a.sale_amount_micros / 1e6 AS sale_amount,
    a.current_payout_micros / 1e6 AS current_payout,
    a.current_revenue_micros / 1e6 AS current_revenue,
    strftime('%Y-%m-%dT%H:%M:%SZ', a.ingested_at, 'unixepoch') AS ingested_at_utc
FROM adjustments a
WHERE NOT EXISTS (SELECT 1 FROM events e WHERE e.tune_event_id = a.tune_event_id);

-- By UTC day, currency, action, offer and affiliate.
CREATE VIEW daily_stats AS
SELECT
    date,
    currency,
    action,
    offer_id,
    affiliate_id,
    count(*) FILTER (WHERE kind = 'event') AS events,
    CAST(total(num) FILTER (WHERE kind = 'event') AS INTEGER) AS gross_num,
    CAST(total(num) AS INTEGER) AS net_num,
    (coalesce(sum(payout_micros / 1000000) FILTER (WHERE kind = 'event'), 0) * 1000000
        + coalesce(sum(payout_micros % 1000000) FILTER (WHERE kind = 'event'), 0)) / 1e6 AS gross_payout,
    (coalesce(sum(payout_micros / 1000000), 0) * 1000000
        + coalesce(sum(payout_micros % 1000000), 0)) / 1e6 AS net_payout,
    (coalesce(sum(revenue_micros / 1000000) FILTER (WHERE kind = 'event'), 0) * 1000000
        + coalesce(sum(revenue_micros % 1000000) FILTER (WHERE kind = 'event'), 0)) / 1e6 AS gross_revenue,
    (coalesce(sum(revenue_micros / 1000000), 0) * 1000000
        + coalesce(sum(revenue_micros % 1000000), 0)) / 1e6 AS net_revenue
FROM ledger
GROUP BY date, currency, action, offer_id, affiliate_id;

-- By UTC day, currency and offer.
CREATE VIEW daily_offers AS
SELECT
    date,
    currency,
    offer_id,
    CAST(total(num) FILTER (WHERE action = 'impression') AS INTEGER) AS impressions,
    CAST(total(num) FILTER (WHERE action = 'click') AS INTEGER) AS clicks,
    CAST(total(num) FILTER (WHERE action = 'conversion') AS INTEGER) AS conversions,
    (coalesce(sum(payout_micros / 1000000) FILTER (WHERE kind = 'event'), 0) * 1000000
        + coalesce(sum(payout_micros % 1000000) FILTER (WHERE kind = 'event'), 0)) / 1e6 AS gross_payout,
    (coalesce(sum(payout_micros / 1000000), 0) * 1000000
        + coalesce(sum(payout_micros % 1000000), 0)) / 1e6 AS net_payout,
    (coalesce(sum(revenue_micros / 1000000) FILTER (WHERE kind = 'event'), 0) * 1000000
        + coalesce(sum(revenue_micros % 1000000) FILTER (WHERE kind = 'event'), 0)) / 1e6 AS gross_revenue,
    (coalesce(sum(revenue_micros / 1000000), 0) * 1000000
        + coalesce(sum(revenue_micros % 1000000), 0)) / 1e6 AS net_revenue
FROM ledger
GROUP BY date, currency, offer_id;

-- By UTC day and currency, with what adjustments changed (gross - net = minus the updates).
CREATE VIEW daily_totals AS
SELECT
    date,
    currency,
    count(*) FILTER (WHERE kind = 'event') AS events,
    CAST(total(num) FILTER (WHERE action = 'impression') AS INTEGER) AS impressions,
    CAST(total(num) FILTER (WHERE action = 'click') AS INTEGER) AS clicks,
    CAST(total(num) FILTER (WHERE action = 'conversion') AS INTEGER) AS conversions,
    (coalesce(sum(payout_micros / 1000000) FILTER (WHERE kind = 'event'), 0) * 1000000
        + coalesce(sum(payout_micros % 1000000) FILTER (WHERE kind = 'event'), 0)) / 1e6 AS gross_payout,
    (coalesce(sum(payout_micros / 1000000), 0) * 1000000
        + coalesce(sum(payout_micros % 1000000), 0)) / 1e6 AS net_payout,
    (coalesce(sum(revenue_micros / 1000000) FILTER (WHERE kind = 'event'), 0) * 1000000
        + coalesce(sum(revenue_micros % 1000000) FILTER (WHERE kind = 'event'), 0)) / 1e6 AS gross_revenue,
    (coalesce(sum(revenue_micros / 1000000), 0) * 1000000
        + coalesce(sum(revenue_micros % 1000000), 0)) / 1e6 AS net_revenue,
    -(coalesce(sum(payout_micros / 1000000) FILTER (WHERE kind = 'update'), 0) * 1000000
        + coalesce(sum(payout_micros % 1000000) FILTER (WHERE kind = 'update'), 0)) / 1e6 AS payout_impact,
    -(coalesce(sum(revenue_micros / 1000000) FILTER (WHERE kind = 'update'), 0) * 1000000
        + coalesce(sum(revenue_micros % 1000000) FILTER (WHERE kind = 'update'), 0)) / 1e6 AS revenue_impact
FROM ledger
GROUP BY date, currency;

-- All time, by currency and action.
CREATE VIEW totals AS
SELECT
    currency,
    action,
    count(*) FILTER (WHERE kind = 'event') AS events,
    CAST(total(num) FILTER (WHERE kind = 'event') AS INTEGER) AS gross_num,
    CAST(total(num) AS INTEGER) AS net_num,
    (coalesce(sum(payout_micros / 1000000) FILTER (WHERE kind = 'event'), 0) * 1000000
        + coalesce(sum(payout_micros % 1000000) FILTER (WHERE kind = 'event'), 0)) / 1e6 AS gross_payout,
    (coalesce(sum(payout_micros / 1000000), 0) * 1000000
        + coalesce(sum(payout_micros % 1000000), 0)) / 1e6 AS net_payout,
    (coalesce(sum(revenue_micros / 1000000) FILTER (WHERE kind = 'event'), 0) * 1000000
        + coalesce(sum(revenue_micros % 1000000) FILTER (WHERE kind = 'event'), 0)) / 1e6 AS gross_revenue,
    (coalesce(sum(revenue_micros / 1000000), 0) * 1000000
        + coalesce(sum(revenue_micros % 1000000), 0)) / 1e6 AS net_revenue
FROM ledger
GROUP BY currency, action;

-- Rejects by the UTC day they were rejected and by reason; the reason without the event's
-- position in its message and without the offending value, so alike rejects group together.
CREATE VIEW rejects_daily AS
SELECT date, reason, count(*) AS rejects, strftime('%Y-%m-%dT%H:%M:%SZ', max(rejected_at), 'unixepoch') AS last_seen_utc
FROM (
    SELECT
        strftime('%Y-%m-%d', rejected_at, 'unixepoch') AS date,
        rejected_at,
        CASE WHEN instr(bare, ', got ') > 0 THEN substr(bare, 1, instr(bare, ', got ') - 1) ELSE bare END AS reason
    FROM (
        SELECT
            rejected_at,
            CASE WHEN reason GLOB 'event [0-9]*: *' THEN substr(reason, instr(reason, ': ') + 2) ELSE reason END
                AS bare
        FROM rejects
    )
)
GROUP BY date, reason;

-- How long events took from their `datetime` to being stored, by UTC day of the event.
CREATE VIEW ingestion_lag AS
SELECT
    substr(event_time_utc, 1, 10) AS date,
    count(*) AS events,
    min(ingested_at - event_time) AS min_lag_s,
    CAST(round(total(ingested_at - event_time) / count(*)) AS INTEGER) AS avg_lag_s,
    max(ingested_at - event_time) AS max_lag_s,
    strftime('%Y-%m-%dT%H:%M:%SZ', max(ingested_at), 'unixepoch') AS last_ingested_utc
FROM events
WHERE event_time IS NOT NULL
GROUP BY substr(event_time_utc, 1, 10);
