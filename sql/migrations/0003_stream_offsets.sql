-- How far the write-behind worker has applied each partition's Redis stream. Updated in the same
-- transaction as the rows a batch changes, so PostgreSQL always equals an exact prefix of each stream.

CREATE TABLE stream_offsets (
  partition       integer PRIMARY KEY CHECK (partition >= 0),
  applied_id      text NOT NULL DEFAULT '0-0' CHECK (applied_id ~ '^[0-9]+-[0-9]+$'),
  applied_events  bigint NOT NULL DEFAULT 0 CHECK (applied_events >= 0),
  updated_at      timestamptz NOT NULL DEFAULT now()
);
