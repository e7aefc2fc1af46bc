"""Checks of user input at the edges. Each failure names the field and says what was wrong."""

from __future__ import annotations

import math
import re
import reprlib
from decimal import Decimal, InvalidOperation
from typing import Any

from .errors import ValidationError

NAME_RE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
VERSION_RE = re.compile(r"^[A-Za-z0-9._:+-]{1,128}$")
MAX_JOB_ID = 128
MAX_STICKY_KEY = 1024
#: Characters of a rejected value an error message may quote: a 4 KB queue name or a
#: 5,000-digit number must not turn one error line into a screenful.
QUOTE_LIMIT = 80

_repr = reprlib.Repr()
_repr.maxstring = QUOTE_LIMIT
_repr.maxother = QUOTE_LIMIT
_repr.maxlong = 40
_repr.maxlevel = 3
for _name in ("maxlist", "maxtuple", "maxdict", "maxset", "maxfrozenset", "maxdeque"):
    setattr(_repr, _name, 4)


def quote(value: Any, limit: int = QUOTE_LIMIT) -> str:
    """A bounded, single-line repr of a rejected value, for error messages.

    Bounded in work as well as in length: reprlib never expands more than a few items of a
    container (a shared "billion laughs" structure costs nothing) and never converts a huge
    int to decimal in full (3.11 refuses above 4,300 digits anyway).
    """
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 200:
        return f"<an integer of about {int(value.bit_length() * 0.30103) + 1} digits>"
    try:
        text = repr(value[: limit + 2]) if isinstance(value, str) else _repr.repr(value)
    except Exception:  # a hostile __repr__ must not replace the error being reported
        text = f"<{type(value).__name__}>"
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _plain(value: Any) -> str:
    """Like quote, without the quotes around a string: "got 150" reads as the user typed it."""
    text = quote(value)
    return text[1:-1] if isinstance(value, str) and text[:1] in "'\"" else text


def queue_name(value: Any, field: str = "queue") -> str:
    if not isinstance(value, str) or not NAME_RE.match(value):
        raise ValidationError(
            "must be 1-128 characters of A-Za-z0-9._:- (no braces, spaces or @), got "
            + quote(value),
            field=field,
        )
    return value


def tenant(value: Any, field: str = "tenant") -> str | None:
    if value is None:
        return None
    return queue_name(value, field)


def version(value: Any, field: str = "version") -> str:
    if not isinstance(value, str) or not VERSION_RE.match(value):
        raise ValidationError(
            f"must be 1-128 characters of A-Za-z0-9._:+-, got {quote(value)}", field=field
        )
    return value


def _printable_text(value: Any, field: str, max_len: int) -> str:
    if not isinstance(value, str) or not 1 <= len(value) <= max_len:
        raise ValidationError(f"must be a string of 1-{max_len} characters, got {quote(value)}",
                              field=field)
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise ValidationError("must not contain control characters", field=field)
    if any(0xD800 <= ord(c) <= 0xDFFF for c in value):
        raise ValidationError("must be valid Unicode (no lone surrogates)", field=field)
    return value


def salt(value: Any, field: str = "salt") -> str:
    """A sticky-hash salt given by hand (to put the same keys first as an earlier deployment):
    printable, at most 256 characters, as a plan's `salt`; "" is no salt (the bare hash of
    the key, the same keys first in every deployment)."""
    return "" if value == "" else _printable_text(value, field, 256)


def job_id(value: Any, field: str = "job_id") -> str:
    return _printable_text(value, field, MAX_JOB_ID)


def sticky_key(value: Any, field: str = "sticky_key") -> str:
    return _printable_text(value, field, MAX_STICKY_KEY)


def percent_to_bp(value: Any, field: str = "weight") -> int:
    """Percent with up to two decimals ("10", "0.5", 12.25) -> basis points 0..10000.

    Floats are accepted only when they are exactly representable as two-decimal percents, so
    that 12.345 is refused rather than silently rounded.
    """
    if isinstance(value, bool):
        raise ValidationError(f"must be a percentage 0-100, got {quote(value)}", field=field)
    if isinstance(value, float) and not math.isfinite(value):
        raise ValidationError(f"must be a percentage 0-100, got {quote(value)}", field=field)
    if isinstance(value, int) and not 0 <= value <= 100:  # 10**5000: repr() would refuse it
        raise ValidationError(f"must be 0-100, got {quote(value)}", field=field)
    text = str(value).strip().removesuffix("%").strip() if isinstance(value, str) else repr(value)
    try:
        d = Decimal(text)
    except (InvalidOperation, ValueError):
        raise ValidationError(f"must be a percentage 0-100, got {quote(value)}",
                              field=field) from None
    if not d.is_finite():
        raise ValidationError(f"must be a percentage 0-100, got {quote(value)}", field=field)
    if d < 0 or d > 100:
        raise ValidationError(f"must be 0-100, got {_plain(value)}", field=field)
    bp = d * 100
    if bp != bp.to_integral_value():
        raise ValidationError(f"at most two decimals, got {_plain(value)}", field=field)
    return int(bp)


#: Longest webhook URL accepted (plans and PYCANARY_WEBHOOKS).
MAX_URL_LEN = 2048
#: Webhook kinds: the generic JSON body, or Slack's ``{"text": ...}``.
WEBHOOK_KINDS = ("json", "slack")


def webhook_url_problem(value: Any) -> str | None:
    """Why ``value`` is not a usable webhook URL (http or https, a host, no spaces), or None.
    The problem never quotes the URL itself: it may carry a token (Slack's URLs are secrets)."""
    from urllib.parse import urlsplit

    if not isinstance(value, str) or not value:
        return "must be an http:// or https:// URL"
    if len(value) > MAX_URL_LEN:
        return f"must be at most {MAX_URL_LEN} characters"
    if any(c.isspace() or not c.isprintable() for c in value):
        return "must not contain spaces or control characters"
    try:
        parts = urlsplit(value)
        _ = parts.port  # a port that is not a number raises here
    except ValueError:
        return "is not a valid URL"
    if parts.scheme not in ("http", "https"):
        return "must be an http:// or https:// URL"
    if not parts.hostname:
        return "must name a host"
    return None


def redact_url(url: str) -> str:
    """A webhook URL safe to log or store: scheme, host and port only (paths and queries of
    webhook URLs carry tokens, and so do credentials in them)."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        host = parts.hostname or "?"
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "<invalid url>"
    if ":" in host:
        host = f"[{host}]"
    return f"{parts.scheme}://{host}{port}/..."
