"""``redact_uri`` (spec §9 "Redaction")."""

from __future__ import annotations

import pytest

from logcontext import redact_uri


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("/p?access_token=a&x=1", "/p?access_token=<redacted>&x=1"),
        (
            "/p?access_token=a&access_token=b",
            "/p?access_token=<redacted>&access_token=<redacted>",
        ),
        ("/p?access%5Ftoken=a", "/p?access%5Ftoken=<redacted>"),
        ("/p?ACCESS_TOKEN=a", "/p?ACCESS_TOKEN=<redacted>"),
        ("/p?client_secret=s&sid=1", "/p?client_secret=<redacted>&sid=1"),
        ("/p%20q?x=%41&access_token=a#frag", "/p%20q?x=%41&access_token=<redacted>#frag"),
        ("/p?%ZZ&access_token=a", "/p?<redacted>"),
        ("/p?access%ZZtoken=a&client_secret=b#f", "/p?<redacted>#f"),
        ("/p?%ZZ=1", "/p?%ZZ=1"),
        ("/p?access_token", "/p?access_token"),
        ("/p?access_token=", "/p?access_token=<redacted>"),
        ("/p", "/p"),
        ("/p?", "/p?"),
        ("/access_token=a", "/access_token=a"),
    ],
)
def test_redact_uri_cases(uri: str, expected: str) -> None:
    """Listed names are redacted wherever and however encoded; everything else is byte-identical."""
    assert redact_uri(uri) == expected


def test_custom_params_and_bad_input() -> None:
    """Custom names are honoured; bad arguments raise clear errors."""
    assert redact_uri("/p?Sig=1&access_token=2", ("sig",)) == "/p?Sig=<redacted>&access_token=2"
    assert redact_uri("/p?sig=1", ["sig"]) == "/p?sig=<redacted>"
    with pytest.raises(TypeError, match="uri"):
        redact_uri(b"/p?x=1")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="params"):
        redact_uri("/p", "access_token")
    with pytest.raises(TypeError, match="non-empty"):
        redact_uri("/p", ("",))
