-- fedattn store, migration 1. Portable SQL: the same file runs on PostgreSQL and SQLite.
-- Times are UNIX epoch seconds (DOUBLE PRECISION), JSON documents are TEXT, so neither backend
-- needs its own types. Every write is idempotent (natural or client-chosen keys), which is what
-- lets the store retry a write whose commit acknowledgement was lost.

CREATE TABLE sessions (
    name TEXT PRIMARY KEY,
    mode TEXT NOT NULL,
    spec TEXT NOT NULL,
    phase TEXT NOT NULL,
    message TEXT NOT NULL DEFAULT '',
    round INTEGER NOT NULL DEFAULT 0,
    created_at DOUBLE PRECISION NOT NULL,
    started_at DOUBLE PRECISION,
    completed_at DOUBLE PRECISION
);

CREATE TABLE participants (
    session TEXT NOT NULL REFERENCES sessions (name) ON DELETE CASCADE,
    name TEXT NOT NULL,
    weight DOUBLE PRECISION NOT NULL DEFAULT 1,
    phase TEXT NOT NULL,
    joined_at DOUBLE PRECISION,
    last_heartbeat DOUBLE PRECISION,
    result TEXT,
    PRIMARY KEY (session, name)
);

CREATE TABLE rounds (
    session TEXT NOT NULL REFERENCES sessions (name) ON DELETE CASCADE,
    round INTEGER NOT NULL,
    state TEXT NOT NULL,
    participants INTEGER NOT NULL DEFAULT 0,
    opened_at DOUBLE PRECISION NOT NULL,
    closed_at DOUBLE PRECISION,
    contributions INTEGER NOT NULL DEFAULT 0,
    weight_total DOUBLE PRECISION,
    aggregation_seconds DOUBLE PRECISION,
    accuracy DOUBLE PRECISION,
    model_checksum BIGINT,
    PRIMARY KEY (session, round)
);

CREATE TABLE contributions (
    session TEXT NOT NULL REFERENCES sessions (name) ON DELETE CASCADE,
    participant TEXT NOT NULL,
    round INTEGER NOT NULL,
    layer_start INTEGER NOT NULL,
    layer_end INTEGER NOT NULL,
    bytes BIGINT NOT NULL DEFAULT 0,
    latency_ms DOUBLE PRECISION,
    weight DOUBLE PRECISION,
    checksum BIGINT,
    recorded_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (session, participant, round, layer_start)
);

CREATE TABLE events (
    id TEXT PRIMARY KEY,
    session TEXT NOT NULL,
    participant TEXT,
    round INTEGER,
    kind TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT '',
    message TEXT NOT NULL DEFAULT '',
    data TEXT,
    at DOUBLE PRECISION NOT NULL
);

CREATE INDEX events_by_session ON events (session, at);
