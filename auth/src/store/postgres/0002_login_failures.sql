-- Failed-login counters (per `user:<name>` and per `ip:<address>`), shared by
-- every replica so that the lock-out holds whichever replica a client hits.
-- A row is one window: the failures counted since `first_at`.
CREATE TABLE login_failures (
    key       TEXT COLLATE "C" PRIMARY KEY,
    failures  INTEGER NOT NULL,
    first_at  BIGINT NOT NULL
);
CREATE INDEX login_failures_first_at ON login_failures(first_at);
