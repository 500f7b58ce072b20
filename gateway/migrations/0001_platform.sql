-- The platform: the double-entry ledger, idempotency keys and encrypted key storage.
-- Money is integer fen (bigint) everywhere.

-- ---------------------------------------------------------------- ledger (DESIGN.md section 5)
CREATE TABLE ledger_accounts (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind        text   NOT NULL CHECK (kind IN (
                    'rider_wallet', 'card_float', 'pending_load', 'virtual_card_float',
                    'channel_receivable', 'operator_payable', 'partner_float',
                    'fee_income', 'suspense')),
    owner       text   NOT NULL,
    currency    char(3) NOT NULL DEFAULT 'CNY' CHECK (currency = 'CNY'),
    balance_fen bigint NOT NULL DEFAULT 0,
    floor_fen   bigint,                     -- NULL: the balance may go anywhere
    created_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (kind, owner, currency),
    -- The posting function checks the floor in its UPDATE; this is the last line of defence.
    CONSTRAINT balance_above_floor CHECK (floor_fen IS NULL OR balance_fen >= floor_fen)
);

CREATE TABLE ledger_txns (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind       text NOT NULL,               -- what caused it: 'topup_paid', 'adjustment', ...
    ref        text,                        -- the business row, e.g. 'topup:42'; one txn per (kind, ref)
    memo       text NOT NULL DEFAULT '',
    created_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (kind, ref)
);

-- No foreign key to ledger_accounts: entries are distributed by account (DESIGN.md section 11);
-- the posting function only writes entries for accounts its UPDATE found.
CREATE TABLE ledger_entries (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    txn_id            bigint NOT NULL REFERENCES ledger_txns (id),
    account_id        bigint NOT NULL,
    amount_fen        bigint NOT NULL CHECK (amount_fen <> 0),
    balance_after_fen bigint NOT NULL,
    created_at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX ledger_entries_account ON ledger_entries (account_id, id DESC);
CREATE INDEX ledger_entries_txn ON ledger_entries (txn_id);

CREATE FUNCTION ledger_forbid_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% rows are never updated or deleted; post a correcting txn', TG_TABLE_NAME
        USING ERRCODE = 'OC004';
END $$;

CREATE TRIGGER ledger_entries_immutable BEFORE UPDATE OR DELETE ON ledger_entries
    FOR EACH ROW EXECUTE FUNCTION ledger_forbid_change();
CREATE TRIGGER ledger_entries_no_truncate BEFORE TRUNCATE ON ledger_entries
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_forbid_change();
CREATE TRIGGER ledger_txns_immutable BEFORE UPDATE OR DELETE ON ledger_txns
    FOR EACH ROW EXECUTE FUNCTION ledger_forbid_change();
CREATE TRIGGER ledger_txns_no_truncate BEFORE TRUNCATE ON ledger_txns
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_forbid_change();

-- Posts one txn in the caller's transaction, in one round trip. Legs are applied in account id
-- order (so concurrent postings never deadlock), each with one conditional UPDATE. Any failure
-- raises, and the statement's effects are undone: a floor breach writes nothing.
--   OC001  malformed posting (fewer than two legs, zero amount, repeated account, sum not zero)
--   OC002  floor breach (DETAIL: the account id)
--   OC003  unknown account (DETAIL: the account id)
CREATE FUNCTION ledger_post(p_kind text, p_ref text, p_memo text,
                            p_accounts bigint[], p_amounts bigint[],
                            OUT txn_id bigint, OUT balances_fen bigint[])
LANGUAGE plpgsql AS $$
DECLARE
    v_legs     integer := coalesce(array_length(p_accounts, 1), 0);
    v_account  bigint;
    v_amount   bigint;
    v_balance  bigint;
    v_position integer;
BEGIN
    IF v_legs < 2 OR v_legs <> coalesce(array_length(p_amounts, 1), 0)
       OR (SELECT sum(a) FROM unnest(p_amounts) AS a) <> 0
       OR 0 = ANY (p_amounts) OR array_position(p_amounts, NULL) IS NOT NULL
       OR (SELECT count(DISTINCT a) FROM unnest(p_accounts) AS a) <> v_legs THEN
        RAISE EXCEPTION 'malformed ledger posting' USING ERRCODE = 'OC001';
    END IF;
    balances_fen := array_fill(NULL::bigint, ARRAY[v_legs]);
    FOR v_position, v_account, v_amount IN
        SELECT t.n, t.a, t.m FROM unnest(p_accounts, p_amounts) WITH ORDINALITY AS t(a, m, n)
        ORDER BY t.a
    LOOP
        UPDATE ledger_accounts SET balance_fen = balance_fen + v_amount
         WHERE id = v_account AND (floor_fen IS NULL OR balance_fen + v_amount >= floor_fen)
        RETURNING balance_fen INTO v_balance;
        IF NOT FOUND THEN
            IF EXISTS (SELECT 1 FROM ledger_accounts WHERE id = v_account) THEN
                RAISE EXCEPTION 'balance would fall below floor' USING ERRCODE = 'OC002',
                    DETAIL = v_account::text;
            END IF;
            RAISE EXCEPTION 'unknown ledger account' USING ERRCODE = 'OC003',
                DETAIL = v_account::text;
        END IF;
        balances_fen[v_position] := v_balance;
    END LOOP;
    INSERT INTO ledger_txns (kind, ref, memo) VALUES (p_kind, p_ref, p_memo)
    RETURNING id INTO txn_id;
    INSERT INTO ledger_entries (txn_id, account_id, amount_fen, balance_after_fen)
    SELECT txn_id, t.a, t.m, t.b FROM unnest(p_accounts, p_amounts, balances_fen) AS t(a, m, b);
END $$;

-- ---------------------------------------------------------------- idempotency keys
CREATE TABLE idempotency_keys (
    principal             text NOT NULL,   -- 'rider:12', 'partner:abc', 'admin:...'
    key                   text NOT NULL,
    request_hash          bytea NOT NULL,
    state                 text NOT NULL CHECK (state IN ('in_flight', 'done')),
    lease_token           uuid,            -- who holds an in-flight key
    locked_until          timestamptz,     -- after this a retry may take the key over
    response_status       integer,
    response_body         bytea,
    created_at            timestamptz NOT NULL DEFAULT now(),
    expires_at            timestamptz NOT NULL,
    PRIMARY KEY (principal, key)
);
CREATE INDEX idempotency_keys_expiry ON idempotency_keys (expires_at);

-- ---------------------------------------------------------------- encrypted keys (DESIGN.md 10)
-- Secret material is AES-256-GCM under the key-encryption key; the associated data binds each
-- ciphertext to its kind, name and version, so rows cannot be swapped.
CREATE TABLE secret_keys (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind        text NOT NULL CHECK (kind IN (
                    'card_master_load', 'card_master_purchase', 'card_master_tac',
                    'channel_private', 'qr_issuer', 'token_signing',
                    'partner_secret', 'webhook_secret')),
    name        text NOT NULL,
    version     integer NOT NULL CHECK (version > 0),
    status      text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'retired', 'revoked')),
    kek_id      bytea NOT NULL,
    nonce       bytea NOT NULL,
    ciphertext  bytea NOT NULL,
    public_data bytea,                     -- the public half, where there is one
    meta        jsonb NOT NULL DEFAULT '{}',
    created_at  timestamptz NOT NULL DEFAULT now(),
    not_after   timestamptz,               -- retired keys stop verifying after this
    UNIQUE (kind, name, version)
);
