CREATE TABLE node_status (
    node_id       TEXT PRIMARY KEY,
    account_id    BIGINT NOT NULL,
    agent_version TEXT NOT NULL,
    platform      TEXT NOT NULL,
    hostname      TEXT NOT NULL,
    connected_at  BIGINT NOT NULL,
    last_seen     BIGINT NOT NULL,
    replica       TEXT,
    report        TEXT,
    report_at     BIGINT
);
CREATE INDEX node_status_account ON node_status(account_id);

CREATE TABLE commands (
    id          TEXT PRIMARY KEY,
    node_id     TEXT NOT NULL,
    account_id  BIGINT NOT NULL,
    actor       TEXT NOT NULL,
    kind        TEXT NOT NULL,
    action      TEXT NOT NULL,
    state       TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL,
    progress    TEXT,
    result      TEXT
);
CREATE INDEX commands_node ON commands(node_id, created_at);
CREATE INDEX commands_open ON commands(state, expires_at);

CREATE TABLE desired_state (
    node_id     TEXT PRIMARY KEY,
    account_id  BIGINT NOT NULL,
    generation  BIGINT NOT NULL,
    containers  TEXT NOT NULL,
    updated_at  BIGINT NOT NULL,
    actor       TEXT NOT NULL
);
