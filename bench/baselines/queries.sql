-- Named queries of the locking baseline: a "-- name: <name> --" line, a one-line description, the statement.

-- name: create_product --
-- A product of the sale and its inventory row, all units available.
WITH product AS (
  INSERT INTO baseline.products (sku_id, name, base_price, flash_sale_price, total_inventory)
  VALUES (%(sku)s, %(sku)s, 100.00, 50.00, %(total)s)
  RETURNING sku_id
)
INSERT INTO baseline.inventory (sku_id, total_count, available_count)
SELECT sku_id, %(total)s, %(total)s FROM product;

-- name: find_active_reservation --
-- ReservationRepository.findByUserIdAndSkuIdAndStatus(userId, skuId, RESERVED).
SELECT reservation_id FROM baseline.reservations
WHERE user_id = %(user)s AND sku_id = %(sku)s AND status = 'RESERVED';

-- name: lock_inventory --
-- The pessimistic lock: the SKU's inventory row, held until commit (SELECT ... FOR UPDATE).
SELECT available_count, reserved_count, version FROM baseline.inventory WHERE sku_id = %(sku)s FOR UPDATE;

-- name: reserve_inventory --
-- UPDATE inventory SET reserved_count++ (and available_count--, version++) for the locked row.
UPDATE baseline.inventory
SET reserved_count = reserved_count + %(quantity)s, available_count = available_count - %(quantity)s,
    version = version + 1, updated_at = now()
WHERE sku_id = %(sku)s;

-- name: insert_reservation --
-- INSERT INTO reservations: the hold, expiring after the reservation TTL.
INSERT INTO baseline.reservations (reservation_id, user_id, sku_id, quantity, status, expires_at)
VALUES (%(reservation_id)s, %(user)s, %(sku)s, %(quantity)s, 'RESERVED', now() + interval '2 minutes');

-- name: inventory --
-- A SKU's counters, for the checks after a run.
SELECT total_count, available_count, reserved_count, sold_count FROM baseline.inventory WHERE sku_id = %(sku)s;

-- name: count_reservations --
-- How many RESERVED rows a SKU has, for the checks after a run.
SELECT count(*) FROM baseline.reservations WHERE sku_id = %(sku)s AND status = 'RESERVED';
