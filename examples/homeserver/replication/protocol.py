"""The replication line protocol: commands, parsing and encoding (spec §1).

One command per line, ``NAME [SP rest]``, UTF-8, at most :data:`MAX_LINE_BYTES`
bytes without the ``\\n``.  Parsing is strict: anything that does not fit the
grammar raises :class:`ProtocolError`, whose ``reason`` becomes the text of the
``ERROR`` the connection answers with before closing.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

__all__ = [
    "CLIENT_COMMANDS",
    "MAX_LINE_BYTES",
    "MAX_TOKEN",
    "SERVER_COMMANDS",
    "AuthCommand",
    "Command",
    "ErrorCommand",
    "NameCommand",
    "PingCommand",
    "PositionCommand",
    "ProtocolError",
    "RdataCommand",
    "RemoteServerUpCommand",
    "ReplicateCommand",
    "ServerCommand",
    "UserIpCommand",
    "decode_json",
    "encode_json",
    "parse_line",
    "scan_json_list",
    "with_trailer",
]

MAX_LINE_BYTES = 16384
MAX_TOKEN = 2**63 - 1

_NAME_RE = re.compile(r"[A-Z_]+")
_STREAM_RE = re.compile(r"[a-z_]+")
_INSTANCE_RE = re.compile(r"[\x21-\x7e]{1,128}")


class ProtocolError(ValueError):
    """A line that does not fit the grammar; ``reason`` is sent in ``ERROR``."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=True, allow_nan=False)
_encode = _ENCODER.encode


def _make_c_encoder() -> Any:
    """The C encoder with the same settings, built once (``JSONEncoder.encode`` builds one per call)."""
    from json import encoder as _json_encoder

    make = getattr(_json_encoder, "c_make_encoder", None)
    ascii_str = getattr(_json_encoder, "c_encode_basestring_ascii", None)
    if make is None or ascii_str is None:  # pragma: no cover - pure-Python json
        return None
    # No circular-reference markers: a circular value fails (RecursionError) and is then
    # re-encoded by the checking encoder for its usual error.
    return make(None, _ENCODER.default, ascii_str, None, ":", ",", False, False, False)


_c_encode = _make_c_encoder()


def encode_json(value: Any) -> str:
    """Compact, ASCII-only JSON; NaN/Infinity are refused, so no raw newline or TAB."""
    if _c_encode is not None:
        try:
            return "".join(_c_encode(value, 0))
        except (ValueError, TypeError, RecursionError):
            pass  # the checking encoder raises its usual error below
    return _encode(value)


_DECODER = json.JSONDecoder(parse_constant=_reject_constant)

#: ``scan_json_list(text, 0) -> (value, end)``: the decoder's C scanner (NaN and
#: Infinity refused), for callers that check ``end == len(text)`` themselves and
#: fall back to :func:`decode_json` for the error message.
scan_json_list: Callable[[str, int], tuple[Any, int]] = _DECODER.scan_once  # type: ignore[attr-defined]


def decode_json(text: str) -> Any:
    """Parse JSON, refusing NaN and Infinity; errors become :class:`ProtocolError`."""
    try:
        return _DECODER.decode(text)
    except (ValueError, RecursionError) as e:
        raise ProtocolError(f"invalid JSON: {e}") from None


def _token(text: str, what: str = "token") -> int:
    if not (text.isdigit() and text.isascii() and (text[0] != "0" or len(text) == 1)):
        raise ProtocolError(f"invalid {what}: {text[:40]!r}")
    value = int(text)
    if value > MAX_TOKEN:
        raise ProtocolError(f"{what} out of range: {text[:40]}")
    return value


# Names already validated (bounded): the hot path then costs one set lookup.
_valid_streams: set[str] = set()
_valid_instances: set[str] = set()
_CACHE_MAX = 1024


def _stream(text: str) -> str:
    if text in _valid_streams:
        return text
    if not _STREAM_RE.fullmatch(text):
        raise ProtocolError(f"invalid stream name: {text[:40]!r}")
    if len(_valid_streams) < _CACHE_MAX:
        _valid_streams.add(text)
    return text


def _instance(text: str, what: str = "instance name") -> str:
    if text in _valid_instances:
        return text
    if not _INSTANCE_RE.fullmatch(text):
        raise ProtocolError(f"invalid {what}: {text[:40]!r}")
    if len(_valid_instances) < _CACHE_MAX:
        _valid_instances.add(text)
    return text


def _split_trailer(rest: str) -> tuple[str, dict[str, str] | None]:
    body, tab, trailer = rest.partition("\t")
    if not tab:
        return body, None
    carrier = decode_json(trailer)
    if not isinstance(carrier, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in carrier.items()
    ):
        raise ProtocolError("invalid trace trailer")
    return body, carrier


def with_trailer(line: str, trace: dict[str, str] | None) -> str:
    """``line`` plus the TAB trace trailer, unless that would exceed the line limit."""
    if trace:
        extended = f"{line}\t{encode_json(trace)}"
        if len(extended) <= MAX_LINE_BYTES:  # ASCII only, so chars == bytes
            return extended
    return line


@dataclass(frozen=True, slots=True)
class Command:
    """Base class; ``NAME`` is the wire name, ``to_line()`` the line without ``\\n``."""

    NAME: ClassVar[str] = ""

    def to_line(self) -> str:
        raise NotImplementedError


@dataclass(frozen=True, slots=True)
class ServerCommand(Command):
    NAME: ClassVar[str] = "SERVER"
    server_name: str

    def to_line(self) -> str:
        return f"SERVER {self.server_name}"


@dataclass(frozen=True, slots=True)
class AuthCommand(Command):
    NAME: ClassVar[str] = "AUTH"
    secret: str

    def to_line(self) -> str:
        return f"AUTH {self.secret}"

    def __repr__(self) -> str:  # never log the secret
        return "AuthCommand(secret=<redacted>)"


@dataclass(frozen=True, slots=True)
class NameCommand(Command):
    NAME: ClassVar[str] = "NAME"
    instance_name: str

    def to_line(self) -> str:
        return f"NAME {self.instance_name}"


@dataclass(frozen=True, slots=True)
class PingCommand(Command):
    NAME: ClassVar[str] = "PING"
    data: str

    def to_line(self) -> str:
        return f"PING {self.data}"


@dataclass(frozen=True, slots=True)
class ErrorCommand(Command):
    NAME: ClassVar[str] = "ERROR"
    message: str

    def to_line(self) -> str:
        return f"ERROR {self.message}"


@dataclass(frozen=True, slots=True)
class ReplicateCommand(Command):
    NAME: ClassVar[str] = "REPLICATE"

    def to_line(self) -> str:
        return "REPLICATE"


@dataclass(frozen=True, slots=True)
class PositionCommand(Command):
    """``POSITION stream instance prev new``: no rows in ``(prev, new]``."""

    NAME: ClassVar[str] = "POSITION"
    stream: str
    instance: str
    prev: int
    new: int
    trace: dict[str, str] | None = field(default=None, compare=False)

    def to_line(self) -> str:
        line = f"POSITION {self.stream} {self.instance} {self.prev} {self.new}"
        return with_trailer(line, self.trace)


@dataclass(frozen=True, slots=True)
class RdataCommand(Command):
    """One row; ``token is None`` means ``batch`` (more rows of this token follow)."""

    NAME: ClassVar[str] = "RDATA"
    stream: str
    instance: str
    token: int | None
    row: Any
    trace: dict[str, str] | None = field(default=None, compare=False)

    def to_line(self) -> str:
        token = "batch" if self.token is None else str(self.token)
        line = f"RDATA {self.stream} {self.instance} {token} {encode_json(self.row)}"
        return with_trailer(line, self.trace)


@dataclass(frozen=True, slots=True)
class RemoteServerUpCommand(Command):
    NAME: ClassVar[str] = "REMOTE_SERVER_UP"
    server_name: str

    def to_line(self) -> str:
        return f"REMOTE_SERVER_UP {self.server_name}"


@dataclass(frozen=True, slots=True)
class UserIpCommand(Command):
    NAME: ClassVar[str] = "USER_IP"
    user_id: str
    access_token: str
    ip: str
    user_agent: str
    device_id: str | None
    last_seen_ms: int

    def to_line(self) -> str:
        data = [self.access_token, self.ip, self.user_agent, self.device_id, self.last_seen_ms]
        return f"USER_IP {self.user_id} {encode_json(data)}"


# Commands each side may send over TCP (the bus does no direction check).
CLIENT_COMMANDS = frozenset({"AUTH", "NAME", "PING", "ERROR", "REPLICATE", "REMOTE_SERVER_UP", "USER_IP"})
SERVER_COMMANDS = frozenset({"SERVER", "PING", "ERROR", "POSITION", "RDATA", "REMOTE_SERVER_UP"})


def _no_args(name: str, rest: str) -> None:
    if rest.strip():
        raise ProtocolError(f"{name} takes no arguments (old form?)")


def _parse_position(rest: str) -> PositionCommand:
    body, trace = _split_trailer(rest)
    parts = body.split(" ")
    if len(parts) != 4:
        raise ProtocolError("POSITION needs <stream> <instance> <prev> <new>")
    prev = _token(parts[2], "prev token")
    new = _token(parts[3], "new token")
    if prev > new:
        raise ProtocolError(f"POSITION prev {prev} above new {new}")
    return PositionCommand(_stream(parts[0]), _instance(parts[1]), prev, new, trace)


def _parse_rdata(rest: str) -> RdataCommand:
    body, trace = _split_trailer(rest)
    parts = body.split(" ", 3)
    if len(parts) != 4:
        raise ProtocolError("RDATA needs <stream> <instance> <token|batch> <json>")
    token = None if parts[2] == "batch" else _token(parts[2])
    row = decode_json(parts[3])
    if not isinstance(row, list):
        raise ProtocolError("RDATA row must be a JSON list")
    return RdataCommand(_stream(parts[0]), _instance(parts[1]), token, row, trace)


def _parse_user_ip(rest: str) -> UserIpCommand:
    user_id, sp, data_text = rest.partition(" ")
    if not sp or not user_id:
        raise ProtocolError("USER_IP needs <user_id> <json>")
    data = decode_json(data_text)
    if (
        not isinstance(data, list)
        or len(data) != 5
        or not all(isinstance(x, str) for x in data[:3])
        or not (data[3] is None or isinstance(data[3], str))
        or not isinstance(data[4], int)
        or isinstance(data[4], bool)
    ):
        raise ProtocolError("USER_IP json must be [access_token, ip, user_agent, device_id, ts]")
    return UserIpCommand(user_id, data[0], data[1], data[2], data[3], data[4])


def parse_line(line: str) -> Command:
    """Parse one line (no ``\\n``; one trailing ``\\r`` already stripped)."""
    name, _, rest = line.partition(" ")
    if name == "RDATA":
        return _parse_rdata(rest)
    if not _NAME_RE.fullmatch(name):
        raise ProtocolError(f"malformed command name: {name[:40]!r}")
    if name == "RDATA":
        return _parse_rdata(rest)
    if name == "POSITION":
        return _parse_position(rest)
    if name == "PING":
        return PingCommand(rest)
    if name == "REPLICATE":
        _no_args(name, rest)
        return ReplicateCommand()
    if name == "ERROR":
        return ErrorCommand(rest)
    if name == "SERVER":
        return ServerCommand(_instance(rest, "server name"))
    if name == "NAME":
        return NameCommand(_instance(rest))
    if name == "AUTH":
        if not rest:
            raise ProtocolError("AUTH needs a secret")
        return AuthCommand(rest)
    if name == "REMOTE_SERVER_UP":
        return RemoteServerUpCommand(_instance(rest, "server name"))
    if name == "USER_IP":
        return _parse_user_ip(rest)
    raise ProtocolError(f"unknown command: {name}")
