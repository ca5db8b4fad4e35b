"""The URLs among the settings: the database URL's driver, URL checks, and URLs masked for display."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

MASK = "********"


def normalise_database_url(raw: str) -> URL:
    """Parse a database URL and pin the driver Bourse uses for each backend."""
    try:
        url = make_url(raw)
    except (ArgumentError, ValueError):
        # Not chained: the parser's own messages (e.g. for a bad port) quote the URL.
        raise ValueError("is not a valid database URL") from None
    backend = url.get_backend_name()
    if backend == "sqlite":
        return url.set(drivername="sqlite+pysqlite")
    if backend == "postgresql":
        return url.set(drivername="postgresql+psycopg")
    raise ValueError("must be a sqlite:// or postgresql:// URL")


def mask_database_url(raw: str) -> str:
    """The database URL for display: its password, in userinfo or query, masked."""
    try:
        url = make_url(raw)
    except (ArgumentError, ValueError):
        return MASK
    if "password" in url.query:
        url = url.update_query_dict({"password": MASK})
    return url.render_as_string(hide_password=True)


def mask_redis_url(raw: str) -> str:
    """The Redis URL for display: its password, in userinfo or query, masked."""
    try:
        parts = urlsplit(raw)
    except ValueError:
        return MASK
    userinfo, at, hostinfo = parts.netloc.rpartition("@")
    netloc = f"{userinfo.split(':', 1)[0]}:{MASK}@{hostinfo}" if at and ":" in userinfo else parts.netloc
    query = re.sub(r"(^|&)(password=)[^&]*", rf"\1\2{MASK}", parts.query, flags=re.IGNORECASE)
    # Rebuilt by hand: urlunsplit() would turn "unix:///path" into "unix:/path".
    return (
        f"{parts.scheme}://{netloc}{parts.path}"
        + (f"?{query}" if query else "")
        + (f"#{parts.fragment}" if parts.fragment else "")
    )


def check_api_base(value: str) -> str:
    """An absolute http(s) base URL with a host: no credentials, query or fragment."""
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - parsed only to refuse a bad port
    except ValueError:
        raise ValueError("must be an http:// or https:// URL") from None
    if parts.scheme not in {"http", "https"} or not parts.hostname or re.search(r"\s", value):
        raise ValueError("must be an http:// or https:// URL with a host")
    if "@" in parts.netloc:
        raise ValueError("must not carry credentials (the API key is a setting of its own)")
    if parts.query or parts.fragment or value.endswith(("?", "#")):
        raise ValueError("must not have a query or a fragment")
    return value.rstrip("/")
