-- The catalog (products = a SKU's sale settings) and its stock counters.
-- Money is integer cents and times come from Redis's clock, like everywhere in flashsale.

CREATE FUNCTION ms_to_timestamptz(ms bigint) RETURNS timestamptz
  LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
  RETURN timestamptz 'epoch' + ms * interval '1 millisecond';

CREATE TABLE products (
  sku_id                  text PRIMARY KEY CHECK (sku_id ~ '^[A-Za-z0-9._@-]{1,128}$'),
  name                    text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
  base_price_cents        bigint NOT NULL CHECK (base_price_cents >= 0),
  flash_sale_price_cents  bigint NOT NULL CHECK (flash_sale_price_cents >= 0),
  total_inventory         integer NOT NULL CHECK (total_inventory >= 0),
  per_user_limit          integer NOT NULL CHECK (per_user_limit >= 1),
  starts_at               timestamptz,            -- NULL: no lower bound
  ends_at                 timestamptz,            -- NULL: no upper bound
  reservation_ttl_ms      bigint NOT NULL CHECK (reservation_ttl_ms >= 1000),
  is_active               boolean NOT NULL,       -- false while the sale is paused
  category                text,
  created_at              timestamptz NOT NULL,
  updated_at              timestamptz NOT NULL,
  CHECK (starts_at IS NULL OR ends_at IS NULL OR ends_at > starts_at)
);

CREATE TABLE inventory (
  inventory_id     uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  sku_id           text NOT NULL UNIQUE REFERENCES products (sku_id),
  total_count      integer NOT NULL CHECK (total_count >= 0),
  reserved_count   integer NOT NULL CHECK (reserved_count >= 0),
  sold_count       integer NOT NULL CHECK (sold_count >= 0),
  available_count  integer NOT NULL CHECK (available_count >= 0),
  -- One step per applied event: the number of changes this row has seen.
  version          bigint NOT NULL DEFAULT 0 CHECK (version >= 0),
  updated_at       timestamptz NOT NULL,
  CONSTRAINT inventory_counts_add_up CHECK (available_count + reserved_count + sold_count = total_count)
);
