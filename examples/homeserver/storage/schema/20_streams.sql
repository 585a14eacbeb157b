-- Replication streams: device lists (#7010: one row per stream ID across both
-- tables), persisted stream positions, and a minimal event stream used until
-- the event store's own `events` table carries the stream ordering.

CREATE TABLE IF NOT EXISTS device_lists_stream (
    stream_id BIGINT NOT NULL UNIQUE,
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    instance_name TEXT NOT NULL DEFAULT 'master',
    trace_context TEXT
);
CREATE INDEX IF NOT EXISTS device_lists_stream_id ON device_lists_stream (stream_id, user_id);
CREATE INDEX IF NOT EXISTS device_lists_stream_user_id ON device_lists_stream (user_id, device_id);

CREATE TABLE IF NOT EXISTS device_lists_outbound_pokes (
    destination TEXT NOT NULL,
    stream_id BIGINT NOT NULL UNIQUE,
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    sent BOOLEAN NOT NULL DEFAULT FALSE,
    ts BIGINT NOT NULL,
    instance_name TEXT NOT NULL DEFAULT 'master',
    trace_context TEXT
);
CREATE INDEX IF NOT EXISTS device_lists_outbound_pokes_id ON device_lists_outbound_pokes (destination, stream_id);
CREATE INDEX IF NOT EXISTS device_lists_outbound_pokes_user ON device_lists_outbound_pokes (destination, user_id);

CREATE TABLE IF NOT EXISTS stream_positions (
    stream_name TEXT NOT NULL,
    instance_name TEXT NOT NULL,
    stream_id BIGINT NOT NULL,
    PRIMARY KEY (stream_name, instance_name)
);

-- Minimal events stream (one row per event, keyed by its stream ordering) and
-- its current-state deltas, which share the event's ordering.
CREATE TABLE IF NOT EXISTS event_stream (
    stream_ordering BIGINT NOT NULL PRIMARY KEY,
    event_id TEXT NOT NULL UNIQUE,
    room_id TEXT NOT NULL,
    type TEXT NOT NULL,
    state_key TEXT,
    redacts TEXT,
    relates_to TEXT,
    membership TEXT,
    rejected BOOLEAN NOT NULL DEFAULT FALSE,
    outlier BOOLEAN NOT NULL DEFAULT FALSE,
    instance_name TEXT NOT NULL DEFAULT 'master',
    content TEXT
);
CREATE INDEX IF NOT EXISTS event_stream_room ON event_stream (room_id, stream_ordering);

CREATE TABLE IF NOT EXISTS event_stream_state_deltas (
    stream_id BIGINT NOT NULL,
    room_id TEXT NOT NULL,
    type TEXT NOT NULL,
    state_key TEXT NOT NULL,
    event_id TEXT,
    instance_name TEXT NOT NULL DEFAULT 'master'
);
CREATE INDEX IF NOT EXISTS event_stream_state_deltas_id ON event_stream_state_deltas (stream_id);
