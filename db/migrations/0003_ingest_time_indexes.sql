-- Version 3: indexes on the time each row was written, so `read_queue.py merge` copies only
-- what is new since its last run (a range scan from its high-water mark) instead of reading
-- every row of every host's file again. Times grow with each batch, so the new index entries
-- land at the end of each b-tree: cheap to maintain on the write path.

CREATE INDEX events_by_ingested ON events (ingested_at);
CREATE INDEX adjustments_by_ingested ON adjustments (ingested_at);
CREATE INDEX envelopes_by_received ON envelopes (received_at);
CREATE INDEX rejects_by_time ON rejects (rejected_at);
