-- Replication streams: device lists (#7010: one row per stream ID across both
-- tables) and persisted stream positions. The `events` stream has no table of
-- its own: it reads the event store's `events` and `current_state_delta_stream`
-- (10_events.sql).

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
