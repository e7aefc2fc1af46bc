"""Bearer tokens with two roles: viewers read, operators may also change things.

Tokens come from settings (``PYCANARY_API_TOKENS="viewer:<token>,operator:<token>"``). Every
presented token is compared with every configured one in constant time (hmac.compare_digest),
so neither a match nor its position leaks through timing; tokens never appear in logs or errors.
"""

from __future__ import annotations

import enum
import hmac
from dataclasses import dataclass

from ..errors import ValidationError

#: Shortest token accepted: a guessable token is no auth at all.
MIN_TOKEN_LENGTH = 16


class Role(enum.IntEnum):
    """Ordered: a role may do everything the roles below it may."""

    VIEWER = 1
    OPERATOR = 2


@dataclass(frozen=True)
class Principal:
    role: Role
    #: Which token (its position in the settings, "operator#1"), for audit fields: never the
    #: token itself.
    name: str


class TokenStore:
    """The configured tokens; `identify` maps a presented token to its principal or None."""

    def __init__(self, tokens: list[tuple[Role, bytes]]) -> None:
        self._tokens = tokens

    def __bool__(self) -> bool:
        return bool(self._tokens)

    def redact(self, text: str) -> str:
        """``text`` with every configured token replaced: an error message or a log line
        quoting what a caller sent (a token pasted as a queue name) never shows one."""
        for _, token in self._tokens:
            t = token.decode("utf-8", "surrogateescape")
            if t in text:
                text = text.replace(t, "<redacted>")
        return text

    def identify(self, presented: str) -> Principal | None:
        given = presented.encode("utf-8", "surrogateescape")
        found: Principal | None = None
        counts: dict[Role, int] = {}
        for role, token in self._tokens:
            counts[role] = counts.get(role, 0) + 1
            # no early exit: every configured token is compared, whatever matches
            if hmac.compare_digest(given, token) and found is None:
                found = Principal(role, f"{role.name.lower()}#{counts[role]}")
        return found


def parse_tokens(text: str | None) -> TokenStore:
    """Parse ``role:token,role:token``; errors name the field and the entry's position, never
    the token."""
    tokens: list[tuple[Role, bytes]] = []
    for i, item in enumerate(p.strip() for p in (text or "").split(",")):
        if not item:
            continue
        role_text, sep, token = item.partition(":")
        role = {"viewer": Role.VIEWER, "operator": Role.OPERATOR}.get(role_text.strip().lower())
        if not sep or role is None:
            raise ValidationError(
                f"entry {i + 1} must be viewer:<token> or operator:<token>",
                field="PYCANARY_API_TOKENS")
        token = token.strip()
        if len(token) < MIN_TOKEN_LENGTH:
            raise ValidationError(
                f"entry {i + 1}: a token must be at least {MIN_TOKEN_LENGTH} characters",
                field="PYCANARY_API_TOKENS")
        tokens.append((role, token.encode("utf-8", "surrogateescape")))
    return TokenStore(tokens)
