-- Seams for the money flows: every posting names its business event, and its kind is one of a
-- known list that each area's migration extends; operator adjustments get a row of their own.

-- A txn's kind is one of these; an area that posts adds its kinds in its own migration.
CREATE TABLE ledger_txn_kinds (
    kind text PRIMARY KEY
);
INSERT INTO ledger_txn_kinds (kind) VALUES ('adjustment'), ('qr_ride');

-- NOT VALID: the rows of earlier development databases keep what they had; every new txn is
-- checked.
ALTER TABLE ledger_txns
    ADD CONSTRAINT ledger_txns_kind_known FOREIGN KEY (kind) REFERENCES ledger_txn_kinds (kind)
        NOT VALID,
    ADD CONSTRAINT ledger_txns_ref_required CHECK (ref IS NOT NULL AND ref <> '') NOT VALID;

-- An operator's correction of a rider's wallet against suspense: the business row its ledger
-- txn names (ref 'adjustment:<id>').
CREATE TABLE wallet_adjustments (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    rider_id   bigint NOT NULL,
    amount_fen bigint NOT NULL CHECK (amount_fen <> 0),
    reason     text   NOT NULL,
    operator   text   NOT NULL,
    txn_id     bigint,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX wallet_adjustments_rider ON wallet_adjustments (rider_id, id DESC);
