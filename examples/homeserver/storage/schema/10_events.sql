-- Event store: rooms, events with their auth rank, auth and prev edges, state maps
-- (state groups), local memberships, the rooms' current state. Portable SQLite /
-- PostgreSQL. The replication `events` stream reads `events` (by stream_ordering)
-- and `current_state_delta_stream`; columns added after the first release are
-- listed in `schema/__init__.py` (UPGRADE_COLUMNS) so older databases get them.

CREATE TABLE IF NOT EXISTS rooms (
    room_id TEXT NOT NULL PRIMARY KEY,
    room_version TEXT NOT NULL,
    creator TEXT,
    is_public BOOLEAN NOT NULL DEFAULT FALSE
);

CREATE TABLE IF NOT EXISTS events (
    event_id TEXT NOT NULL PRIMARY KEY,
    room_id TEXT NOT NULL,
    type TEXT NOT NULL,
    state_key TEXT,
    sender TEXT NOT NULL,
    origin_server_ts BIGINT NOT NULL,
    depth BIGINT NOT NULL DEFAULT 0,
    auth_rank BIGINT NOT NULL,
    outlier BOOLEAN NOT NULL DEFAULT FALSE,
    rejected_reason TEXT,
    redacted_by TEXT,
    json TEXT NOT NULL,
    -- Position on the `events` stream (events stream ID generator); NULL for outliers.
    stream_ordering BIGINT,
    instance_name TEXT NOT NULL DEFAULT 'master',
    redacts TEXT,
    relates_to TEXT,
    membership TEXT
);
CREATE INDEX IF NOT EXISTS events_room_state ON events (room_id, type, state_key);
CREATE UNIQUE INDEX IF NOT EXISTS events_stream_ordering ON events (stream_ordering);
CREATE INDEX IF NOT EXISTS events_room_stream_ordering ON events (room_id, stream_ordering);

-- The rooms' current state (last accepted non-outlier state event per key, or
-- what the persisting caller resolved), and its changes: one row per changed key,
-- stream_id = the stream ordering of the event that changed it; event_id NULL =
-- the key was removed.
CREATE TABLE IF NOT EXISTS current_state_events (
    room_id TEXT NOT NULL,
    type TEXT NOT NULL,
    state_key TEXT NOT NULL,
    event_id TEXT NOT NULL,
    PRIMARY KEY (room_id, type, state_key)
);

CREATE TABLE IF NOT EXISTS current_state_delta_stream (
    stream_id BIGINT NOT NULL,
    room_id TEXT NOT NULL,
    type TEXT NOT NULL,
    state_key TEXT NOT NULL,
    event_id TEXT,
    instance_name TEXT NOT NULL DEFAULT 'master'
);
CREATE INDEX IF NOT EXISTS current_state_delta_stream_id ON current_state_delta_stream (stream_id);

CREATE TABLE IF NOT EXISTS event_auth (
    event_id TEXT NOT NULL,
    idx INTEGER NOT NULL,
    auth_id TEXT NOT NULL,
    PRIMARY KEY (event_id, idx)
);
CREATE INDEX IF NOT EXISTS event_auth_auth_id ON event_auth (auth_id);

CREATE TABLE IF NOT EXISTS event_edges (
    event_id TEXT NOT NULL,
    idx INTEGER NOT NULL,
    prev_event_id TEXT NOT NULL,
    PRIMARY KEY (event_id, idx)
);
CREATE INDEX IF NOT EXISTS event_edges_prev ON event_edges (prev_event_id);

CREATE TABLE IF NOT EXISTS state_groups (
    id BIGINT NOT NULL PRIMARY KEY,
    room_id TEXT NOT NULL
);

CREATE TABLE IF NOT EXISTS state_groups_state (
    state_group BIGINT NOT NULL,
    type TEXT NOT NULL,
    state_key TEXT NOT NULL,
    event_id TEXT NOT NULL,
    PRIMARY KEY (state_group, type, state_key)
);

CREATE TABLE IF NOT EXISTS event_to_state_groups (
    event_id TEXT NOT NULL PRIMARY KEY,
    state_group BIGINT NOT NULL
);

CREATE TABLE IF NOT EXISTS local_current_membership (
    room_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    event_id TEXT NOT NULL,
    membership TEXT NOT NULL,
    PRIMARY KEY (room_id, user_id)
);

-- Chain-cover index of the auth DAG (per room; chain IDs are dense per room).
CREATE TABLE IF NOT EXISTS event_auth_chains (
    event_id TEXT NOT NULL PRIMARY KEY,
    room_id TEXT NOT NULL,
    chain_id BIGINT NOT NULL,
    seq BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS event_auth_chains_room ON event_auth_chains (room_id, chain_id, seq);

CREATE TABLE IF NOT EXISTS event_auth_chain_links (
    room_id TEXT NOT NULL,
    origin_chain BIGINT NOT NULL,
    origin_seq BIGINT NOT NULL,
    target_chain BIGINT NOT NULL,
    target_seq BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS event_auth_chain_links_room ON event_auth_chain_links (room_id, origin_chain);
