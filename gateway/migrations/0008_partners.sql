-- Partners (DESIGN.md section 7): top-ups from a partner's prepaid float, and the webhooks
-- that tell partners what became of them.
--
-- A partner's float is not one ledger row but LANES ledger accounts of kind `partner_float`
-- (owners `<key id>` for lane 0, `<key id>/<n>` for the others; floor 0 each), so that
-- concurrent top-ups lock different rows. Its balance is the sum of its lanes; see
-- gateway/topups/partners.py. No table is needed for that: the lanes are ordinary accounts.

-- ---------------------------------------------------------------- webhook endpoints
-- Where a partner wants to hear about its top-ups. The signing secret is in `secret_keys`
-- (kind `webhook_secret`, name `webhook:<id>`); a deleted endpoint stays for its history.
CREATE TABLE webhook_endpoints (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    partner_key_id text NOT NULL,
    url            text NOT NULL CHECK (url LIKE 'https://%' AND length(url) <= 2048),
    events         text[] NOT NULL CHECK (cardinality(events) > 0 AND events <@ ARRAY[
                       'topup.paid', 'topup.credited', 'topup.loaded', 'topup.refunded',
                       'topup.closed']::text[]),
    status         text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'deleted')),
    created_at     timestamptz NOT NULL DEFAULT now(),
    deleted_at     timestamptz,
    CHECK ((status = 'deleted') = (deleted_at IS NOT NULL))
);
CREATE INDEX webhook_endpoints_partner ON webhook_endpoints (partner_key_id)
    WHERE status = 'active';

-- ---------------------------------------------------------------- the outbox
-- One event per state change of a partner's top-up that one of its endpoints subscribes to,
-- written in the same transaction as the change. `data` is the JSON of the top-up as it was
-- then (the body's `data.topup`); the body is rebuilt from these columns byte for byte on
-- every attempt, so the event id and the body stay the same across retries.
CREATE TABLE webhook_events (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    partner_key_id text NOT NULL,
    type           text NOT NULL CHECK (type IN ('topup.paid', 'topup.credited',
                       'topup.loaded', 'topup.refunded', 'topup.closed')),
    topup_id       bigint NOT NULL,
    data           bytea NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX webhook_events_topup ON webhook_events (topup_id);

-- One event to one endpoint: pending until delivered (a 2xx answer), failed when
-- `give_up_at` (24 h after the event) passed without one, cancelled when the endpoint was
-- deleted. A job claims due rows by pushing `next_attempt_at` out and setting `lease`; only
-- the holder of the lease records the attempt's outcome.
CREATE TABLE webhook_deliveries (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id        bigint NOT NULL REFERENCES webhook_events (id),
    endpoint_id     bigint NOT NULL REFERENCES webhook_endpoints (id),
    state           text NOT NULL DEFAULT 'pending'
                    CHECK (state IN ('pending', 'delivered', 'failed', 'cancelled')),
    attempts        integer NOT NULL DEFAULT 0,   -- every attempt ever made
    backoff_step    integer NOT NULL DEFAULT 0,   -- failures since (re)queued: the back-off
    lease           uuid,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    give_up_at      timestamptz NOT NULL,
    last_status     integer,                      -- the HTTP status of the last attempt
    last_error      text,                         -- why the last attempt failed
    delivered_at    timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (event_id, endpoint_id)
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at)
    WHERE state = 'pending';
CREATE INDEX webhook_deliveries_endpoint ON webhook_deliveries (endpoint_id, id DESC);

-- The delivery log: every attempt and what came of it.
CREATE TABLE webhook_attempts (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    delivery_id   bigint NOT NULL REFERENCES webhook_deliveries (id),
    attempted_at  timestamptz NOT NULL DEFAULT now(),
    duration_ms   integer NOT NULL CHECK (duration_ms >= 0),
    status_code   integer,                        -- NULL: no HTTP answer
    error         text,                           -- NULL: delivered
    outcome       text NOT NULL CHECK (outcome IN ('delivered', 'retry', 'gave_up'))
);
CREATE INDEX webhook_attempts_delivery ON webhook_attempts (delivery_id, id DESC);

-- ---------------------------------------------------------------- drawing from a float
-- A partner top-up's posting from the float's lanes, in the caller's transaction, in one round
-- trip (see gateway/topups/partners.py). The lanes are the `partner_float` accounts of
-- p_owners; p_first is the owner of the lane to try first. That lane pays the whole amount
-- through `ledger_post` when it can (its failure undone by the block's own savepoint, which
-- also gives back any lock the failed posting took); otherwise every lane and the target are
-- locked in id order (as ledger_post locks) and the amount is drawn from the fullest lanes
-- first in one `ledger_post` of several legs, or the draw is refused with the float's balance:
--   OC020  the float cannot pay (DETAIL: the float's balance, the sum of its lanes)
CREATE FUNCTION partner_float_draw(p_owners text[], p_first text, p_target bigint,
                                   p_amount bigint, p_ref text, p_memo text,
                                   OUT txn_id bigint)
LANGUAGE plpgsql AS $$
DECLARE
    v_first    bigint;
    v_lanes    bigint[];
    v_accounts bigint[] := ARRAY[p_target];
    v_amounts  bigint[] := ARRAY[p_amount];
    v_left     bigint := p_amount;
    v_total    bigint := 0;
    v_row      record;
BEGIN
    SELECT id INTO v_first FROM ledger_accounts
     WHERE kind = 'partner_float' AND owner = p_first AND currency = 'CNY';
    IF v_first IS NOT NULL THEN
        BEGIN
            SELECT p.txn_id INTO txn_id FROM ledger_post('partner_topup', p_ref, p_memo,
                ARRAY[v_first, p_target], ARRAY[-p_amount, p_amount]) AS p;
            RETURN;
        EXCEPTION WHEN SQLSTATE 'OC002' THEN
            NULL;  -- this lane is short; the float as a whole may not be
        END;
    END IF;
    SELECT coalesce(array_agg(id), '{}') INTO v_lanes FROM ledger_accounts
     WHERE kind = 'partner_float' AND owner = ANY (p_owners) AND currency = 'CNY';
    PERFORM 1 FROM ledger_accounts WHERE id = ANY (v_lanes || p_target) ORDER BY id FOR UPDATE;
    FOR v_row IN SELECT id, balance_fen FROM ledger_accounts
                  WHERE id = ANY (v_lanes) ORDER BY balance_fen DESC, id LOOP
        v_total := v_total + v_row.balance_fen;
        IF v_left > 0 AND v_row.balance_fen > 0 THEN
            v_accounts := v_accounts || v_row.id;
            v_amounts := v_amounts || -least(v_left, v_row.balance_fen);
            v_left := v_left - least(v_left, v_row.balance_fen);
        END IF;
    END LOOP;
    IF v_left > 0 THEN
        RAISE EXCEPTION 'partner float cannot pay' USING ERRCODE = 'OC020',
            DETAIL = v_total::text;
    END IF;
    SELECT p.txn_id INTO txn_id
      FROM ledger_post('partner_topup', p_ref, p_memo, v_accounts, v_amounts) AS p;
END $$;
