"""Checks of user input at the edges. Each failure names the field and says what was wrong."""

from __future__ import annotations

import math
import re
from decimal import Decimal, InvalidOperation
from typing import Any

from .errors import ValidationError

NAME_RE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
VERSION_RE = re.compile(r"^[A-Za-z0-9._:+-]{1,128}$")
MAX_JOB_ID = 128
MAX_STICKY_KEY = 1024


def queue_name(value: Any, field: str = "queue") -> str:
    if not isinstance(value, str) or not NAME_RE.match(value):
        raise ValidationError(
            f"must be 1-128 characters of A-Za-z0-9._:- (no braces, spaces or @), got {value!r}",
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
            f"must be 1-128 characters of A-Za-z0-9._:+-, got {value!r}", field=field
        )
    return value


def _printable_text(value: Any, field: str, max_len: int) -> str:
    if not isinstance(value, str) or not 1 <= len(value) <= max_len:
        raise ValidationError(f"must be a string of 1-{max_len} characters, got {value!r}",
                              field=field)
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise ValidationError("must not contain control characters", field=field)
    return value


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
        raise ValidationError(f"must be a percentage 0-100, got {value!r}", field=field)
    if isinstance(value, float) and not math.isfinite(value):
        raise ValidationError(f"must be a percentage 0-100, got {value!r}", field=field)
    text = str(value).strip().removesuffix("%").strip() if isinstance(value, str) else repr(value)
    try:
        d = Decimal(text)
    except (InvalidOperation, ValueError):
        raise ValidationError(f"must be a percentage 0-100, got {value!r}", field=field) from None
    if not d.is_finite():
        raise ValidationError(f"must be a percentage 0-100, got {value!r}", field=field)
    if d < 0 or d > 100:
        raise ValidationError(f"must be 0-100, got {value}", field=field)
    bp = d * 100
    if bp != bp.to_integral_value():
        raise ValidationError(f"at most two decimals, got {value}", field=field)
    return int(bp)


def bp_to_percent(bp: int) -> float:
    return bp / 100
