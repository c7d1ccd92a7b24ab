-- The registry's metadata on PostgreSQL: the same tables as the embedded
-- SQLite store (registry/src/storage/sqlite.rs), in the schema `registry`.
-- Names compare byte-wise (COLLATE "C"), as in SQLite: listings page by
-- name order, and a namespace's names sort between '<ns>/' and '<ns>0'.

CREATE TABLE repositories (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name        TEXT COLLATE "C" NOT NULL UNIQUE,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL
);

-- Blobs present in the blob store, verified.
CREATE TABLE blobs (
    digest      TEXT COLLATE "C" PRIMARY KEY,
    size        BIGINT NOT NULL,
    created_at  BIGINT NOT NULL
);

-- Which repositories a blob belongs to (by upload or mount).
CREATE TABLE repository_blobs (
    repository_id BIGINT NOT NULL REFERENCES repositories(id) ON DELETE CASCADE,
    digest        TEXT COLLATE "C" NOT NULL REFERENCES blobs(digest),
    linked_at     BIGINT NOT NULL,
    PRIMARY KEY (repository_id, digest)
);
CREATE INDEX repository_blobs_digest ON repository_blobs(digest);

CREATE TABLE manifests (
    repository_id     BIGINT NOT NULL REFERENCES repositories(id) ON DELETE CASCADE,
    digest            TEXT COLLATE "C" NOT NULL,
    media_type        TEXT NOT NULL,
    artifact_type     TEXT,
    config_media_type TEXT,
    subject           TEXT COLLATE "C",
    annotations       TEXT,
    size              BIGINT NOT NULL,
    content_size      BIGINT NOT NULL,
    content           BYTEA NOT NULL,
    created_at        BIGINT NOT NULL,
    pushed_at         BIGINT NOT NULL,
    -- The platform an image manifest's config names (JSON), for listings.
    platform          TEXT,
    PRIMARY KEY (repository_id, digest)
);
CREATE INDEX manifests_subject ON manifests(repository_id, subject) WHERE subject IS NOT NULL;

-- Config and layers a manifest references.
CREATE TABLE manifest_blobs (
    repository_id   BIGINT NOT NULL,
    manifest_digest TEXT COLLATE "C" NOT NULL,
    blob_digest     TEXT COLLATE "C" NOT NULL REFERENCES blobs(digest),
    PRIMARY KEY (repository_id, manifest_digest, blob_digest),
    FOREIGN KEY (repository_id, manifest_digest)
        REFERENCES manifests(repository_id, digest) ON DELETE CASCADE
);
CREATE INDEX manifest_blobs_blob ON manifest_blobs(blob_digest);

-- Manifests an index lists, in order, with their platforms.
CREATE TABLE manifest_children (
    repository_id BIGINT NOT NULL,
    parent_digest TEXT COLLATE "C" NOT NULL,
    position      BIGINT NOT NULL,
    child_digest  TEXT COLLATE "C" NOT NULL,
    platform      TEXT,
    PRIMARY KEY (repository_id, parent_digest, position),
    FOREIGN KEY (repository_id, parent_digest)
        REFERENCES manifests(repository_id, digest) ON DELETE CASCADE
);
CREATE INDEX manifest_children_child ON manifest_children(repository_id, child_digest);

CREATE TABLE tags (
    repository_id   BIGINT NOT NULL,
    name            TEXT COLLATE "C" NOT NULL,
    manifest_digest TEXT COLLATE "C" NOT NULL,
    updated_at      BIGINT NOT NULL,
    PRIMARY KEY (repository_id, name),
    FOREIGN KEY (repository_id, manifest_digest)
        REFERENCES manifests(repository_id, digest) ON DELETE CASCADE
);
CREATE INDEX tags_manifest ON tags(repository_id, manifest_digest);

-- Upload sessions: where a session was created (its progress is kept by
-- the blob store).
CREATE TABLE uploads (
    id          TEXT COLLATE "C" PRIMARY KEY,
    repository  TEXT COLLATE "C" NOT NULL,
    size        BIGINT NOT NULL,
    hash_state  BYTEA NOT NULL,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL
);
CREATE INDEX uploads_repository ON uploads(repository);
