-- Dynamic QR ride codes (DESIGN.md section 7, shared/QR_FORMAT.md): rider devices and their
-- certificates, rides uploaded by gates, and the versioned deny list gates download.
-- Issuer keys live in secret_keys (kind 'qr_issuer'). A QR "account id" is the rider id.

-- A device is one P-256 key a rider proved to hold. One active device per rider: a
-- certificate for another key revokes the previous device.
CREATE TABLE qr_devices (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    rider_id    bigint NOT NULL,
    public_key  bytea NOT NULL CHECK (length(public_key) = 33),   -- SEC1 compressed
    fingerprint bytea NOT NULL CHECK (length(fingerprint) = 8),   -- SHA-256(key)[:8]
    status      text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'revoked')),
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);
CREATE UNIQUE INDEX qr_devices_one_active ON qr_devices (rider_id) WHERE status = 'active';
-- A device key speaks for one rider: deny list entries name it by fingerprint alone.
CREATE UNIQUE INDEX qr_devices_key_active ON qr_devices (fingerprint) WHERE status = 'active';
CREATE INDEX qr_devices_rider ON qr_devices (rider_id, created_at DESC);

CREATE TABLE qr_certificates (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    rider_id      bigint NOT NULL,
    device_id     bigint NOT NULL REFERENCES qr_devices (id),
    issuer_key_id smallint NOT NULL CHECK (issuer_key_id BETWEEN 1 AND 255),
    valid_from    timestamptz NOT NULL,
    valid_until   timestamptz NOT NULL,
    ceiling_fen   integer NOT NULL CHECK (ceiling_fen > 0),
    created_at    timestamptz NOT NULL DEFAULT now(),
    CHECK (valid_until > valid_from)
);
CREATE INDEX qr_certificates_device ON qr_certificates (device_id, valid_until DESC);

-- One row per code a gate accepted and uploaded whose signatures verified. The replay key
-- (qr.verify: 01 || account || generated at || counter, or 02 || nonce) is unique: a code
-- rides once, whichever gate uploads it and whatever Redis remembers.
CREATE TABLE qr_rides (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    replay_key  bytea NOT NULL UNIQUE CHECK (length(replay_key) IN (9, 15)),
    code        bytea NOT NULL,                    -- the code as scanned: clearing re-checks it
    rider_id    bigint NOT NULL,
    terminal_id text NOT NULL,
    operator    text NOT NULL,
    fare_fen    integer NOT NULL CHECK (fare_fen > 0),
    tapped_at   timestamptz NOT NULL,
    status      text NOT NULL CHECK (status IN ('accepted', 'rejected')),
    reason      text,                              -- why a rejected ride was refused
    txn_id      bigint,                            -- the ledger txn of an accepted ride
    created_at  timestamptz NOT NULL DEFAULT now(),
    CHECK (status = 'rejected' OR reason IS NULL),
    CHECK (status = 'accepted' OR txn_id IS NULL)
);
CREATE INDEX qr_rides_rider ON qr_rides (rider_id, tapped_at DESC);

-- The deny list as an append-only log: gates ask for every entry after the last version they
-- saw. Writers serialise on an advisory lock, so versions commit in order and a reader never
-- skips one that commits late.
CREATE TABLE qr_deny_list (
    version     bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind        text NOT NULL CHECK (kind IN ('account', 'device')),
    action      text NOT NULL CHECK (action IN ('add', 'remove')),
    account_id  bigint,
    fingerprint bytea CHECK (length(fingerprint) = 8),
    reason      text NOT NULL,
    expires_at  timestamptz,                       -- devices: when their last certificate ends
    created_at  timestamptz NOT NULL DEFAULT now(),
    CHECK ((kind = 'account') = (account_id IS NOT NULL AND fingerprint IS NULL))
);
CREATE INDEX qr_deny_list_account ON qr_deny_list (account_id, version DESC)
    WHERE account_id IS NOT NULL;
CREATE INDEX qr_deny_list_device ON qr_deny_list (fingerprint, version DESC)
    WHERE fingerprint IS NOT NULL;
