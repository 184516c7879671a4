-- A hot SKU's stock split into buckets on different Redis partitions (engine/buckets.py). PostgreSQL keeps
-- one inventory row per SKU, summed over the buckets; units withdrawn from one bucket and not yet deposited
-- into another are moving_count. Each bucket's partition is applied on its own, so moving_count may be
-- below zero for a moment (a deposit applied before its withdrawal); the counts always add up.
ALTER TABLE inventory ADD COLUMN moving_count integer NOT NULL DEFAULT 0;
-- How many buckets the SKU's stock is split into (from its buckets' bucket_set events): what a rebuild of
-- Redis from PostgreSQL lays the sale out in (flashsale reconcile --repair redis-from-postgres).
ALTER TABLE products ADD COLUMN buckets integer NOT NULL DEFAULT 1 CHECK (buckets BETWEEN 1 AND 64);
ALTER TABLE inventory DROP CONSTRAINT inventory_counts_add_up;
ALTER TABLE inventory ADD CONSTRAINT inventory_counts_add_up
  CHECK (available_count + reserved_count + sold_count + moving_count = total_count);
