-- One store for every tap and one deny list (DESIGN.md section 7, "Taps"): `taps` replaces
-- qr_rides, `deny_list` replaces qr_deny_list, and the ledger gains a set-based posting
-- function so that a gate's whole batch posts in one statement. Existing rows move over with
-- their ids and versions: gates keep the ride ids they were answered and the deny-list version
-- they last saw.

-- ---------------------------------------------------------------- taps
-- One row per tap a gate uploaded whose record verified (a QR code's signatures, later an HCE
-- cryptogram or a card's TAC). The replay key is unique per kind: a tap counts once, whichever
-- gate uploads it and whatever Redis remembers.
--   qr    01 || account || generated at || counter (15 bytes), or 02 || nonce (9 bytes)
--   hce   and card: defined by the issues that add them
CREATE TABLE taps (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind        text   NOT NULL CHECK (kind IN ('qr', 'hce', 'card')),
    replay_key  bytea  NOT NULL CHECK (length(replay_key) BETWEEN 1 AND 64),
    record      bytea  NOT NULL,                   -- the code or record as the gate sent it:
                                                   -- clearing re-checks it
    rider_id    bigint,                            -- whose wallet pays; NULL for a card tap
                                                   -- that names no rider
    terminal_id text   NOT NULL,
    operator    text   NOT NULL,
    fare_fen    integer NOT NULL CHECK (fare_fen > 0),
    tapped_at   timestamptz NOT NULL,              -- the gate's clock
    status      text   NOT NULL CHECK (status IN ('accepted', 'rejected')),
    reason      text,                              -- why a rejected tap was refused
    txn_id      bigint,                            -- the ledger txn of an accepted tap
    created_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (kind, replay_key),
    CHECK (status = 'rejected' OR reason IS NULL),
    CHECK (status = 'accepted' OR txn_id IS NULL),
    CHECK (kind <> 'qr' OR (length(replay_key) IN (9, 15) AND rider_id IS NOT NULL))
);
CREATE INDEX taps_rider ON taps (rider_id, tapped_at DESC) WHERE rider_id IS NOT NULL;

INSERT INTO taps (id, kind, replay_key, record, rider_id, terminal_id, operator, fare_fen,
                  tapped_at, status, reason, txn_id, created_at)
OVERRIDING SYSTEM VALUE
SELECT id, 'qr', replay_key, code, rider_id, terminal_id, operator, fare_fen, tapped_at, status,
       reason, txn_id, created_at
FROM qr_rides ORDER BY id;
SELECT setval(pg_get_serial_sequence('taps', 'id'), max(id)) FROM taps HAVING max(id) IS NOT NULL;
DROP TABLE qr_rides;

-- ---------------------------------------------------------------- the deny list
-- An append-only log of what gates must refuse: gates ask for every entry after the last
-- version they saw. Writers serialise on an advisory lock, so versions commit in order and a
-- reader never skips one that commits late. Subjects:
--   account       a rider id (account_id)
--   device        a QR device key, by fingerprint: SHA-256(SEC1 compressed key)[:8]
--   card          a physical card, by its ASN (card_number: the 10 bytes as on the chip, BCD;
--   virtual_card  an HCE virtual card, by its ASN   written as 20 hex digits on the wire)
CREATE TABLE deny_list (
    version     bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind        text NOT NULL CHECK (kind IN ('account', 'device', 'card', 'virtual_card')),
    action      text NOT NULL CHECK (action IN ('add', 'remove')),
    account_id  bigint,
    fingerprint bytea CHECK (length(fingerprint) = 8),
    card_number bytea CHECK (length(card_number) = 10),
    reason      text NOT NULL,
    expires_at  timestamptz,                       -- after this the entry no longer matters
    created_at  timestamptz NOT NULL DEFAULT now(),
    CHECK (num_nonnulls(account_id, fingerprint, card_number) = 1),
    CHECK ((kind = 'account') = (account_id IS NOT NULL)),
    CHECK ((kind = 'device') = (fingerprint IS NOT NULL)),
    CHECK ((kind IN ('card', 'virtual_card')) = (card_number IS NOT NULL))
);
CREATE INDEX deny_list_account ON deny_list (account_id, version DESC)
    WHERE account_id IS NOT NULL;
CREATE INDEX deny_list_device ON deny_list (fingerprint, version DESC)
    WHERE fingerprint IS NOT NULL;
CREATE INDEX deny_list_card ON deny_list (kind, card_number, version DESC)
    WHERE card_number IS NOT NULL;

INSERT INTO deny_list (version, kind, action, account_id, fingerprint, reason, expires_at,
                       created_at)
OVERRIDING SYSTEM VALUE
SELECT version, kind, action, account_id, fingerprint, reason, expires_at, created_at
FROM qr_deny_list ORDER BY version;
SELECT setval(pg_get_serial_sequence('deny_list', 'version'), max(version))
FROM deny_list HAVING max(version) IS NOT NULL;
DROP TABLE qr_deny_list;

-- ---------------------------------------------------------------- set-based postings
-- Txn ids drawn ahead of a ledger_post_batch, so that business rows naming their txn can be
-- written, whole, before the posting. An id never posted is a gap, as a rolled-back posting
-- leaves one.
CREATE FUNCTION ledger_reserve_txn_ids(p_count integer) RETURNS bigint[]
LANGUAGE sql AS $$
    SELECT coalesce(array_agg(nextval(pg_get_serial_sequence('ledger_txns', 'id'))), '{}')
    FROM generate_series(1, p_count)
$$;

-- Posts a batch of two-leg txns of one kind in the caller's transaction, in one statement.
-- Posting i moves p_amounts[i] fen from account p_from[i] to account p_to[i] under ref
-- p_refs[i], as txn p_txn_ids[i] when given (drawn with ledger_reserve_txn_ids) or a new id;
-- all share p_memo. Returns the txn id of each posting, in input order, NULL for a posting
-- refused because its from-account would fall below its floor.
--
-- Every account of the batch is locked once, in id order (as ledger_post does, so batches and
-- single postings never deadlock one another). Postings are then judged in input order against
-- running balances: a refused posting writes nothing and later ones are still judged, so two
-- rides of one rider are debited in order and the floor holds after each. Each account's
-- balance then changes by ONE update with its net amount: a hot account (an operator's payable)
-- is written once per batch, not once per posting. Each accepted posting becomes one txn with
-- two entries (-amount, +amount: it sums to zero), whose balance_after_fen follow the running
-- balances; an account's entries therefore sum to its net change, so `ledger verify` stays
-- exact. Any failure raises and undoes the whole statement.
--   OC001  malformed batch (lengths differ; an amount NULL or not positive; from = to; a ref
--          NULL, empty or repeated; a txn id repeated or never drawn)
--   OC003  unknown account (DETAIL: the account id)
--   23505 on ledger_txns_kind_ref_key: a (kind, ref) was posted before
CREATE FUNCTION ledger_post_batch(p_kind text, p_memo text, p_refs text[],
                                  p_from bigint[], p_to bigint[], p_amounts bigint[],
                                  p_txn_ids bigint[] DEFAULT NULL)
RETURNS bigint[]
LANGUAGE plpgsql AS $$
DECLARE
    v_count    integer := coalesce(array_length(p_refs, 1), 0);
    v_ids      bigint[];      -- every account of the batch, ascending
    v_start    bigint[];      -- their balances before the batch (same positions)
    v_balances bigint[];      -- their running balances
    v_floors   bigint[];
    v_from_at  integer[];     -- posting i: its from-account's position in v_ids
    v_to_at    integer[];
    v_from_after bigint[];    -- posting i: balances after it (NULL: refused)
    v_to_after   bigint[];
    v_missing  bigint;
    v_changed  integer;
    v_updated  integer;
    v_f        integer;
    v_t        integer;
    v_txn_ids  bigint[];
BEGIN
    IF v_count = 0 THEN
        RETURN '{}';
    END IF;
    p_txn_ids := coalesce(p_txn_ids, array_fill(NULL::bigint, ARRAY[v_count]));
    IF coalesce(array_length(p_from, 1), 0) <> v_count
       OR coalesce(array_length(p_to, 1), 0) <> v_count
       OR coalesce(array_length(p_amounts, 1), 0) <> v_count
       OR coalesce(array_length(p_txn_ids, 1), 0) <> v_count
       OR EXISTS (SELECT 1 FROM unnest(p_refs, p_from, p_to, p_amounts) AS t(r, f, d, m)
                   WHERE r IS NULL OR r = '' OR f IS NULL OR d IS NULL OR m IS NULL OR m <= 0
                      OR f = d)
       OR (SELECT count(DISTINCT r) FROM unnest(p_refs) AS r) <> v_count
       OR (SELECT count(x) - count(DISTINCT x) FROM unnest(p_txn_ids) AS x) <> 0
       OR (SELECT max(x) FROM unnest(p_txn_ids) AS x) > coalesce(pg_sequence_last_value(
              pg_get_serial_sequence('ledger_txns', 'id')::regclass), 0) THEN
        RAISE EXCEPTION 'malformed ledger batch' USING ERRCODE = 'OC001';
    END IF;

    SELECT array_agg(a.id ORDER BY a.id), array_agg(a.balance_fen ORDER BY a.id),
           array_agg(a.floor_fen ORDER BY a.id)
      INTO v_ids, v_balances, v_floors
      FROM (SELECT id, balance_fen, floor_fen FROM ledger_accounts
             WHERE id = ANY (p_from || p_to) ORDER BY id FOR UPDATE) AS a;
    IF coalesce(array_length(v_ids, 1), 0)
       <> (SELECT count(DISTINCT x) FROM unnest(p_from || p_to) AS x) THEN
        SELECT min(x) INTO v_missing FROM unnest(p_from || p_to) AS x
         WHERE v_ids IS NULL OR NOT x = ANY (v_ids);
        RAISE EXCEPTION 'unknown ledger account' USING ERRCODE = 'OC003',
            DETAIL = v_missing::text;
    END IF;
    v_start := v_balances;

    SELECT array_agg(f.pos ORDER BY t.n), array_agg(d.pos ORDER BY t.n)
      INTO v_from_at, v_to_at
      FROM unnest(p_from, p_to) WITH ORDINALITY AS t(a_from, a_to, n)
      JOIN unnest(v_ids) WITH ORDINALITY AS f(id, pos) ON f.id = t.a_from
      JOIN unnest(v_ids) WITH ORDINALITY AS d(id, pos) ON d.id = t.a_to;

    v_from_after := array_fill(NULL::bigint, ARRAY[v_count]);
    v_to_after := array_fill(NULL::bigint, ARRAY[v_count]);
    FOR i IN 1 .. v_count LOOP
        v_f := v_from_at[i];
        v_t := v_to_at[i];
        IF v_floors[v_f] IS NULL OR v_balances[v_f] - p_amounts[i] >= v_floors[v_f] THEN
            v_balances[v_f] := v_balances[v_f] - p_amounts[i];
            v_balances[v_t] := v_balances[v_t] + p_amounts[i];
            v_from_after[i] := v_balances[v_f];
            v_to_after[i] := v_balances[v_t];
        END IF;
    END LOOP;

    -- One update per account, by its net change (the rows are locked since they were read).
    -- The floor condition is the same last line of defence as ledger_post's: an account it
    -- leaves out is a bug here, and fails the batch rather than the ledger.
    SELECT count(*) INTO v_changed FROM unnest(v_start, v_balances) AS b(s, e) WHERE s <> e;
    UPDATE ledger_accounts AS a SET balance_fen = a.balance_fen + b.delta_fen
      FROM (SELECT id, e - s AS delta_fen FROM unnest(v_ids, v_start, v_balances) AS t(id, s, e)
             WHERE s <> e) AS b
     WHERE a.id = b.id AND (a.floor_fen IS NULL OR a.balance_fen + b.delta_fen >= a.floor_fen);
    GET DIAGNOSTICS v_updated = ROW_COUNT;
    IF v_updated <> v_changed THEN
        RAISE EXCEPTION 'balance would fall below floor' USING ERRCODE = 'OC002';
    END IF;

    -- Each accepted posting's txn id, drawn here where the caller gave none: the entries name
    -- their txn without matching refs back.
    SELECT array_agg(CASE WHEN t.from_after IS NULL THEN NULL
                          ELSE coalesce(t.given, nextval(pg_get_serial_sequence('ledger_txns',
                                                                                'id'))) END
                     ORDER BY t.n)
      INTO v_txn_ids
      FROM unnest(v_from_after, p_txn_ids) WITH ORDINALITY AS t(from_after, given, n);
    INSERT INTO ledger_txns (id, kind, ref, memo) OVERRIDING SYSTEM VALUE
    SELECT t.txn_id, p_kind, t.ref, p_memo
      FROM unnest(v_txn_ids, p_refs) WITH ORDINALITY AS t(txn_id, ref, n)
     WHERE t.txn_id IS NOT NULL
     ORDER BY t.n;
    INSERT INTO ledger_entries (txn_id, account_id, amount_fen, balance_after_fen)
    SELECT t.txn_id, e.account_id, e.amount_fen, e.balance_after_fen
      FROM unnest(v_txn_ids, p_from, p_to, p_amounts, v_from_after, v_to_after) WITH ORDINALITY
           AS t(txn_id, a_from, a_to, amount, from_after, to_after, n)
     CROSS JOIN LATERAL (VALUES (t.a_from, -t.amount, t.from_after),
                                (t.a_to, t.amount, t.to_after))
           AS e(account_id, amount_fen, balance_after_fen)
     WHERE t.txn_id IS NOT NULL
     ORDER BY t.n;
    RETURN v_txn_ids;
END $$;
