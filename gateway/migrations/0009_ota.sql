-- Over-the-air loads (DESIGN.md section 7, "OTA load"; CARD_PROTOCOL.md "Load").
--
-- A session is one phone relaying APDUs between one card and the gateway. It loads the
-- card's pending orders one after another, each with its own INITIALIZE / CREDIT pair: one
-- `ota_loads` row per attempt. The gateway decides every APDU; the session row keeps the one
-- handed out last (`step`) and the answer given to the step before, so that a phone re-sending
-- the same card answer gets the same next step.

CREATE TABLE ota_sessions (
    id             uuid PRIMARY KEY,
    rider_id       bigint NOT NULL,
    card_asn       text NOT NULL,
    state          text NOT NULL DEFAULT 'open'
                   CHECK (state IN ('open', 'completed', 'failed', 'superseded')),
    order_ids      bigint[] NOT NULL,          -- what it may load, in this order
    step           integer NOT NULL DEFAULT 0 CHECK (step BETWEEN 0 AND 200),
    phase          text CHECK (phase IN ('prove', 'initialize', 'credit')),  -- of `step`'s APDU
    apdu           bytea,                      -- the command APDU of `step`
    load_id        bigint,                     -- the load that APDU belongs to
    resolving_id   bigint,                     -- an unsure load whose card answered 94 06
    answered_rapdu bytea,                      -- the card answer that completed step - 1
    answer_status  smallint,                   -- and the HTTP answer given to it
    answer         jsonb,
    balance_fen    bigint,                     -- the card's last verified balance
    loaded_fen     bigint NOT NULL DEFAULT 0,
    loaded         bigint[] NOT NULL DEFAULT '{}',
    held           bigint[] NOT NULL DEFAULT '{}',
    failure        text,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    CHECK ((state = 'open') = (phase IS NOT NULL))
);
-- One live session per card: a new one supersedes it (in the same transaction).
CREATE UNIQUE INDEX ota_sessions_live ON ota_sessions (card_asn) WHERE state = 'open';
CREATE INDEX ota_sessions_rider ON ota_sessions (rider_id, created_at DESC);

CREATE TABLE ota_loads (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    session_id     uuid NOT NULL REFERENCES ota_sessions (id),
    order_id       bigint NOT NULL REFERENCES topup_orders (id),
    card_asn       text NOT NULL,
    amount_fen     bigint NOT NULL CHECK (amount_fen > 0),
    state          text NOT NULL DEFAULT 'started' CHECK (state IN (
                       'started', 'initialized', 'crediting', 'completed',
                       'failed_before_credit', 'unsure', 'held', 'not_credited')),
    key_index      smallint NOT NULL,
    terminal_id    bytea NOT NULL CHECK (length(terminal_id) = 6),
    -- from the INITIALIZE FOR LOAD answer (MAC1 verified)
    key_version    smallint,
    balance_fen    bigint,
    online_counter integer,
    random         bytea,
    -- handed out with CREDIT FOR LOAD
    date           bytea,
    time           bytea,
    mac2           bytea,
    tac            bytea,
    evidence       jsonb NOT NULL DEFAULT '{}',  -- what the card answered, for operators
    failure        text,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    CHECK (state IN ('started', 'failed_before_credit')
           OR (balance_fen IS NOT NULL AND online_counter IS NOT NULL AND random IS NOT NULL)),
    CHECK (state IN ('started', 'initialized', 'failed_before_credit')
           OR (mac2 IS NOT NULL AND date IS NOT NULL AND time IS NOT NULL))
);
-- A load is never handed out twice for one order: at most one attempt past INITIALIZE that
-- did not end "not credited" (an INITIALIZE alone moves nothing and is not counted).
CREATE UNIQUE INDEX ota_loads_one_per_order ON ota_loads (order_id)
    WHERE state IN ('initialized', 'crediting', 'completed', 'unsure', 'held');
CREATE INDEX ota_loads_card_open ON ota_loads (card_asn)
    WHERE state IN ('crediting', 'unsure', 'held');
CREATE INDEX ota_loads_order ON ota_loads (order_id, session_id);  -- an order's attempts
CREATE INDEX ota_loads_session ON ota_loads (session_id);
CREATE INDEX ota_loads_unsettled ON ota_loads (id) WHERE state IN ('unsure', 'held');

CREATE TABLE ota_load_transitions (
    from_state text NOT NULL,
    to_state   text NOT NULL,
    PRIMARY KEY (from_state, to_state)
);
INSERT INTO ota_load_transitions (from_state, to_state) VALUES
    ('started', 'initialized'), ('started', 'failed_before_credit'),
    ('initialized', 'crediting'), ('initialized', 'failed_before_credit'),
    ('crediting', 'completed'), ('crediting', 'unsure'),
    ('unsure', 'completed'), ('unsure', 'not_credited'), ('unsure', 'held'),
    ('held', 'completed'), ('held', 'not_credited');

CREATE FUNCTION ota_loads_transition() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.state <> OLD.state AND NOT EXISTS (
        SELECT 1 FROM ota_load_transitions WHERE from_state = OLD.state AND to_state = NEW.state
    ) THEN
        RAISE EXCEPTION 'load % may not go from % to %', OLD.id, OLD.state, NEW.state
            USING ERRCODE = 'OC030';
    END IF;
    NEW.updated_at := now();
    RETURN NEW;
END $$;

CREATE TRIGGER ota_loads_transition BEFORE UPDATE ON ota_loads
    FOR EACH ROW EXECUTE FUNCTION ota_loads_transition();

-- A card top-up whose load may have reached the chip is not refunded until that is settled.
CREATE FUNCTION topup_orders_not_while_loading() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (
        SELECT 1 FROM ota_loads
         WHERE order_id = OLD.id AND state IN ('initialized', 'crediting', 'unsure', 'held')
    ) THEN
        RAISE EXCEPTION 'top-up % is being loaded', OLD.id USING ERRCODE = 'OC031';
    END IF;
    RETURN NEW;
END $$;

-- Only for that one transition: every other update of an order pays nothing for it.
CREATE TRIGGER topup_orders_not_while_loading BEFORE UPDATE ON topup_orders
    FOR EACH ROW WHEN (OLD.state = 'pending_load' AND NEW.state = 'refunding')
    EXECUTE FUNCTION topup_orders_not_while_loading();

-- An operator's decision on a held load: the audit trail.
CREATE TABLE ota_resolutions (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    load_id    bigint NOT NULL UNIQUE REFERENCES ota_loads (id),
    outcome    text NOT NULL CHECK (outcome IN ('credited', 'not_credited')),
    reason     text NOT NULL,
    operator   text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

INSERT INTO ledger_txn_kinds (kind) VALUES
    ('ota_load'),           -- pending load -> card float, on a verified TAC or proof (ref ota:<load id>)
    ('card_balance_seen');  -- card float follows a verified chip balance we did not cause
                            -- (first contact, rides not yet cleared), against suspense
                            -- (ref card-seen:<load id>)
