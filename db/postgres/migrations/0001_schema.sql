-- Version 1: the tables and indexes of the SQLite store (db/migrations/0001-0003), in
-- PostgreSQL's types (the views are version 2). The same names, columns, column order and meanings, so a documented query
-- runs on both stores. Differences, each for a reason:
--   * money: bigint micro-units, as in SQLite (exact; sums never drift);
--   * event_time_utc and adjustment_time_utc are timestamptz (SQLite: ISO-8601 text), beside the
--     epoch seconds of event_time and adjustment_timestamp;
--   * 0/1 flags are smallint, not boolean, so `WHERE is_click_unique = 1` means the same;
--   * `events` is partitioned by month of event_time_utc (db/postgres/partitions.py creates the
--     months as rows need them); events with no usable time go to `events_default`.

CREATE TABLE events (
    tune_event_id text NOT NULL,
    key_source text NOT NULL,
    action text NOT NULL,
    created_from_adjustment smallint NOT NULL DEFAULT 0,
    event_time bigint,
    event_time_utc timestamptz,
    datetime_raw text,
    date text,
    transaction_id text,
    conversion_id bigint,
    affiliate_click_id text,
    network_id text,
    offer_id bigint,
    affiliate_id bigint,
    affiliate_manager_id bigint,
    advertiser_id bigint,
    advertiser_manager_id bigint,
    ad_campaign_id bigint,
    ad_campaign_creative_id bigint,
    creative_url_id bigint,
    browser_id bigint,
    customer_id bigint,
    payout_group_id bigint,
    revenue_group_id bigint,
    goal_id bigint,
    offer_file_id bigint,
    offer_url_id bigint,
    status_code bigint,
    num bigint,
    payout_micros bigint,
    revenue_micros bigint,
    sale_amount_micros bigint,
    current_payout_micros bigint,
    current_revenue_micros bigint,
    currency text,
    payout_type text,
    revenue_type text,
    status text,
    source text,
    aff_sub text, aff_sub2 text, aff_sub3 text, aff_sub4 text, aff_sub5 text,
    adv_sub text, adv_sub2 text, adv_sub3 text, adv_sub4 text, adv_sub5 text,
    adv_unique1 text, adv_unique2 text, adv_unique3 text, adv_unique4 text, adv_unique5 text,
    affiliate_unique1 text, affiliate_unique2 text, affiliate_unique3 text, affiliate_unique4 text,
    affiliate_unique5 text,
    app_version text,
    adjustment_timestamp bigint,
    created_timestamp bigint,
    timezone text,
    offer_expires bigint,
    session_datetime text,
    ip text,
    user_agent text,
    country_code text,
    mobile_carrier text,
    req_connection_speed text,
    click_url text,
    is_click_unique smallint,
    session_on_impression smallint,
    session_ip text,
    refer text,
    pixel_refer text,
    device_brand text,
    device_model text,
    device_os text,
    device_os_version text,
    device_id text,
    android_id text,
    ios_ifa text,
    ios_ifv text,
    google_aid text,
    user_id text,
    promo_code text,
    order_id text,
    sku_id text,
    product_category text,
    is_adjustment smallint,
    raw_json text NOT NULL,
    message_id text,
    ingested_at bigint NOT NULL,
    -- The key. A partitioned table's unique constraint must hold the partition key, so it is
    -- (tune_event_id, event_time_utc): a redelivered event carries the same time, lands in the
    -- same partition and is caught here. NULLS NOT DISTINCT (PostgreSQL 15): events with no time
    -- are deduplicated by their key alone. The same key with a *different* time is a second row
    -- here, where SQLite keeps the first (docs/scaling-out.md).
    CONSTRAINT events_key UNIQUE NULLS NOT DISTINCT (tune_event_id, event_time_utc)
) PARTITION BY RANGE (event_time_utc);

-- Events with no usable time (event_time_utc NULL), and any month the store chose not to create.
CREATE TABLE events_default PARTITION OF events DEFAULT;

CREATE TABLE rejects (
    reject_key text PRIMARY KEY,
    message_id text,
    event_index bigint,
    reason text NOT NULL,
    raw text NOT NULL,
    rejected_at bigint NOT NULL
);

CREATE TABLE adjustments (
    adjustment_sequence_id bigint PRIMARY KEY,
    tune_event_id text NOT NULL,
    action text NOT NULL,
    num bigint,
    payout_micros bigint,
    revenue_micros bigint,
    sale_amount_micros bigint,
    current_payout_micros bigint,
    current_revenue_micros bigint,
    adjustment_timestamp bigint,
    adjustment_time_utc timestamptz,
    status text,
    transaction_id text,
    offer_id bigint,
    affiliate_id bigint,
    advertiser_id bigint,
    goal_id bigint,
    currency text,
    raw_json text NOT NULL,
    message_id text,
    ingested_at bigint NOT NULL
);
CREATE INDEX adjustments_by_event ON adjustments (tune_event_id, adjustment_sequence_id);

CREATE TABLE envelopes (
    message_id text PRIMARY KEY,
    received_at bigint NOT NULL,
    receive_count bigint,
    control_json text,
    event_count bigint NOT NULL
);

CREATE INDEX events_by_time ON events (event_time);
CREATE INDEX events_by_action_time ON events (action, event_time);
CREATE INDEX events_by_offer ON events (offer_id, event_time);
CREATE INDEX events_by_affiliate ON events (affiliate_id, event_time);
CREATE INDEX events_by_advertiser ON events (advertiser_id, event_time);
CREATE INDEX events_by_transaction ON events (transaction_id);

CREATE INDEX events_by_ingested ON events (ingested_at);
CREATE INDEX adjustments_by_ingested ON adjustments (ingested_at);
CREATE INDEX envelopes_by_received ON envelopes (received_at);
CREATE INDEX rejects_by_time ON rejects (rejected_at);
