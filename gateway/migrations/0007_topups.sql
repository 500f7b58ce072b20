-- Top-ups (DESIGN.md section 7, "Payment channels"): linked cards, orders and their state
-- machine, refunds, what channels told us that no order explains, and partner float funding.

-- A physical card linked to one rider at a time, with what the gateway last knew of its chip.
CREATE TABLE cards (
    asn                  text PRIMARY KEY CHECK (asn ~ '^[0-9]{20}$'),  -- 10 BCD bytes
    rider_id             bigint,                       -- NULL: linked to nobody now
    status               text NOT NULL DEFAULT 'active'
                         CHECK (status IN ('active', 'unlinked', 'lost')),
    card_type            smallint NOT NULL,
    issuer_info          bytea NOT NULL CHECK (length(issuer_info) = 30),   -- file 0015
    valid_from           date NOT NULL,
    valid_until          date NOT NULL,
    balance_max_fen      bigint NOT NULL DEFAULT 100000 CHECK (balance_max_fen > 0),
    chip_balance_fen     bigint NOT NULL DEFAULT 0,    -- last known; the OTA area updates it
    online_counter       integer,                      -- last known; the OTA area updates it
    offline_counter      integer,
    linked_at            timestamptz,
    updated_at           timestamptz NOT NULL DEFAULT now(),
    CHECK ((status = 'active') = (rider_id IS NOT NULL))
);
CREATE INDEX cards_rider ON cards (rider_id) WHERE rider_id IS NOT NULL;

-- One top-up: a rider paying through a channel, or a partner paying from its float.
CREATE TABLE topup_orders (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    out_trade_no     text NOT NULL UNIQUE,             -- our number at the channel
    source           text NOT NULL CHECK (source IN ('rider', 'partner')),
    rider_id         bigint NOT NULL,                  -- whose wallet or card
    partner_key_id   text,                             -- partner top-ups: who paid
    channel          text CHECK (channel IN ('alipay', 'wechatpay', 'unionpay')),
    target           text NOT NULL CHECK (target IN ('wallet', 'card')),
    card_asn         text,
    amount_fen       bigint NOT NULL CHECK (amount_fen > 0),
    state            text NOT NULL DEFAULT 'created' CHECK (state IN (
                         'created', 'paying', 'paid', 'credited', 'pending_load', 'loaded',
                         'closed', 'refunding', 'refunded', 'partially_refunded', 'failed')),
    pay_params       jsonb,                            -- what the phone hands the channel app
    channel_trade_no text,
    paid_fen         bigint,                           -- what the channel said was paid
    refunded_fen     bigint NOT NULL DEFAULT 0 CHECK (refunded_fen >= 0),
    flag             text,                             -- why an operator must look at it
    next_check_at    timestamptz,                      -- when the reconciler asks the channel
    checks           integer NOT NULL DEFAULT 0,
    expires_at       timestamptz NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    paid_at          timestamptz,
    CHECK ((target = 'card') = (card_asn IS NOT NULL)),
    CHECK ((source = 'rider') = (channel IS NOT NULL)),
    CHECK ((source = 'partner') = (partner_key_id IS NOT NULL)),
    CHECK (refunded_fen <= amount_fen)
);
CREATE INDEX topup_orders_rider ON topup_orders (rider_id, id DESC);
CREATE INDEX topup_orders_check ON topup_orders (next_check_at)
    WHERE state IN ('created', 'paying', 'refunding') AND flag IS NULL;
CREATE INDEX topup_orders_card_pending ON topup_orders (card_asn)
    WHERE state IN ('paid', 'pending_load');

-- The state machine, enforced here: a transition that is not listed is our bug.
CREATE TABLE topup_transitions (
    from_state text NOT NULL,
    to_state   text NOT NULL,
    PRIMARY KEY (from_state, to_state)
);
INSERT INTO topup_transitions (from_state, to_state) VALUES
    ('created', 'paying'), ('created', 'paid'), ('created', 'closed'), ('created', 'failed'),
    ('paying', 'paid'), ('paying', 'closed'), ('paying', 'failed'),
    -- a payment the channel reports after we closed the order is never dropped
    ('closed', 'paid'), ('failed', 'paid'),
    ('paid', 'credited'), ('paid', 'pending_load'), ('paid', 'refunding'),
    ('pending_load', 'loaded'), ('pending_load', 'refunding'),
    ('credited', 'refunding'), ('partially_refunded', 'refunding'),
    ('refunding', 'refunded'), ('refunding', 'partially_refunded'),
    -- a refund the channel refused gives the money back where it was
    ('refunding', 'credited'), ('refunding', 'pending_load'), ('refunding', 'paid');

CREATE FUNCTION topup_orders_transition() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.state <> OLD.state AND NOT EXISTS (
        SELECT 1 FROM topup_transitions WHERE from_state = OLD.state AND to_state = NEW.state
    ) THEN
        RAISE EXCEPTION 'top-up % may not go from % to %', OLD.id, OLD.state, NEW.state
            USING ERRCODE = 'OC010';
    END IF;
    NEW.updated_at := now();
    RETURN NEW;
END $$;

CREATE TRIGGER topup_orders_transition BEFORE UPDATE ON topup_orders
    FOR EACH ROW EXECUTE FUNCTION topup_orders_transition();

CREATE TABLE topup_refunds (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    order_id      bigint NOT NULL REFERENCES topup_orders (id),
    out_refund_no text NOT NULL UNIQUE,
    amount_fen    bigint NOT NULL CHECK (amount_fen > 0),
    reason        text NOT NULL,
    state         text NOT NULL DEFAULT 'refunding'
                  CHECK (state IN ('refunding', 'succeeded', 'failed')),
    return_state  text NOT NULL,                       -- the order's state to go back to
    next_check_at timestamptz,
    checks        integer NOT NULL DEFAULT 0,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX topup_refunds_order ON topup_refunds (order_id);
CREATE INDEX topup_refunds_check ON topup_refunds (next_check_at) WHERE state = 'refunding';

-- What a channel told us that no order explains, or that an order must not be credited on:
-- unknown orders, amounts that differ or do not convert, other currencies. For operators.
CREATE TABLE channel_exceptions (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    channel      text NOT NULL,
    out_trade_no text NOT NULL,
    kind         text NOT NULL,       -- unknown_order | amount_differs | inexact_amount | currency
    detail       jsonb NOT NULL DEFAULT '{}',
    created_at   timestamptz NOT NULL DEFAULT now(),
    UNIQUE (channel, out_trade_no, kind)
);

-- An operator putting money into a partner's float (`onecard partners fund`): the audit trail.
CREATE TABLE partner_fundings (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    partner_key_id text NOT NULL,
    amount_fen     bigint NOT NULL CHECK (amount_fen > 0),
    operator       text NOT NULL,
    memo           text NOT NULL DEFAULT '',
    created_at     timestamptz NOT NULL DEFAULT now()
);

INSERT INTO ledger_txn_kinds (kind) VALUES
    ('topup_paid'),          -- channel receivable -> wallet or pending load (ref topup:<id>)
    ('topup_refund'),        -- wallet or pending load -> channel receivable (ref refund:<id>)
    ('topup_refund_failed'), -- the refund's money back where it was (ref refund:<id>)
    ('partner_topup'),       -- partner float -> wallet or pending load (ref topup:<id>)
    ('partner_funding');     -- suspense -> partner float (ref partner-funding:<id>)
