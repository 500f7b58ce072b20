-- Identity and access (DESIGN.md section 8): riders and their sessions, partners, terminals.

CREATE TABLE riders (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    phone             text NOT NULL UNIQUE,          -- E.164
    password_hash     text NOT NULL,                 -- scrypt, self-describing
    wallet_account_id bigint NOT NULL,
    status            text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'disabled')),
    created_at        timestamptz NOT NULL DEFAULT now()
);

-- A session is one login on one device: a family of refresh tokens, each used once.
CREATE TABLE rider_sessions (
    id           uuid PRIMARY KEY,
    rider_id     bigint NOT NULL REFERENCES riders (id),
    created_at   timestamptz NOT NULL DEFAULT now(),
    last_used_at timestamptz NOT NULL DEFAULT now(),
    revoked_at   timestamptz,
    revoked_why  text,
    user_agent   text NOT NULL DEFAULT ''
);
CREATE INDEX rider_sessions_rider ON rider_sessions (rider_id, created_at DESC);

CREATE TABLE refresh_tokens (
    token_hash bytea PRIMARY KEY,                    -- SHA-256 of the opaque token
    session_id uuid NOT NULL REFERENCES rider_sessions (id),
    status     text NOT NULL CHECK (status IN ('active', 'used', 'revoked')),
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL
);
CREATE INDEX refresh_tokens_session ON refresh_tokens (session_id);

CREATE TABLE partners (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name         text NOT NULL,
    key_id       text NOT NULL UNIQUE,               -- OC-Key-Id; its secret is in secret_keys
    status       text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'disabled')),
    rate_per_s   integer CHECK (rate_per_s > 0),     -- NULL: ONECARD_RATE_PARTNER_PER_S
    rate_burst   integer CHECK (rate_burst > 0),
    created_at   timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE terminals (
    id          text PRIMARY KEY CHECK (id ~ '^[0-9A-F]{12}$'),   -- the 6-byte terminal id, hex
    operator    text NOT NULL,                       -- the transport operator it belongs to
    public_key  bytea NOT NULL CHECK (length(public_key) = 32),   -- Ed25519
    status      text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'disabled')),
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX terminals_operator ON terminals (operator);
