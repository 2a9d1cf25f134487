-- Version 2: the adjustment ledger, the envelope audit trail, analyst views and indexes.

CREATE TABLE adjustments (
    adjustment_sequence_id INTEGER PRIMARY KEY,  -- 64-bit; the ledger key, never applied twice
    tune_event_id TEXT NOT NULL,                 -- the original event this update applies to
    action TEXT NOT NULL,
    num INTEGER,                                 -- deltas
    payout_micros INTEGER,
    revenue_micros INTEGER,
    sale_amount_micros INTEGER,
    current_payout_micros INTEGER,               -- absolute values after the update
    current_revenue_micros INTEGER,
    adjustment_timestamp INTEGER,
    adjustment_time_utc TEXT,
    status TEXT,
    transaction_id TEXT,
    offer_id INTEGER,
    affiliate_id INTEGER,
    advertiser_id INTEGER,
    goal_id INTEGER,
    currency TEXT,
    raw_json TEXT NOT NULL,
    message_id TEXT,
    ingested_at INTEGER NOT NULL
);
CREATE INDEX adjustments_by_event ON adjustments (tune_event_id, adjustment_sequence_id);

CREATE TABLE envelopes (
    message_id TEXT PRIMARY KEY,
    received_at INTEGER NOT NULL,
    receive_count INTEGER,
    control_json TEXT,                           -- the envelope's non-event fields, verbatim
    event_count INTEGER NOT NULL
);

CREATE INDEX events_by_time ON events (event_time);
CREATE INDEX events_by_action_time ON events (action, event_time);
CREATE INDEX events_by_offer ON events (offer_id, event_time);
CREATE INDEX events_by_affiliate ON events (affiliate_id, event_time);
CREATE INDEX events_by_advertiser ON events (advertiser_id, event_time);
CREATE INDEX events_by_transaction ON events (transaction_id);

-- Each event after all its updates. A standard event without `num` counts as 1.
CREATE VIEW events_reconciled AS
SELECT
    e.tune_event_id,
    e.action,
    e.created_from_adjustment,
    e.event_time,
    e.event_time_utc,
    coalesce(e.date, substr(e.event_time_utc, 1, 10)) AS date,
    e.transaction_id,
    e.offer_id,
    e.affiliate_id,
    e.advertiser_id,
    e.goal_id,
    e.currency,
    coalesce(e.num, 1) AS gross_num,
    coalesce(e.payout_micros, 0) / 1e6 AS gross_payout,
    coalesce(e.revenue_micros, 0) / 1e6 AS gross_revenue,
    coalesce(e.num, 1) + coalesce(a.num, 0) AS num,
    (coalesce(e.payout_micros, 0) + coalesce(a.payout_micros, 0)) / 1e6 AS payout,
    (coalesce(e.revenue_micros, 0) + coalesce(a.revenue_micros, 0)) / 1e6 AS revenue,
    coalesce(
        (SELECT s.status FROM adjustments s
          WHERE s.tune_event_id = e.tune_event_id AND s.status IS NOT NULL
          ORDER BY s.adjustment_sequence_id DESC LIMIT 1),
        e.status
    ) AS status,
    coalesce(a.updates, 0) AS updates,
    e.payout_micros AS gross_payout_micros,
    e.revenue_micros AS gross_revenue_micros,
    coalesce(e.payout_micros, 0) + coalesce(a.payout_micros, 0) AS payout_micros,
    coalesce(e.revenue_micros, 0) + coalesce(a.revenue_micros, 0) AS revenue_micros
FROM events e
LEFT JOIN (
    SELECT tune_event_id, count(*) AS updates, sum(num) AS num,
           sum(payout_micros) AS payout_micros, sum(revenue_micros) AS revenue_micros
    FROM adjustments GROUP BY tune_event_id
) a ON a.tune_event_id = e.tune_event_id;

-- Updates whose original event has not arrived (yet).
CREATE VIEW adjustments_pending AS
SELECT a.* FROM adjustments a
WHERE NOT EXISTS (SELECT 1 FROM events e WHERE e.tune_event_id = a.tune_event_id);

-- Sums are taken over integer micro-units and converted once, so they never drift.
CREATE VIEW daily_stats AS
SELECT
    date,
    action,
    offer_id,
    affiliate_id,
    count(*) AS events,
    sum(gross_num) AS gross_num,
    round(sum(coalesce(gross_payout_micros, 0)) / 1e6, 6) AS gross_payout,
    round(sum(coalesce(gross_revenue_micros, 0)) / 1e6, 6) AS gross_revenue,
    sum(num) AS net_num,
    round(sum(payout_micros) / 1e6, 6) AS net_payout,
    round(sum(revenue_micros) / 1e6, 6) AS net_revenue
FROM events_reconciled
GROUP BY date, action, offer_id, affiliate_id;
