-- Reservations (holds) and the orders that pay for them, mirrored from Redis by the write-behind worker.

CREATE TYPE reservation_status AS ENUM ('RESERVED', 'CONFIRMED', 'CANCELLED', 'EXPIRED');
CREATE TYPE order_status AS ENUM ('PENDING', 'CONFIRMED', 'FAILED', 'FULFILLED', 'CANCELLED');

CREATE TABLE reservations (
  reservation_id  text PRIMARY KEY CHECK (reservation_id LIKE 'rsv\_%'),
  user_id         text NOT NULL,
  sku_id          text NOT NULL REFERENCES products (sku_id),
  quantity        integer NOT NULL CHECK (quantity > 0),
  status          reservation_status NOT NULL,
  order_id        text,                           -- the order paying for it (kept once it is bought)
  created_at      timestamptz NOT NULL,
  expires_at      timestamptz NOT NULL CHECK (expires_at > created_at),
  confirmed_at    timestamptz,
  ended_at        timestamptz,
  updated_at      timestamptz NOT NULL,
  -- A hold is open exactly while RESERVED; only a bought one has a confirmation time.
  CHECK ((status = 'RESERVED') = (ended_at IS NULL)),
  CHECK ((status = 'CONFIRMED') = (confirmed_at IS NOT NULL)),
  CHECK (status <> 'CONFIRMED' OR order_id IS NOT NULL)
);
CREATE INDEX reservations_by_user ON reservations (user_id, sku_id);
CREATE INDEX reservations_open ON reservations (sku_id) WHERE status = 'RESERVED';

CREATE TABLE orders (
  order_id           text PRIMARY KEY CHECK (order_id LIKE 'ord\_%'),
  reservation_id     text NOT NULL REFERENCES reservations (reservation_id),
  user_id            text NOT NULL,
  sku_id             text NOT NULL REFERENCES products (sku_id),
  quantity           integer NOT NULL CHECK (quantity > 0),
  unit_price_cents   bigint NOT NULL CHECK (unit_price_cents >= 0),
  total_price_cents  bigint NOT NULL,
  status             order_status NOT NULL,
  payment_method     text NOT NULL CHECK (length(payment_method) BETWEEN 1 AND 64),
  transaction_id     text,
  failure_reason     text,
  created_at         timestamptz NOT NULL,
  updated_at         timestamptz NOT NULL CHECK (updated_at >= created_at),
  CHECK (total_price_cents = unit_price_cents * quantity),
  CHECK ((status = 'FAILED') = (failure_reason IS NOT NULL))
);
-- A reservation is paid for by at most one order that did not fail.
CREATE UNIQUE INDEX orders_one_live_per_reservation ON orders (reservation_id) WHERE status <> 'FAILED';
CREATE INDEX orders_by_user ON orders (user_id);

-- Checked at commit: the worker writes a batch's reservations before the orders they point to.
ALTER TABLE reservations ADD CONSTRAINT reservations_order_fk
  FOREIGN KEY (order_id) REFERENCES orders (order_id) DEFERRABLE INITIALLY DEFERRED;
