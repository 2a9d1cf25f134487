-- Version 3: what `read_queue.py merge` has loaded into this database from SQLite files (moving
-- existing hosts up to PostgreSQL). The same table, columns and meanings as the one merge keeps
-- in a SQLite target: per source file and table, the newest write time copied, so the next run
-- reads only from that mark (minus the overlap) onwards.

CREATE TABLE merge_sources (
    source text NOT NULL,            -- absolute path of the source file, on the host that ran merge
    table_name text NOT NULL,
    high_water bigint NOT NULL,      -- newest write time (epoch s) copied from that table
    rows_copied bigint NOT NULL,     -- new rows this source has contributed, over all runs
    merged_at bigint NOT NULL,       -- epoch s of the run that set the mark
    PRIMARY KEY (source, table_name)
);
