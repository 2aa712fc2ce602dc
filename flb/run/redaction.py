"""Secrets in URLs (`https://user:password@host`, `?apikey=...`) never reach a terminal, a log or a file."""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

REDACTED = "***"
_SECRET_QUERY_KEYS = re.compile(r"key|token|secret|pass|auth|sig", re.IGNORECASE)
_URL_IN_TEXT = re.compile(r"[a-zA-Z][a-zA-Z0-9+.-]*://[^\s'\"<>]+")


def redact_url(url: str) -> str:
    """`url` with its user info and any secret-looking query values replaced by ***."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return REDACTED
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    secret_query = any(_SECRET_QUERY_KEYS.search(k) for k, _ in pairs)
    if "@" not in parts.netloc and not secret_query:  # as given: urlunsplit would drop the // of sqlite:////a/b
        return url
    netloc = parts.netloc
    if "@" in netloc:
        netloc = f"{REDACTED}@{netloc.rpartition('@')[2]}"
    query = parts.query
    if secret_query:  # otherwise the query stays byte for byte as given
        query = urlencode([(k, REDACTED if _SECRET_QUERY_KEYS.search(k) else v) for k, v in pairs], safe="*")
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def redact_text(text: str) -> str:
    """Every URL inside `text` redacted (for log lines and error messages)."""
    return _URL_IN_TEXT.sub(lambda match: redact_url(match.group(0)), text)


def redact_config(config: dict) -> dict:
    """A copy of a resolved config dict whose URL-valued strings are redacted (what config.json holds)."""

    def clean(value):
        if isinstance(value, dict):
            return {key: clean(item) for key, item in value.items()}
        if isinstance(value, list):
            return [clean(item) for item in value]
        if isinstance(value, str) and "://" in value:
            return redact_url(value)
        return value

    return clean(config)


class RedactingFilter:
    """A logging filter that redacts URLs in every record before a handler writes it."""

    def filter(self, record) -> bool:
        message = record.getMessage()
        redacted = redact_text(message)
        if redacted != message:
            record.msg, record.args = redacted, ()
        return True
