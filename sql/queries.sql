-- Named queries, loaded by name from Python (writeback.database.Queries), procrastinate-style:
-- a "-- name: <name> --" line, a one-line description, then the statement.
-- Batch statements take one array per column and unnest them: one round trip per statement, any batch size.
-- Their arrays are bound in binary (%(name)b): no per-element quoting, which otherwise costs a third of the CPU.

-- name: ensure_offset --
-- Creates a partition's offset row if missing and returns how far the stream has been applied.
WITH created AS (
  INSERT INTO stream_offsets (partition) VALUES (%(partition)s)
  ON CONFLICT (partition) DO NOTHING
  RETURNING applied_id
)
SELECT applied_id FROM created
UNION ALL
SELECT applied_id FROM stream_offsets WHERE partition = %(partition)s;

-- name: advance_offset --
-- Moves a partition's applied offset forward only if nobody else moved it (locks the row for the batch).
UPDATE stream_offsets
SET applied_id = %(applied_id)s, applied_events = applied_events + %(events)s, updated_at = now()
WHERE partition = %(partition)s AND applied_id = %(expected_id)s
RETURNING applied_id;

-- name: upsert_products --
-- Creates or updates products from their latest sale settings (sale_loaded events). With replace false it
-- only creates: a stock bucket's settings copy (bucket_set events) makes the product when the SKU's own
-- partition has not yet, and never changes one (bucket 0's sale_loaded is the product's record).
INSERT INTO products (
  sku_id, name, base_price_cents, flash_sale_price_cents, total_inventory, per_user_limit,
  starts_at, ends_at, reservation_ttl_ms, is_active, created_at, updated_at
)
SELECT u.sku_id, u.name, u.price_cents, u.flash_price_cents, u.total, u.per_user_limit,
       ms_to_timestamptz(NULLIF(u.starts_at, 0)), ms_to_timestamptz(NULLIF(u.ends_at, 0)),
       u.reservation_ttl_ms, NOT u.paused, ms_to_timestamptz(u.created_at), ms_to_timestamptz(u.at)
FROM unnest(
  %(sku_id)b::text[], %(name)b::text[], %(price_cents)b::bigint[], %(flash_price_cents)b::bigint[],
  %(total)b::integer[], %(per_user_limit)b::integer[], %(starts_at)b::bigint[], %(ends_at)b::bigint[],
  %(reservation_ttl_ms)b::bigint[], %(paused)b::boolean[], %(at)b::bigint[], %(created_at)b::bigint[]
) AS u(sku_id, name, price_cents, flash_price_cents, total, per_user_limit, starts_at, ends_at,
       reservation_ttl_ms, paused, at, created_at)
ON CONFLICT (sku_id) DO UPDATE SET
  name = EXCLUDED.name,
  base_price_cents = EXCLUDED.base_price_cents,
  flash_sale_price_cents = EXCLUDED.flash_sale_price_cents,
  total_inventory = EXCLUDED.total_inventory,
  per_user_limit = EXCLUDED.per_user_limit,
  starts_at = EXCLUDED.starts_at,
  ends_at = EXCLUDED.ends_at,
  reservation_ttl_ms = EXCLUDED.reservation_ttl_ms,
  is_active = EXCLUDED.is_active,
  updated_at = EXCLUDED.updated_at
WHERE %(replace)s;

-- name: set_product_buckets --
-- Records how many stock buckets a SKU's sale is split into (bucket_set events; fixed for a sale's life).
UPDATE products AS p SET buckets = u.buckets
FROM unnest(%(sku_id)b::text[], %(buckets)b::integer[]) AS u(sku_id, buckets)
WHERE p.sku_id = u.sku_id AND p.buckets <> u.buckets;

-- name: update_product_totals --
-- Sets the units on sale of products restocked without new settings (restocked events).
UPDATE products AS p
SET total_inventory = u.total, updated_at = ms_to_timestamptz(u.at)
FROM unnest(%(sku_id)b::text[], %(total)b::integer[], %(at)b::bigint[]) AS u(sku_id, total, at)
WHERE p.sku_id = u.sku_id
RETURNING p.sku_id;

-- name: upsert_waiting_rooms --
-- Creates or updates waiting rooms from their latest settings (waiting_room_set events).
INSERT INTO waiting_rooms (sku_id, is_on, opens_at, admit_per_second, stock_factor, admission_ttl_ms, updated_at)
SELECT u.sku_id, u.is_on, ms_to_timestamptz(NULLIF(u.opens_at, 0)), u.admit_per_s, u.stock_factor,
       u.admission_ttl_ms, ms_to_timestamptz(u.at)
FROM unnest(
  %(sku_id)b::text[], %(is_on)b::boolean[], %(opens_at)b::bigint[], %(admit_per_s)b::integer[],
  %(stock_factor)b::integer[], %(admission_ttl_ms)b::bigint[], %(at)b::bigint[]
) AS u(sku_id, is_on, opens_at, admit_per_s, stock_factor, admission_ttl_ms, at)
ON CONFLICT (sku_id) DO UPDATE SET
  is_on = EXCLUDED.is_on,
  opens_at = EXCLUDED.opens_at,
  admit_per_second = EXCLUDED.admit_per_second,
  stock_factor = EXCLUDED.stock_factor,
  admission_ttl_ms = EXCLUDED.admission_ttl_ms,
  updated_at = EXCLUDED.updated_at;

-- name: add_waiting_room_counts --
-- Adds the shoppers admitted and sent away (queue_admitted, queue_closed events) to their waiting rooms.
UPDATE waiting_rooms AS w
SET admitted = w.admitted + u.admitted, sent_away = w.sent_away + u.sent_away, updated_at = ms_to_timestamptz(u.at)
FROM unnest(%(sku_id)b::text[], %(admitted)b::bigint[], %(sent_away)b::bigint[], %(at)b::bigint[])
  AS u(sku_id, admitted, sent_away, at)
WHERE w.sku_id = u.sku_id
RETURNING w.sku_id;

-- name: create_inventory --
-- Gives new products an inventory row with zero counts; their deltas are applied next.
INSERT INTO inventory (sku_id, total_count, reserved_count, sold_count, available_count, updated_at)
SELECT u.sku_id, 0, 0, 0, 0, ms_to_timestamptz(u.at)
FROM unnest(%(sku_id)b::text[], %(at)b::bigint[]) AS u(sku_id, at)
ON CONFLICT (sku_id) DO NOTHING;

-- name: lock_inventory --
-- Locks the inventory rows a batch touches, in sku order so that concurrent batches cannot deadlock.
SELECT sku_id FROM inventory WHERE sku_id = ANY(%(sku_id)b::text[]) ORDER BY sku_id FOR UPDATE;

-- name: apply_inventory_deltas --
-- Adds a batch's summed counter changes per SKU; version counts the events applied.
UPDATE inventory AS i SET
  available_count = i.available_count + u.da,
  reserved_count = i.reserved_count + u.dr,
  sold_count = i.sold_count + u.ds,
  total_count = i.total_count + u.dt,
  moving_count = i.moving_count + u.dm,
  version = i.version + u.events,
  updated_at = ms_to_timestamptz(u.at)
FROM unnest(
  %(sku_id)b::text[], %(da)b::integer[], %(dr)b::integer[], %(ds)b::integer[], %(dt)b::integer[],
  %(dm)b::integer[], %(events)b::integer[], %(at)b::bigint[]
) AS u(sku_id, da, dr, ds, dt, dm, events, at)
WHERE i.sku_id = u.sku_id
RETURNING i.sku_id;

-- name: insert_reservations --
-- Inserts reservations created in this batch, in the state the batch left them.
INSERT INTO reservations (
  reservation_id, user_id, sku_id, quantity, status, order_id, created_at, expires_at, pay_until,
  confirmed_at, ended_at, updated_at
)
SELECT u.reservation_id, u.user_id, u.sku_id, u.quantity, u.status::reservation_status, u.order_id,
       ms_to_timestamptz(u.created_at), ms_to_timestamptz(u.expires_at), ms_to_timestamptz(u.pay_until),
       ms_to_timestamptz(u.confirmed_at), ms_to_timestamptz(u.ended_at), ms_to_timestamptz(u.updated_at)
FROM unnest(
  %(reservation_id)b::text[], %(user_id)b::text[], %(sku_id)b::text[], %(quantity)b::integer[],
  %(status)b::text[], %(order_id)b::text[], %(created_at)b::bigint[], %(expires_at)b::bigint[],
  %(pay_until)b::bigint[], %(confirmed_at)b::bigint[], %(ended_at)b::bigint[], %(updated_at)b::bigint[]
) AS u(reservation_id, user_id, sku_id, quantity, status, order_id, created_at, expires_at, pay_until,
       confirmed_at, ended_at, updated_at);

-- name: update_reservations --
-- Applies a batch's changes to reservations created earlier (NULL keeps a column; *_set clears or sets).
UPDATE reservations AS r SET
  status = COALESCE(u.status::reservation_status, r.status),
  order_id = CASE WHEN u.order_id_set THEN u.order_id ELSE r.order_id END,
  pay_until = CASE WHEN u.pay_until_set THEN ms_to_timestamptz(u.pay_until) ELSE r.pay_until END,
  confirmed_at = COALESCE(ms_to_timestamptz(u.confirmed_at), r.confirmed_at),
  ended_at = COALESCE(ms_to_timestamptz(u.ended_at), r.ended_at),
  updated_at = ms_to_timestamptz(u.updated_at)
FROM unnest(
  %(reservation_id)b::text[], %(status)b::text[], %(order_id)b::text[], %(order_id_set)b::boolean[],
  %(pay_until)b::bigint[], %(pay_until_set)b::boolean[], %(confirmed_at)b::bigint[], %(ended_at)b::bigint[],
  %(updated_at)b::bigint[]
) AS u(reservation_id, status, order_id, order_id_set, pay_until, pay_until_set, confirmed_at, ended_at,
       updated_at)
WHERE r.reservation_id = u.reservation_id
RETURNING r.reservation_id;

-- name: insert_orders --
-- Inserts orders created in this batch, in the state the batch left them.
INSERT INTO orders (
  order_id, reservation_id, user_id, sku_id, quantity, unit_price_cents, total_price_cents, status,
  payment_method, transaction_id, failure_reason, created_at, updated_at
)
SELECT u.order_id, u.reservation_id, u.user_id, u.sku_id, u.quantity, u.unit_price_cents,
       u.total_price_cents, u.status::order_status, u.payment_method, u.transaction_id, u.failure_reason,
       ms_to_timestamptz(u.created_at), ms_to_timestamptz(u.updated_at)
FROM unnest(
  %(order_id)b::text[], %(reservation_id)b::text[], %(user_id)b::text[], %(sku_id)b::text[],
  %(quantity)b::integer[], %(unit_price_cents)b::bigint[], %(total_price_cents)b::bigint[],
  %(status)b::text[], %(payment_method)b::text[], %(transaction_id)b::text[], %(failure_reason)b::text[],
  %(created_at)b::bigint[], %(updated_at)b::bigint[]
) AS u(order_id, reservation_id, user_id, sku_id, quantity, unit_price_cents, total_price_cents, status,
       payment_method, transaction_id, failure_reason, created_at, updated_at);

-- name: update_orders --
-- Applies a batch's changes to orders created earlier (NULL keeps a column).
UPDATE orders AS o SET
  status = COALESCE(u.status::order_status, o.status),
  transaction_id = COALESCE(u.transaction_id, o.transaction_id),
  failure_reason = COALESCE(u.failure_reason, o.failure_reason),
  updated_at = ms_to_timestamptz(u.updated_at)
FROM unnest(
  %(order_id)b::text[], %(status)b::text[], %(transaction_id)b::text[], %(failure_reason)b::text[],
  %(updated_at)b::bigint[]
) AS u(order_id, status, transaction_id, failure_reason, updated_at)
WHERE o.order_id = u.order_id
RETURNING o.order_id;

-- name: create_migrations_table --
-- The record of applied migrations (created before the first migration runs).
CREATE TABLE IF NOT EXISTS schema_migrations (
  version     integer PRIMARY KEY,
  name        text NOT NULL,
  applied_at  timestamptz NOT NULL DEFAULT now()
);

-- name: applied_migrations --
-- Version and name of every applied migration.
SELECT version, name FROM schema_migrations ORDER BY version;

-- name: record_migration --
-- Marks a migration as applied (in the migration's own transaction).
INSERT INTO schema_migrations (version, name) VALUES (%(version)s, %(name)s);

-- name: lock_migrations --
-- Serialises concurrent `flashsale db migrate` runs (session-level advisory lock).
SELECT pg_advisory_lock(%(lock)s);

-- name: unlock_migrations --
-- Releases the migration lock.
SELECT pg_advisory_unlock(%(lock)s);

-- name: migrations_table_exists --
-- Whether the database was ever migrated.
SELECT to_regclass('schema_migrations') IS NOT NULL;

-- name: delete_all_rows --
-- Empties every table but the migrations record (tests, and rebuilding PostgreSQL from the streams).
TRUNCATE orders, reservations, waiting_rooms, inventory, products, stream_offsets;

-- name: reconcile_offsets --
-- How far the write-behind worker has applied each partition's stream.
SELECT partition, applied_id FROM stream_offsets ORDER BY partition;

-- name: reconcile_products --
-- Every product's sale settings and inventory counters (counters NULL when it has no inventory row).
SELECT p.sku_id, p.name, p.base_price_cents, p.flash_sale_price_cents, p.per_user_limit,
       COALESCE((extract(epoch FROM p.starts_at) * 1000)::bigint, 0) AS starts_at,
       COALESCE((extract(epoch FROM p.ends_at) * 1000)::bigint, 0) AS ends_at,
       p.reservation_ttl_ms, NOT p.is_active AS paused,
       (extract(epoch FROM p.created_at) * 1000)::bigint AS created_at,
       (extract(epoch FROM p.updated_at) * 1000)::bigint AS updated_at,
       i.total_count, i.available_count, i.reserved_count, i.sold_count, i.moving_count, p.buckets
FROM products AS p LEFT JOIN inventory AS i USING (sku_id)
ORDER BY p.sku_id;

-- name: reconcile_reservations --
-- The reservations Redis must hold: every open one, and those that ended after the cutoff (its retention).
SELECT reservation_id, sku_id, user_id, quantity, status::text, order_id,
       (extract(epoch FROM created_at) * 1000)::bigint AS created_at,
       (extract(epoch FROM expires_at) * 1000)::bigint AS expires_at,
       (extract(epoch FROM pay_until) * 1000)::bigint AS pay_until,
       (extract(epoch FROM confirmed_at) * 1000)::bigint AS confirmed_at,
       (extract(epoch FROM ended_at) * 1000)::bigint AS ended_at
FROM reservations WHERE status = 'RESERVED' OR ended_at >= ms_to_timestamptz(%(cutoff)s);

-- name: reconcile_orders --
-- The orders Redis must hold: pending and confirmed ones, and those that ended after the cutoff.
SELECT order_id, reservation_id, sku_id, user_id, quantity, unit_price_cents, total_price_cents,
       status::text, payment_method, transaction_id, failure_reason,
       (extract(epoch FROM created_at) * 1000)::bigint AS created_at,
       (extract(epoch FROM updated_at) * 1000)::bigint AS updated_at
FROM orders WHERE status IN ('PENDING', 'CONFIRMED') OR updated_at >= ms_to_timestamptz(%(cutoff)s);

-- name: reconcile_user_counts --
-- Each user's units per SKU: held in open reservations, bought in confirmed or fulfilled orders.
SELECT sku_id, user_id, sum(held)::bigint AS held, sum(bought)::bigint AS bought
FROM (
  SELECT sku_id, user_id, quantity AS held, 0 AS bought FROM reservations WHERE status = 'RESERVED'
  UNION ALL
  SELECT sku_id, user_id, 0, quantity FROM orders WHERE status IN ('CONFIRMED', 'FULFILLED')
) AS units
GROUP BY sku_id, user_id;

-- name: reconcile_sku_sums --
-- Per SKU, what PostgreSQL's own rows add up to: units in open holds and in counted orders.
SELECT sku_id, sum(reserved)::bigint AS reserved, sum(sold)::bigint AS sold
FROM (
  SELECT sku_id, quantity AS reserved, 0 AS sold FROM reservations WHERE status = 'RESERVED'
  UNION ALL
  SELECT sku_id, 0, quantity FROM orders WHERE status IN ('CONFIRMED', 'FULFILLED')
) AS units
GROUP BY sku_id;

-- name: reconcile_waiting_rooms --
-- Every waiting room: its settings and how many shoppers it admitted and sent away.
SELECT sku_id, is_on, COALESCE((extract(epoch FROM opens_at) * 1000)::bigint, 0) AS opens_at,
       admit_per_second, stock_factor, admission_ttl_ms, admitted, sent_away
FROM waiting_rooms
ORDER BY sku_id;

-- name: repair_set_inventory --
-- Sets a SKU's counters to the values the log implies (repair postgres-from-stream).
UPDATE inventory
SET total_count = %(total)s, available_count = %(available)s, reserved_count = %(reserved)s,
    sold_count = %(sold)s, moving_count = %(moving)s, updated_at = now()
WHERE sku_id = %(sku)s
RETURNING sku_id;

-- name: repair_insert_product --
-- Recreates a product and its inventory row that PostgreSQL lost, from Redis's settings.
WITH product AS (
  INSERT INTO products (
    sku_id, name, base_price_cents, flash_sale_price_cents, total_inventory, per_user_limit,
    starts_at, ends_at, reservation_ttl_ms, is_active, created_at, updated_at, buckets
  ) VALUES (
    %(sku)s, %(name)s, %(price_cents)s, %(flash_price_cents)s, %(total)s, %(per_user_limit)s,
    ms_to_timestamptz(NULLIF(%(starts_at)s::bigint, 0)), ms_to_timestamptz(NULLIF(%(ends_at)s::bigint, 0)),
    %(reservation_ttl_ms)s, NOT %(paused)s, ms_to_timestamptz(%(created_at)s), now(), %(buckets)s
  )
  ON CONFLICT (sku_id) DO NOTHING
  RETURNING sku_id
)
INSERT INTO inventory (sku_id, total_count, available_count, reserved_count, sold_count, moving_count, updated_at)
VALUES (%(sku)s, %(total)s, %(available)s, %(reserved)s, %(sold)s, %(moving)s, now())
ON CONFLICT (sku_id) DO UPDATE SET
  total_count = EXCLUDED.total_count, available_count = EXCLUDED.available_count,
  reserved_count = EXCLUDED.reserved_count, sold_count = EXCLUDED.sold_count,
  moving_count = EXCLUDED.moving_count, updated_at = now();

-- name: repair_upsert_waiting_room --
-- Writes one waiting room, settings and counts, as Redis has it less the unapplied events (repair
-- postgres-from-stream).
INSERT INTO waiting_rooms (
  sku_id, is_on, opens_at, admit_per_second, stock_factor, admission_ttl_ms, admitted, sent_away, updated_at
) VALUES (
  %(sku)s, %(on)s, ms_to_timestamptz(NULLIF(%(opens_at)s::bigint, 0)), %(admit_per_s)s, %(stock_factor)s,
  %(admission_ttl_ms)s, %(admitted)s, %(sent_away)s, now()
)
ON CONFLICT (sku_id) DO UPDATE SET
  is_on = EXCLUDED.is_on, opens_at = EXCLUDED.opens_at, admit_per_second = EXCLUDED.admit_per_second,
  stock_factor = EXCLUDED.stock_factor, admission_ttl_ms = EXCLUDED.admission_ttl_ms,
  admitted = EXCLUDED.admitted, sent_away = EXCLUDED.sent_away, updated_at = now();

-- name: repair_upsert_reservation --
-- Writes one reservation as Redis has it (repair postgres-from-stream).
INSERT INTO reservations (
  reservation_id, user_id, sku_id, quantity, status, order_id, created_at, expires_at, pay_until,
  confirmed_at, ended_at, updated_at
) VALUES (
  %(id)s, %(user)s, %(sku)s, %(quantity)s, %(status)s::reservation_status, %(order_id)s,
  ms_to_timestamptz(%(created_at)s), ms_to_timestamptz(%(expires_at)s), ms_to_timestamptz(%(pay_until)s),
  ms_to_timestamptz(%(confirmed_at)s), ms_to_timestamptz(%(ended_at)s), now()
)
ON CONFLICT (reservation_id) DO UPDATE SET
  status = EXCLUDED.status, order_id = EXCLUDED.order_id, pay_until = EXCLUDED.pay_until,
  confirmed_at = EXCLUDED.confirmed_at, ended_at = EXCLUDED.ended_at, updated_at = now();

-- name: repair_upsert_order --
-- Writes one order as Redis has it (repair postgres-from-stream).
INSERT INTO orders (
  order_id, reservation_id, user_id, sku_id, quantity, unit_price_cents, total_price_cents, status,
  payment_method, transaction_id, failure_reason, created_at, updated_at
) VALUES (
  %(id)s, %(reservation_id)s, %(user)s, %(sku)s, %(quantity)s, %(unit_price_cents)s, %(total_cents)s,
  %(status)s::order_status, %(payment_method)s, %(transaction_id)s, %(failure_reason)s,
  ms_to_timestamptz(%(created_at)s), GREATEST(ms_to_timestamptz(%(created_at)s), now())
)
ON CONFLICT (order_id) DO UPDATE SET
  status = EXCLUDED.status, transaction_id = EXCLUDED.transaction_id,
  failure_reason = EXCLUDED.failure_reason, updated_at = GREATEST(orders.created_at, now());

-- name: sale_products --
-- The settings of the given products that `flashsale sale load` and `sale put` compare with what they loaded
-- (times in ms since the epoch, 0 = no bound, as Redis keeps them).
SELECT sku_id, name, base_price_cents, flash_sale_price_cents, total_inventory, per_user_limit,
       COALESCE((extract(epoch FROM starts_at) * 1000)::bigint, 0),
       COALESCE((extract(epoch FROM ends_at) * 1000)::bigint, 0),
       reservation_ttl_ms, NOT is_active
FROM products WHERE sku_id = ANY(%(sku)s::text[]);
