-- Version 1: every standard event once, and what could not be stored.
-- Money is stored as integer micro-units (1/1,000,000 of the currency unit): exact to the
-- cent and below (CPM/CPC payouts have fractions of a cent), and sums never drift.

-- `events` is an ordinary rowid table: rows append in arrival order and only the narrow primary-key
-- index takes random inserts (bench/RESULTS.md measured WITHOUT ROWID, keyed by a random id, at less
-- than half the speed once the table outgrows the page cache).
CREATE TABLE events (
    tune_event_id TEXT PRIMARY KEY,          -- tune_event_id, else event_id, else 'sha256:' + hash of the event
    key_source TEXT NOT NULL,                -- which of the three gave the key
    action TEXT NOT NULL,                    -- impression, click, conversion
    created_from_adjustment INTEGER NOT NULL DEFAULT 0,
    event_time INTEGER,                      -- epoch seconds (UTC) from `datetime`
    event_time_utc TEXT,                     -- the same as ISO-8601 UTC
    datetime_raw TEXT,                       -- `datetime` exactly as sent
    date TEXT,
    transaction_id TEXT,
    conversion_id INTEGER,
    affiliate_click_id TEXT,
    network_id TEXT,
    offer_id INTEGER,
    affiliate_id INTEGER,
    affiliate_manager_id INTEGER,
    advertiser_id INTEGER,
    advertiser_manager_id INTEGER,
    ad_campaign_id INTEGER,
    ad_campaign_creative_id INTEGER,
    creative_url_id INTEGER,
    browser_id INTEGER,
    customer_id INTEGER,
    payout_group_id INTEGER,
    revenue_group_id INTEGER,
    goal_id INTEGER,
    offer_file_id INTEGER,
    offer_url_id INTEGER,
    status_code INTEGER,
    num INTEGER,
    payout_micros INTEGER,
    revenue_micros INTEGER,
    sale_amount_micros INTEGER,
    current_payout_micros INTEGER,
    current_revenue_micros INTEGER,
    currency TEXT,
    payout_type TEXT,
    revenue_type TEXT,
    status TEXT,
    source TEXT,
    aff_sub TEXT, aff_sub2 TEXT, aff_sub3 TEXT, aff_sub4 TEXT, aff_sub5 TEXT,
    adv_sub TEXT, adv_sub2 TEXT, adv_sub3 TEXT, adv_sub4 TEXT, adv_sub5 TEXT,
    adv_unique1 TEXT, adv_unique2 TEXT, adv_unique3 TEXT, adv_unique4 TEXT, adv_unique5 TEXT,
    affiliate_unique1 TEXT, affiliate_unique2 TEXT, affiliate_unique3 TEXT, affiliate_unique4 TEXT,
    affiliate_unique5 TEXT,
    app_version TEXT,
    adjustment_timestamp INTEGER,
    created_timestamp INTEGER,
    timezone TEXT,
    offer_expires INTEGER,
    session_datetime TEXT,
    ip TEXT,
    user_agent TEXT,
    country_code TEXT,
    mobile_carrier TEXT,
    req_connection_speed TEXT,
    click_url TEXT,
    is_click_unique INTEGER,
    session_on_impression INTEGER,
    -- Named in TUNE's raw logs and Network API, not yet seen in a Firehose payload.
    session_ip TEXT,
    refer TEXT,
    pixel_refer TEXT,
    device_brand TEXT,
    device_model TEXT,
    device_os TEXT,
    device_os_version TEXT,
    device_id TEXT,
    android_id TEXT,
    ios_ifa TEXT,
    ios_ifv TEXT,
    google_aid TEXT,
    user_id TEXT,
    promo_code TEXT,
    order_id TEXT,
    sku_id TEXT,
    product_category TEXT,
    is_adjustment INTEGER,
    raw_json TEXT NOT NULL,                  -- the whole event as received: nothing is ever lost
    message_id TEXT,                         -- queue message that first delivered it
    ingested_at INTEGER NOT NULL
);

CREATE TABLE rejects (
    reject_key TEXT PRIMARY KEY,             -- hash of the raw input: a redelivery adds no second row
    message_id TEXT,
    event_index INTEGER,                     -- NULL when the whole message could not be decoded
    reason TEXT NOT NULL,
    raw TEXT NOT NULL,
    rejected_at INTEGER NOT NULL
);
