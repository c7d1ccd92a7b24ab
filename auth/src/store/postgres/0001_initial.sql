-- The auth store on PostgreSQL: the same tables as the embedded SQLite store
-- (auth/src/store/sqlite.rs), in the schema `auth`. Names compare byte-wise
-- (COLLATE "C") so that listings sort as SQLite sorts them.

CREATE TABLE accounts (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name        TEXT COLLATE "C" NOT NULL UNIQUE,
    namespace   TEXT COLLATE "C" NOT NULL UNIQUE,
    created_at  BIGINT NOT NULL
);

-- Humans and robots. Usernames are global: they are what clients send.
CREATE TABLE users (
    id            BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    account_id    BIGINT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    username      TEXT COLLATE "C" NOT NULL UNIQUE,
    kind          TEXT NOT NULL CHECK (kind IN ('user', 'robot')),
    role          TEXT NOT NULL CHECK (role IN ('admin', 'developer', 'reader')),
    password_hash TEXT,
    created_at    BIGINT NOT NULL,
    disabled_at   BIGINT
);
CREATE INDEX users_account ON users(account_id);

-- Login credentials, robot API keys and refresh tokens; secrets as argon2 hashes.
CREATE TABLE credentials (
    id          TEXT COLLATE "C" PRIMARY KEY,
    user_id     BIGINT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    kind        TEXT NOT NULL CHECK (kind IN ('login', 'api_key', 'refresh')),
    secret_hash TEXT NOT NULL,
    description TEXT,
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT,
    revoked_at  BIGINT,
    parent_id   TEXT COLLATE "C" REFERENCES credentials(id) ON DELETE CASCADE
);
CREATE INDEX credentials_user ON credentials(user_id);
CREATE INDEX credentials_parent ON credentials(parent_id);

CREATE TABLE nodes (
    id               TEXT COLLATE "C" PRIMARY KEY,
    account_id       BIGINT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    name             TEXT COLLATE "C" NOT NULL,
    cert_serial      TEXT NOT NULL,
    cert_fingerprint TEXT NOT NULL,
    enrolled_at      BIGINT NOT NULL,
    revoked_at       BIGINT,
    UNIQUE (account_id, name)
);

CREATE TABLE signing_keys (
    kid         TEXT COLLATE "C" PRIMARY KEY,
    private_pem TEXT NOT NULL,
    public_pem  TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    retire_at   BIGINT
);

CREATE TABLE node_ca (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    cert_pem   TEXT NOT NULL,
    key_pem    TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

-- Bumped by every change token verifiers must notice (revocations, keys).
CREATE TABLE revision (
    id    INTEGER PRIMARY KEY CHECK (id = 1),
    value BIGINT NOT NULL
);
INSERT INTO revision (id, value) VALUES (1, 0);

CREATE TABLE audit (
    id         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at         BIGINT NOT NULL,
    account_id BIGINT,
    actor      TEXT NOT NULL,
    action     TEXT NOT NULL,
    target     TEXT,
    source     TEXT,
    outcome    TEXT NOT NULL,
    detail     TEXT
);
CREATE INDEX audit_account_at ON audit(account_id, at);

-- Portal sign-in sessions; the cookie value is stored as its SHA-256.
CREATE TABLE sessions (
    id_hash    TEXT COLLATE "C" PRIMARY KEY,
    user_id    BIGINT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    csrf       TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX sessions_expiry ON sessions(expires_at);
