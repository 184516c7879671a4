-- The design document's tables (seed: PRODUCTS, INVENTORY, RESERVATIONS), in their own schema so the
-- baseline never touches flashsale's tables in the same database. Created fresh for each benchmark run.

DROP SCHEMA IF EXISTS baseline CASCADE;
CREATE SCHEMA baseline;

CREATE TABLE baseline.products (
  sku_id            varchar(128) PRIMARY KEY,
  name              varchar(200) NOT NULL,
  base_price        numeric(12, 2) NOT NULL,
  flash_sale_price  numeric(12, 2) NOT NULL,
  total_inventory   integer NOT NULL,
  is_active         boolean NOT NULL DEFAULT true,
  category          varchar(100),
  created_at        timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE baseline.inventory (
  inventory_id     uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  sku_id           varchar(128) NOT NULL UNIQUE REFERENCES baseline.products (sku_id),
  total_count      integer NOT NULL,
  reserved_count   integer NOT NULL DEFAULT 0,
  sold_count       integer NOT NULL DEFAULT 0,
  available_count  integer NOT NULL,
  version          integer NOT NULL DEFAULT 0,   -- JPA @Version
  updated_at       timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE baseline.reservations (
  reservation_id  varchar(64) PRIMARY KEY,
  user_id         varchar(128) NOT NULL,
  sku_id          varchar(128) NOT NULL REFERENCES baseline.products (sku_id),
  quantity        integer NOT NULL,
  status          varchar(16) NOT NULL,
  created_at      timestamptz NOT NULL DEFAULT now(),
  expires_at      timestamptz NOT NULL,
  confirmed_at    timestamptz
);

-- findByUserIdAndSkuIdAndStatus: the repository query the design runs on every request.
CREATE INDEX reservations_user_sku_status ON baseline.reservations (user_id, sku_id, status);
