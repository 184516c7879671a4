-- A hold being paid for keeps its units until its payment grace ends (pay_until), not its own expiry.
-- Kept here too, so Redis can be rebuilt from PostgreSQL exactly (flashsale reconcile --repair).
ALTER TABLE reservations ADD COLUMN pay_until timestamptz;
ALTER TABLE reservations ADD CONSTRAINT reservations_pay_until_only_while_paying
  CHECK (pay_until IS NULL OR (status = 'RESERVED' AND order_id IS NOT NULL));
