"""Line grammar, JSON and trailer rules (spec §1, scenarios 1, 2, 5, 6)."""

from __future__ import annotations

import pytest
from homeserver.replication.protocol import (
    MAX_LINE_BYTES,
    PingCommand,
    PositionCommand,
    ProtocolError,
    RdataCommand,
    ReplicateCommand,
    UserIpCommand,
    encode_json,
    parse_line,
)


def test_replicate_with_and_without_trailing_space() -> None:
    """`REPLICATE` and `REPLICATE ` both parse; arguments are an old form."""
    assert parse_line("REPLICATE") == ReplicateCommand()
    assert parse_line("REPLICATE ") == ReplicateCommand()
    with pytest.raises(ProtocolError):
        parse_line("REPLICATE events 5")
    with pytest.raises(ProtocolError):
        parse_line("REPLICATE ALL NOW")


def test_rdata_fields_and_batch() -> None:
    """RDATA yields stream, instance, token and JSON; `batch` means no token."""
    cmd = parse_line('RDATA events master 12 ["state",["!r","t","",null]]')
    assert isinstance(cmd, RdataCommand)
    assert (cmd.stream, cmd.instance, cmd.token) == ("events", "master", 12)
    assert cmd.row == ["state", ["!r", "t", "", None]]
    batch = parse_line('RDATA device_lists w1 batch ["@u:x"]')
    assert isinstance(batch, RdataCommand) and batch.token is None


def test_position_prev_above_new_is_an_error() -> None:
    """POSITION with prev > new is refused; prev == new is fine."""
    assert parse_line("POSITION events master 5 5") == PositionCommand("events", "master", 5, 5)
    with pytest.raises(ProtocolError, match="above"):
        parse_line("POSITION events master 6 5")


@pytest.mark.parametrize(
    "line",
    [
        "RDATA events master -1 []",
        "RDATA events master 01 []",
        "RDATA events master 1.5 []",
        f"RDATA events master {2**63} []",
        "POSITION events master x 5",
        "POSITION events 5",  # seed form
        "POSITION events master 5",  # v1.13 form
        'RDATA events 5 ["ev"]',  # without instance
        "RDATA events master 5 [NaN]",
        "RDATA events master 5 {}",
        "RDATA Events master 5 []",
        "SYNC 123",
        "INVALIDATE_CACHE x",
        "FEDERATION_ACK 1",
        "FOO bar",
        "lowercase command",
    ],
)
def test_malformed_and_old_forms_raise(line: str) -> None:
    """Bad tokens, bad JSON, old forms and unknown commands are protocol errors."""
    with pytest.raises(ProtocolError):
        parse_line(line)


def test_max_token_accepted() -> None:
    """2^63-1 is the largest token."""
    cmd = parse_line(f"POSITION events master 0 {2**63 - 1}")
    assert isinstance(cmd, PositionCommand) and cmd.new == 2**63 - 1


def test_row_with_spaces_unicode_and_tab_round_trips() -> None:
    """A row with spaces, non-ASCII text and a TAB inside a string round-trips."""
    row = ["ev", ["$e", "!r", "m.room.message", None, None, None, None, False, False]]
    row[1][0] = "$a b\tc é 🎉"
    line = RdataCommand("events", "master", 3, row).to_line()
    assert "\t" not in line and "\n" not in line and line.isascii()
    parsed = parse_line(line)
    assert isinstance(parsed, RdataCommand) and parsed.row == row


def test_trace_trailer_round_trips_and_is_dropped_when_too_long() -> None:
    """The TAB trailer round-trips; when it would overflow the line it is left off."""
    carrier = {"traceparent": "00-" + "a" * 32 + "-" + "b" * 16 + "-01", "tracestate": "k=v"}
    cmd = RdataCommand("device_lists", "master", 7, ["@u:x"], carrier)
    parsed = parse_line(cmd.to_line())
    assert isinstance(parsed, RdataCommand) and parsed.trace == carrier
    pos = parse_line(PositionCommand("typing", "master", 1, 2, carrier).to_line())
    assert isinstance(pos, PositionCommand) and pos.trace == carrier
    big_row = ["x" * (MAX_LINE_BYTES - 60)]
    line = RdataCommand("device_lists", "master", 7, big_row, carrier).to_line()
    assert "\t" not in line and len(line) <= MAX_LINE_BYTES


def test_json_refuses_nan() -> None:
    """Encoding NaN is refused, so no non-standard JSON goes on the wire."""
    with pytest.raises(ValueError):
        encode_json([float("nan")])


def test_user_ip_and_ping() -> None:
    """USER_IP parses its five-field JSON; PING keeps its opaque payload."""
    cmd = parse_line('USER_IP @u:x ["tok","1.2.3.4","curl",null,1700]')
    assert cmd == UserIpCommand("@u:x", "tok", "1.2.3.4", "curl", None, 1700)
    assert parse_line("PING 123") == PingCommand("123")
    with pytest.raises(ProtocolError):
        parse_line('USER_IP @u:x ["tok"]')
