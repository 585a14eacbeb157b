"""Redaction of secrets in request URIs (spec §9 "Redaction")."""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["DEFAULT_REDACT", "REDACTED", "redact_uri"]

DEFAULT_REDACT: tuple[str, ...] = ("access_token", "client_secret")
"""Query parameters redacted by default."""

REDACTED = "<redacted>"

_HEX = frozenset("0123456789abcdefABCDEF")


class _Unparsable(ValueError):
    """A query component with a malformed percent-escape or invalid UTF-8."""


def _decode_name(raw: str) -> str:
    """Strictly percent-decode a parameter name (``+`` means a space, as in forms)."""
    if "%" not in raw and "+" not in raw:
        return raw
    out = bytearray()
    i = 0
    n = len(raw)
    while i < n:
        ch = raw[i]
        if ch == "%":
            if i + 2 >= n:
                raise _Unparsable(raw)
            hi, lo = raw[i + 1], raw[i + 2]
            if hi not in _HEX or lo not in _HEX:
                raise _Unparsable(raw)
            out.append(int(hi + lo, 16))
            i += 3
            continue
        if ch == "+":
            out.append(0x20)
        else:
            out.extend(ch.encode("utf-8"))
        i += 1
    try:
        return out.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _Unparsable(raw) from e


def _lenient_lower(text: str) -> str:
    """Best-effort decoding used only to look for listed names in an unparsable query."""
    from urllib.parse import unquote_plus

    return unquote_plus(text, errors="replace").lower()


def _normalise_params(params: Iterable[str]) -> frozenset[str]:
    if isinstance(params, str):
        raise TypeError("redact_uri: params must be an iterable of names, not a single str")
    names = []
    for p in params:
        if not isinstance(p, str) or not p:
            raise TypeError(f"redact_uri: parameter names must be non-empty str, got {p!r}")
        names.append(p.lower())
    return frozenset(names)


_DEFAULT_SET = frozenset(DEFAULT_REDACT)
_CACHE: dict[tuple[str, ...], frozenset[str]] = {DEFAULT_REDACT: _DEFAULT_SET}


def redact_uri(uri: str, params: Iterable[str] = DEFAULT_REDACT) -> str:
    """Return ``uri`` with the value of every listed query parameter replaced by ``<redacted>``.

    Names compare case-insensitively after percent-decoding (``access%5Ftoken`` matches
    ``access_token``); the path, the fragment and every other parameter are kept byte for
    byte. A query that cannot be parsed (malformed ``%`` escape, invalid UTF-8 in a name)
    and that mentions a listed name is replaced whole by ``<redacted>``.
    """
    if not isinstance(uri, str):
        raise TypeError(f"redact_uri: uri must be str, got {type(uri).__name__}")
    if type(params) is tuple:
        names = _CACHE.get(params)
        if names is None:
            names = _normalise_params(params)
            if len(_CACHE) < 64:
                _CACHE[params] = names
    else:
        names = _normalise_params(params)
    q = uri.find("?")
    if q < 0 or not names:
        return uri
    h = uri.find("#", q + 1)
    if h < 0:
        head, query, tail = uri[: q + 1], uri[q + 1 :], ""
    else:
        head, query, tail = uri[: q + 1], uri[q + 1 : h], uri[h:]
    if not query:
        return uri
    # Fast path: nothing encoded and no listed name anywhere in the query.
    lowered = query.lower()
    if "%" not in query and "+" not in query and not any(n in lowered for n in names):
        return uri
    parts = query.split("&")
    changed = False
    try:
        for i, part in enumerate(parts):
            eq = part.find("=")
            raw_name = part if eq < 0 else part[:eq]
            if eq < 0:
                # A bare flag has no value to hide, but it must still parse.
                _decode_name(raw_name)
                continue
            if _decode_name(raw_name).lower() in names:
                parts[i] = raw_name + "=" + REDACTED
                changed = True
    except _Unparsable:
        decoded = _lenient_lower(query)
        if any(n in decoded or n in lowered for n in names):
            return head + REDACTED + tail
        return uri
    if not changed:
        return uri
    return head + "&".join(parts) + tail
