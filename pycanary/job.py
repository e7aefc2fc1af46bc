"""Jobs on the wire (`Envelope`) and as a handler sees them (`Job`)."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from typing import Any

#: Envelope format version (how the envelope itself is laid out).
ENVELOPE_FORMAT = 1

# One encoder, made once: json.dumps with options builds a new encoder on every call.
encode_json = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode


def _unserialisable(o: Any) -> Any:
    raise TypeError(f"Object of type {o.__class__.__name__} is not JSON serializable")


def _fast_json_encoder() -> Any:
    """encode_json without JSONEncoder.encode's per-call set-up (it builds a C encoder on every
    call): the same text, half the time (the producer's per-job cost, issue 15). No circular
    check: a circular payload recurses until RecursionError, which the producer reports as too
    deeply nested, which it is. Falls back to encode_json where the C encoder is missing."""
    from json.encoder import c_make_encoder, encode_basestring  # type: ignore[attr-defined]

    if c_make_encoder is None:  # pragma: no cover - CPython always has it
        return encode_json
    enc = c_make_encoder(None, _unserialisable, encode_basestring, None, ":", ",", False,
                         False, False)
    join = "".join

    def encode(o: Any) -> str:
        return join(enc(o, 0))

    return encode


#: Payload JSON for producers: same text as encode_json (compact, UTF-8, no NaN).
encode_payload = _fast_json_encoder()


def _json_name(name: str | None) -> str:
    """JSON of a validated queue or tenant name: their alphabet needs no escaping."""
    return "null" if name is None else f'"{name}"'


def render_envelope(
    id_json: str, queue: str, payload_json: str, sticky_json: str, tenant: str | None,
    attempts: int, enqueued_at: int, schema: int, ready_at: int | None = None,
) -> str:
    """The envelope's JSON text, from parts already encoded. `Envelope.decode` parses it back.

    Built as one f-string because encoding a dict per job costs more than the round trip
    budget allows; only the payload (and a user's id or sticky key) needs a JSON encoder.
    """
    ready = "" if ready_at is None else f',"ready_at":{ready_at}'
    return (
        f'{{"id":{id_json},"queue":"{queue}","payload":{payload_json},'
        f'"sticky_key":{sticky_json},"tenant":{_json_name(tenant)},"attempts":{attempts},'
        f'"enqueued_at":{enqueued_at},"schema":{schema},"v":{ENVELOPE_FORMAT}{ready}}}'
    )


@dataclass(frozen=True)
class Envelope:
    """The job as pushed onto a lane. ``attempts`` counts attempts already made; ``ready_at``
    is when a retry became due (queue wait of a retry is measured from it)."""

    id: str
    queue: str
    payload: Any
    tenant: str | None
    sticky_key: str | None
    attempts: int
    enqueued_at: int
    schema: int = 1
    format: int = ENVELOPE_FORMAT
    ready_at: int | None = None

    def encode(self) -> str:
        return render_envelope(
            encode_json(self.id), self.queue, encode_json(self.payload),
            encode_json(self.sticky_key), self.tenant, self.attempts, self.enqueued_at,
            self.schema, self.ready_at,
        )

    def next_attempt(self, ready_at: int) -> Envelope:
        return replace(self, attempts=self.attempts + 1, ready_at=ready_at)

    @property
    def waiting_since(self) -> int:
        return self.ready_at if self.ready_at is not None else self.enqueued_at

    @classmethod
    def decode(cls, raw: str | bytes) -> Envelope:
        """Parse an envelope, refusing anything a worker could not carry through a retry or a
        dead letter: every refusal is a `ValueError` naming the reason, so the worker can
        dead-letter the envelope and keep serving (a poison job must never end a worker).

        Refused: bytes that are not UTF-8, text that is not JSON or not an object, nesting
        deeper than `MAX_NESTING` (json and dataclasses.asdict recurse), non-finite numbers
        (``1e999``, ``NaN``: they cannot be encoded again), lone surrogates (``"\\ud800"``:
        not encodable as UTF-8) and fields of the wrong type.
        """
        if isinstance(raw, bytes | bytearray):
            raw = bytes(raw).decode("utf-8")  # UnicodeDecodeError is a ValueError
        if not isinstance(raw, str):
            raise ValueError(f"envelope must be text, got {type(raw).__name__}")
        check_nesting(raw)
        try:
            d = json.loads(raw, parse_float=_finite_float, parse_constant=_no_constant)
        except RecursionError:
            raise ValueError(f"nesting deeper than {MAX_NESTING} levels") from None
        if not isinstance(d, dict):
            raise ValueError(f"envelope must be a JSON object, got {type(d).__name__}")
        if "\\u" in raw:  # escapes may decode to lone surrogates, which no client can send
            try:
                encode_json(d).encode("utf-8")
            except UnicodeEncodeError:
                raise ValueError("a string holds a lone surrogate (\\ud800-\\udfff)") from None
        ready_at = d.get("ready_at")
        return cls(
            id=_field(d, "id", str),
            queue=_field(d, "queue", str),
            payload=d.get("payload"),
            tenant=_optional(d, "tenant", str),
            sticky_key=_optional(d, "sticky_key", str),
            attempts=_int_field(d, "attempts", 0, 0, MAX_ATTEMPTS_FIELD),
            enqueued_at=_int_field(d, "enqueued_at", None, 0, MAX_MS),
            schema=_int_field(d, "schema", 1, 0, MAX_MS),
            format=_int_field(d, "v", ENVELOPE_FORMAT, 0, MAX_MS),
            ready_at=None if ready_at is None else _int_field(d, "ready_at", None, 0, MAX_MS),
        )


#: Deepest payload nesting a worker accepts (arrays and objects); deeper ones are dead-lettered.
MAX_NESTING = 128
MAX_MS = 2**53
MAX_ATTEMPTS_FIELD = 2**31


def _finite_float(s: str) -> float:
    f = float(s)
    if f != f or f in (float("inf"), float("-inf")):
        raise ValueError(f"non-finite number {s[:40]!r}")
    return f


def _no_constant(s: str) -> Any:
    raise ValueError(f"non-finite number {s!r}")


def check_nesting(raw: str, limit: int = MAX_NESTING) -> None:
    """Depth of [ and { outside strings, walked only when the bracket count could exceed the
    limit (almost never), so the common path costs two C-level counts. Producers check a
    payload against ``MAX_NESTING - 1`` (the envelope adds a level), so they never enqueue a
    job that every worker would dead-letter."""
    if raw.count("[") + raw.count("{") <= limit:
        return
    depth = 0
    in_str = esc = False
    for ch in raw:
        if in_str:
            if esc:
                esc = False
            elif ch == "\\":
                esc = True
            elif ch == '"':
                in_str = False
        elif ch == '"':
            in_str = True
        elif ch in "[{":
            depth += 1
            if depth > limit:
                raise ValueError(f"nesting deeper than {limit} levels")
        elif ch in "]}":
            depth -= 1


def _field(d: dict[str, Any], name: str, typ: type) -> Any:
    if name not in d:
        raise ValueError(f"missing field {name!r}")
    v = d[name]
    if not isinstance(v, typ) or isinstance(v, bool):
        raise ValueError(f"field {name!r} must be {typ.__name__}, got {type(v).__name__}")
    return v


def _optional(d: dict[str, Any], name: str, typ: type) -> Any:
    return None if d.get(name) is None else _field(d, name, typ)


def _int_field(d: dict[str, Any], name: str, default: int | None, lo: int, hi: int) -> int:
    if name not in d and default is not None:
        return default
    v = _field(d, name, int)
    if not lo <= v <= hi:
        raise ValueError(f"field {name!r} out of range {lo}..{hi}: {v}")
    return v


@dataclass(frozen=True)
class Job:
    """What a handler receives. ``attempt`` starts at 1."""

    id: str
    queue: str
    payload: Any
    tenant: str | None
    attempt: int
    lane: str
    version: str
    enqueued_at: int
    sticky_key: str | None = None
    schema: int = 1
