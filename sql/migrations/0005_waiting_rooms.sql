-- A sale's waiting room (lua/set_waiting_room.lua): its settings, and how many shoppers it admitted and
-- sent away when the SKU sold out (lua/queue_admit.lua's events). Joins are not rows: they change no stock,
-- and a sale-start crowd would swamp the database with them; who was admitted travels on Kafka.
CREATE TABLE waiting_rooms (
  sku_id            text PRIMARY KEY REFERENCES products (sku_id),
  is_on             boolean NOT NULL,
  opens_at          timestamptz,                 -- NULL: takes joiners at any time before the start
  admit_per_second  integer NOT NULL CHECK (admit_per_second >= 1),
  stock_factor      integer NOT NULL CHECK (stock_factor >= 0),
  admission_ttl_ms  bigint NOT NULL CHECK (admission_ttl_ms >= 1000),
  admitted          bigint NOT NULL DEFAULT 0 CHECK (admitted >= 0),
  sent_away         bigint NOT NULL DEFAULT 0 CHECK (sent_away >= 0),
  updated_at        timestamptz NOT NULL
);
