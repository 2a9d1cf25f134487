-- Version 2: the analyst views of the SQLite store (db/migrations/0004_exact_views.sql), with
-- the same names, columns, column order and results. PostgreSQL spellings:
--   * money: sum() of bigint is numeric, exact and unbounded, so the two-part sums SQLite needs
--     against overflow are plain sums here; currency units are micro-units * 0.000001 with
--     trim_scale: an exact numeric that shows 0.05, never 0.050000 or float noise (SQLite gives
--     the REAL nearest to the same exact value);
--   * counts: sum() (numeric, never overflows), where SQLite casts total() back to an integer;
--   * days: to_char(event_time_utc AT TIME ZONE 'UTC', 'YYYY-MM-DD'), where SQLite takes the
--     first 10 characters of the ISO text; the same UTC calendar day;
--   * times (*_utc): timestamptz, where SQLite has ISO-8601 text.

-- One row per entry that counts: each event as received (kind 'event'), and each update of a
-- stored event (kind 'update', with its adjustment_sequence_id), under the event's dimensions;
-- money in exact integer micro-units. Summing every entry gives the net amounts, summing the
-- 'event' entries the gross ones. The base of the summing views, and of exact sums of your own.
-- Updates whose event has not arrived are in adjustments_pending instead.
CREATE VIEW ledger AS
SELECT
    e.tune_event_id,
    'event' AS kind,
    NULL::bigint AS adjustment_sequence_id,
    e.action,
    e.event_time,
    to_char(e.event_time_utc AT TIME ZONE 'UTC', 'YYYY-MM-DD') AS date,
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
    to_char(e.event_time_utc AT TIME ZONE 'UTC', 'YYYY-MM-DD') AS date,
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
-- counts as 1.
CREATE VIEW events_reconciled AS
SELECT
    e.tune_event_id,
    e.action,
    e.created_from_adjustment,
    e.event_time_utc,
    to_char(e.event_time_utc AT TIME ZONE 'UTC', 'YYYY-MM-DD') AS date,
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
    trim_scale(coalesce(e.payout_micros, 0) * 0.000001) AS gross_payout,
    trim_scale((coalesce(e.payout_micros, 0) + coalesce(a.payout_micros, 0)) * 0.000001) AS payout,
    trim_scale(coalesce(e.revenue_micros, 0) * 0.000001) AS gross_revenue,
    trim_scale((coalesce(e.revenue_micros, 0) + coalesce(a.revenue_micros, 0)) * 0.000001) AS revenue,
    trim_scale(coalesce(e.sale_amount_micros, 0) * 0.000001) AS gross_sale_amount,
    trim_scale((coalesce(e.sale_amount_micros, 0) + coalesce(a.sale_amount_micros, 0)) * 0.000001) AS sale_amount
FROM events e
LEFT JOIN (
    SELECT
        tune_event_id,
        count(*) AS updates,
        sum(num) AS num,
        sum(payout_micros) AS payout_micros,
        sum(revenue_micros) AS revenue_micros,
        sum(sale_amount_micros) AS sale_amount_micros
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
    trim_scale(a.payout_micros * 0.000001) AS payout,
    trim_scale(a.revenue_micros * 0.000001) AS revenue,
    trim_scale(a.sale_amount_micros * 0.000001) AS sale_amount,
    trim_scale(a.current_payout_micros * 0.000001) AS current_payout,
    trim_scale(a.current_revenue_micros * 0.000001) AS current_revenue,
    to_timestamp(a.ingested_at) AS ingested_at_utc
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
    coalesce(sum(num) FILTER (WHERE kind = 'event'), 0) AS gross_num,
    coalesce(sum(num), 0) AS net_num,
    trim_scale(coalesce(sum(payout_micros) FILTER (WHERE kind = 'event'), 0) * 0.000001) AS gross_payout,
    trim_scale(coalesce(sum(payout_micros), 0) * 0.000001) AS net_payout,
    trim_scale(coalesce(sum(revenue_micros) FILTER (WHERE kind = 'event'), 0) * 0.000001) AS gross_revenue,
    trim_scale(coalesce(sum(revenue_micros), 0) * 0.000001) AS net_revenue
FROM ledger
GROUP BY date, currency, action, offer_id, affiliate_id;

-- By UTC day, currency and offer.
CREATE VIEW daily_offers AS
SELECT
    date,
    currency,
    offer_id,
    coalesce(sum(num) FILTER (WHERE action = 'impression'), 0) AS impressions,
    coalesce(sum(num) FILTER (WHERE action = 'click'), 0) AS clicks,
    coalesce(sum(num) FILTER (WHERE action = 'conversion'), 0) AS conversions,
    trim_scale(coalesce(sum(payout_micros) FILTER (WHERE kind = 'event'), 0) * 0.000001) AS gross_payout,
    trim_scale(coalesce(sum(payout_micros), 0) * 0.000001) AS net_payout,
    trim_scale(coalesce(sum(revenue_micros) FILTER (WHERE kind = 'event'), 0) * 0.000001) AS gross_revenue,
    trim_scale(coalesce(sum(revenue_micros), 0) * 0.000001) AS net_revenue
FROM ledger
GROUP BY date, currency, offer_id;

-- By UTC day and currency, with what adjustments changed (gross - net = minus the updates).
CREATE VIEW daily_totals AS
SELECT
    date,
    currency,
    count(*) FILTER (WHERE kind = 'event') AS events,
    coalesce(sum(num) FILTER (WHERE action = 'impression'), 0) AS impressions,
    coalesce(sum(num) FILTER (WHERE action = 'click'), 0) AS clicks,
    coalesce(sum(num) FILTER (WHERE action = 'conversion'), 0) AS conversions,
    trim_scale(coalesce(sum(payout_micros) FILTER (WHERE kind = 'event'), 0) * 0.000001) AS gross_payout,
    trim_scale(coalesce(sum(payout_micros), 0) * 0.000001) AS net_payout,
    trim_scale(coalesce(sum(revenue_micros) FILTER (WHERE kind = 'event'), 0) * 0.000001) AS gross_revenue,
    trim_scale(coalesce(sum(revenue_micros), 0) * 0.000001) AS net_revenue,
    trim_scale(-coalesce(sum(payout_micros) FILTER (WHERE kind = 'update'), 0) * 0.000001) AS payout_impact,
    trim_scale(-coalesce(sum(revenue_micros) FILTER (WHERE kind = 'update'), 0) * 0.000001) AS revenue_impact
FROM ledger
GROUP BY date, currency;

-- All time, by currency and action.
CREATE VIEW totals AS
SELECT
    currency,
    action,
    count(*) FILTER (WHERE kind = 'event') AS events,
    coalesce(sum(num) FILTER (WHERE kind = 'event'), 0) AS gross_num,
    coalesce(sum(num), 0) AS net_num,
    trim_scale(coalesce(sum(payout_micros) FILTER (WHERE kind = 'event'), 0) * 0.000001) AS gross_payout,
    trim_scale(coalesce(sum(payout_micros), 0) * 0.000001) AS net_payout,
    trim_scale(coalesce(sum(revenue_micros) FILTER (WHERE kind = 'event'), 0) * 0.000001) AS gross_revenue,
    trim_scale(coalesce(sum(revenue_micros), 0) * 0.000001) AS net_revenue
FROM ledger
GROUP BY currency, action;

-- Rejects by the UTC day they were rejected and by reason; the reason without the event's
-- position in its message and without the offending value, so alike rejects group together.
CREATE VIEW rejects_daily AS
SELECT date, reason, count(*) AS rejects, to_timestamp(max(rejected_at)) AS last_seen_utc
FROM (
    SELECT
        to_char(to_timestamp(rejected_at) AT TIME ZONE 'UTC', 'YYYY-MM-DD') AS date,
        rejected_at,
        CASE WHEN strpos(bare, ', got ') > 0 THEN substr(bare, 1, strpos(bare, ', got ') - 1) ELSE bare END AS reason
    FROM (
        SELECT
            rejected_at,
            -- SQLite: reason GLOB 'event [0-9]*: *'
            CASE WHEN reason ~ '^event [0-9].*: ' THEN substr(reason, strpos(reason, ': ') + 2) ELSE reason END
                AS bare
        FROM rejects
    ) unnumbered
) grouped
GROUP BY date, reason;

-- How long events took from their `datetime` to being stored, by UTC day of the event.
CREATE VIEW ingestion_lag AS
SELECT
    to_char(event_time_utc AT TIME ZONE 'UTC', 'YYYY-MM-DD') AS date,
    count(*) AS events,
    min(ingested_at - event_time) AS min_lag_s,
    round(avg(ingested_at - event_time))::bigint AS avg_lag_s,
    max(ingested_at - event_time) AS max_lag_s,
    to_timestamp(max(ingested_at)) AS last_ingested_utc
FROM events
WHERE event_time IS NOT NULL
GROUP BY 1;
