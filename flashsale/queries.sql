-- Named queries of the CLI (`flashsale reconcile` in flashsale/reconcile.py, `flashsale sale load`), in the
-- format of sql/queries.sql (loaded with writeback.database.Queries):
-- a "-- name: <name> --" line, a one-line description, then the statement. Times come back as ms since
-- the epoch, the unit of Redis and of the events. The tables are the worker's (sql/migrations).

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
       i.total_count, i.available_count, i.reserved_count, i.sold_count
FROM products AS p LEFT JOIN inventory AS i USING (sku_id)
ORDER BY p.sku_id;

-- name: reconcile_open_reservations --
-- Every open hold (status RESERVED), with the order paying for it if any.
SELECT reservation_id, sku_id, user_id, quantity, order_id,
       (extract(epoch FROM created_at) * 1000)::bigint AS created_at,
       (extract(epoch FROM expires_at) * 1000)::bigint AS expires_at
FROM reservations WHERE status = 'RESERVED';

-- name: reconcile_orders --
-- Every order that is not terminal-and-irrelevant: pending, confirmed or fulfilled ones count against stock.
SELECT order_id, reservation_id, sku_id, user_id, quantity, unit_price_cents, total_price_cents,
       status::text, payment_method, transaction_id, failure_reason,
       (extract(epoch FROM created_at) * 1000)::bigint AS created_at,
       (extract(epoch FROM updated_at) * 1000)::bigint AS updated_at
FROM orders WHERE status IN ('PENDING', 'CONFIRMED', 'FULFILLED');

-- name: reconcile_reservation_states --
-- The current status of the given reservations (for holds Redis has and PostgreSQL may not).
SELECT reservation_id, status::text,
       (extract(epoch FROM ended_at) * 1000)::bigint AS ended_at
FROM reservations WHERE reservation_id = ANY(%(ids)s::text[]);

-- name: reconcile_order_states --
-- The current status of the given orders.
SELECT order_id, status::text, transaction_id, failure_reason,
       (extract(epoch FROM updated_at) * 1000)::bigint AS updated_at
FROM orders WHERE order_id = ANY(%(ids)s::text[]);

-- name: repair_set_inventory --
-- Sets a SKU's counters to the values the log implies (repair postgres-from-stream).
UPDATE inventory
SET total_count = %(total)s, available_count = %(available)s, reserved_count = %(reserved)s,
    sold_count = %(sold)s, updated_at = now()
WHERE sku_id = %(sku)s
RETURNING sku_id;

-- name: repair_insert_product --
-- Recreates a product and its inventory row that PostgreSQL lost, from Redis's settings.
WITH product AS (
  INSERT INTO products (
    sku_id, name, base_price_cents, flash_sale_price_cents, total_inventory, per_user_limit,
    starts_at, ends_at, reservation_ttl_ms, is_active, created_at, updated_at
  ) VALUES (
    %(sku)s, %(name)s, %(price_cents)s, %(flash_price_cents)s, %(total)s, %(per_user_limit)s,
    ms_to_timestamptz(NULLIF(%(starts_at)s::bigint, 0)), ms_to_timestamptz(NULLIF(%(ends_at)s::bigint, 0)),
    %(reservation_ttl_ms)s, NOT %(paused)s, ms_to_timestamptz(%(created_at)s), now()
  )
  ON CONFLICT (sku_id) DO NOTHING
  RETURNING sku_id
)
INSERT INTO inventory (sku_id, total_count, available_count, reserved_count, sold_count, updated_at)
VALUES (%(sku)s, %(total)s, %(available)s, %(reserved)s, %(sold)s, now())
ON CONFLICT (sku_id) DO UPDATE SET
  total_count = EXCLUDED.total_count, available_count = EXCLUDED.available_count,
  reserved_count = EXCLUDED.reserved_count, sold_count = EXCLUDED.sold_count, updated_at = now();

-- name: repair_upsert_reservation --
-- Writes one reservation as Redis has it (repair postgres-from-stream).
INSERT INTO reservations (
  reservation_id, user_id, sku_id, quantity, status, order_id, created_at, expires_at, confirmed_at,
  ended_at, updated_at
) VALUES (
  %(id)s, %(user)s, %(sku)s, %(quantity)s, %(status)s::reservation_status, %(order_id)s,
  ms_to_timestamptz(%(created_at)s), ms_to_timestamptz(%(expires_at)s), ms_to_timestamptz(%(confirmed_at)s),
  ms_to_timestamptz(%(ended_at)s), now()
)
ON CONFLICT (reservation_id) DO UPDATE SET
  status = EXCLUDED.status, order_id = EXCLUDED.order_id, confirmed_at = EXCLUDED.confirmed_at,
  ended_at = EXCLUDED.ended_at, updated_at = now();

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
-- The settings of the given products that `flashsale sale load` compares with what it loaded.
SELECT sku_id, name, flash_sale_price_cents, total_inventory FROM products WHERE sku_id = ANY(%(sku)s::text[]);
