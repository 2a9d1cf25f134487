"""PostgreSQL connection strings as operators write them, and as the project prints them.

`DATABASE_URL=postgresql://user:password@host:5432/db?sslmode=require` follows libpq: every
parameter passes through to the driver untouched. Whatever the project prints (logs, `status`,
errors, reprs) goes through `redact`, so a password never reaches a terminal or a log file.
"""

from __future__ import annotations

import re
from urllib.parse import SplitResult, unquote, urlsplit, urlunsplit

SCHEMES = ("postgresql", "postgres")
HIDDEN = "***"
# libpq parameters that hold a secret, in a URL's query or a key=value connection string.
_SECRET_KEYS = r"(?:ssl)?password"  # noqa: S105 - the names of the parameters, not a secret
_QUERY_SECRET = re.compile(rf"(^|&)({_SECRET_KEYS})=[^&]*")
_KEYWORD_SECRET = re.compile(rf"(\b{_SECRET_KEYS}\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)")


def is_postgres_url(value: str | None) -> bool:
    """True for postgresql://... and postgres://... (libpq's two URL schemes)."""
    if value is None:
        return False
    scheme, sep, _ = value.partition("://")
    return bool(sep) and scheme.lower() in SCHEMES


def redact(conninfo: str) -> str:
    """The connection string with every password replaced by ***; the rest as written."""
    if "://" not in conninfo:  # key=value form: host=db password=secret
        return _KEYWORD_SECRET.sub(rf"\1{HIDDEN}", conninfo)
    try:
        parts = urlsplit(conninfo)
    except ValueError:  # malformed beyond parsing: show nothing that could be the secret
        return conninfo.split("://", 1)[0] + "://" + HIDDEN
    return urlunsplit(_redacted_parts(parts))


def _redacted_parts(parts: SplitResult) -> SplitResult:
    netloc = parts.netloc
    # rpartition: a password holding a raw '@' still ends at the last one, before the host.
    userinfo, at, hosts = netloc.rpartition("@")
    if at and ":" in userinfo:
        netloc = f"{userinfo.split(':', 1)[0]}:{HIDDEN}@{hosts}"
    query = _QUERY_SECRET.sub(rf"\1\2={HIDDEN}", parts.query)
    return parts._replace(netloc=netloc, query=query)


def secrets_in(conninfo: str) -> list[str]:
    """The literal secrets in a connection string, to scrub from a driver's message."""
    found: list[str] = []
    if "://" in conninfo:
        try:
            parts = urlsplit(conninfo)
        except ValueError:
            return [conninfo]
        userinfo, at, _ = parts.netloc.rpartition("@")
        if at and ":" in userinfo:
            found.append(userinfo.split(":", 1)[1])
        found += [m.group(0).split("=", 1)[1] for m in _QUERY_SECRET.finditer(parts.query)]
    else:
        found += [m.group(2).strip("'") for m in _KEYWORD_SECRET.finditer(conninfo)]
    # The driver sees a percent-encoded secret decoded: scrub both spellings.
    return [form for s in found if s for form in {s, unquote(s)}]


def scrub(text: str, conninfo: str) -> str:
    """`text` (a driver's error, say) with the connection string's secrets replaced by ***."""
    for secret in sorted(secrets_in(conninfo), key=len, reverse=True):
        text = text.replace(secret, HIDDEN)
    return text
