"""Notifications: deliver the queues' outboxes to webhooks, at least once; webhook gates.

The deployment scripts append every notable event (``defaults.NOTIFY_EVENT_TYPES``) to the
queue's outbox stream in the same call as the change itself, so a notification exists if
and only if the change happened (docs/notifications.md). This module reads the outboxes and
POSTs each notification to every webhook that applies: those of ``PYCANARY_WEBHOOKS`` and
those of the deployment's plan (``notifications.webhooks``).

Why a consumer group: an entry stays pending until the sender acknowledges it, and it is
acknowledged only once every webhook has answered 2xx or been given up on. A sender that dies
holding entries leaves them pending; any sender claims them (XAUTOCLAIM) once they have been
idle for ``claim_idle_s``, so they are delivered after a restart: at least once (a receiver
may see a notification twice; the body's ``id`` is the same both times). Failed attempts are
retried with exponential backoff up to ``max_attempts``; then a ``notify_failed`` record goes
to the dead outbox (``notify_settle.lua``, in the same step as the acknowledgement) instead of
retrying forever.

The sender runs in its own thread (``pycanary controller`` starts one) or as ``pycanary
notify``; it never runs in the controller's tick. Webhook calls use the standard library only
(http.client), follow no redirects, ignore proxy variables, and no URL is ever logged or
stored with its path, query or credentials (webhook URLs carry tokens).

``GateCalls`` runs the webhook gates' calls (a plan stage's ``gate.webhook``) in background
threads for the controller, which only looks at their outcome: a hanging URL never holds up
a tick.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import redis

from . import defaults
from .connection import Connection
from .errors import ValidationError
from .validation import WEBHOOK_KINDS, redact_url, webhook_url_problem

log = logging.getLogger("pycanary.notify")

#: Most bytes of a webhook's answer that are read (and thrown away).
MAX_ANSWER_BYTES = 64 * 1024
#: The settings variable the webhooks come from (named in its errors).
WEBHOOKS_ENV = "PYCANARY_WEBHOOKS"


# -- webhooks -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Target:
    """One webhook: where, which body (``json`` or ``slack``), and where it was configured."""

    kind: str
    url: str
    source: str = "settings"  # "settings" | "plan"

    @property
    def shown(self) -> str:
        """The URL as logs and records show it (scheme, host and port only)."""
        return redact_url(self.url)

    @property
    def key(self) -> str:
        return f"{self.kind}:{self.url}"


def parse_webhooks(text: str | None, *, field: str = WEBHOOKS_ENV) -> list[Target]:
    """``json:http://127.0.0.1:9000/hook,slack:https://hooks.slack.com/...`` -> targets. A bare
    URL is a json webhook. Commas separate entries (percent-encode a comma inside a URL).
    Errors name the field and the entry, never the URL's secret parts."""
    out: list[Target] = []
    for n, raw in enumerate((text or "").split(","), start=1):
        entry = raw.strip()
        if not entry:
            continue
        if entry.startswith(("http://", "https://")):
            kind, url = "json", entry
        else:
            kind, sep, url = entry.partition(":")
            if not sep or kind not in WEBHOOK_KINDS:
                raise ValidationError(
                    f"entry {n}: must be KIND:URL with KIND one of {', '.join(WEBHOOK_KINDS)}, "
                    f"got kind {kind[:20]!r}", field=field)
        problem = webhook_url_problem(url)
        if problem is not None:
            raise ValidationError(f"entry {n}: URL {problem}, got {redact_url(url)}",
                                  field=field)
        out.append(Target(kind, url, "settings"))
    return out


def plan_targets(raw: str | None) -> list[Target]:
    """The plan's webhooks as the outbox entry carries them (JSON list of {url, kind}); an
    entry that does not decode contributes none (the settings' webhooks still apply)."""
    if not raw:
        return []
    try:
        items = json.loads(raw)
    except ValueError:
        log.warning("an outbox entry's plan webhooks do not decode; using the settings' only")
        return []
    out = []
    for it in items if isinstance(items, list) else []:
        if isinstance(it, dict) and webhook_url_problem(it.get("url")) is None and \
                it.get("kind", "json") in WEBHOOK_KINDS:
            out.append(Target(str(it.get("kind", "json")), str(it["url"]), "plan"))
    return out


def plan_webhooks_json(plan: Any) -> str:
    """What deployments.start stores in the deployment hash's ``webhooks`` field (copied by
    the scripts into each outbox entry): the plan's webhooks, or '' for none."""
    hooks = [{"url": w.url, "kind": w.kind} for w in plan.notifications.webhooks]
    return json.dumps(hooks, separators=(",", ":")) if hooks else ""


# -- notifications ------------------------------------------------------------------------------
def iso_ms(ms: int) -> str:
    """Milliseconds since the epoch as ISO 8601 UTC: 2026-12-03T13:40:49.123Z."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms / 1000)) + f".{ms % 1000:03d}Z"


@dataclass
class Notification:
    """One outbox entry, decoded."""

    queue: str
    entry_id: str
    type: str
    deployment: str
    version: str
    stable_version: str
    stage: int  # 0-based, as stored; bodies count from 1
    weight_bp: int
    state: str
    event: dict[str, Any]
    webhooks: list[Target] = field(default_factory=list)

    @classmethod
    def from_entry(cls, queue: str, entry_id: str, f: dict[str, str]) -> Notification:
        try:
            event = json.loads(f.get("e") or "{}")
        except ValueError:
            event = {}
        if not isinstance(event, dict):
            event = {}

        def num(name: str) -> int:
            try:
                return int(f.get(name) or 0)
            except ValueError:
                return 0

        return cls(queue=queue, entry_id=entry_id, type=f.get("type", "") or "",
                   deployment=f.get("deployment", ""), version=f.get("version", ""),
                   stable_version=f.get("stable_version", ""), stage=num("stage"),
                   weight_bp=num("weight_bp"), state=f.get("state", ""), event=event,
                   webhooks=plan_targets(f.get("webhooks")))

    @property
    def at_ms(self) -> int:
        ts = self.event.get("ts")
        if isinstance(ts, int | float):
            return int(ts)
        try:
            return int(self.entry_id.split("-", 1)[0])
        except ValueError:
            return 0

    @property
    def reason(self) -> str:
        return str(self.event.get("message", ""))

    def body(self) -> dict[str, Any]:
        """The generic JSON body. ``stage`` counts from 1 (as people read it), ``weight`` is
        the canary percentage after the change, ``id`` is stable across redeliveries."""
        return {"id": f"{self.queue}/{self.entry_id}", "queue": self.queue,
                "deployment": self.deployment, "version": self.version,
                "stable_version": self.stable_version, "type": self.type,
                "reason": self.reason, "stage": self.stage + 1, "weight": self.weight_bp / 100,
                "state": self.state, "actor": str(self.event.get("actor", "")),
                "at": iso_ms(self.at_ms)}

    def slack(self) -> dict[str, Any]:
        """A Slack-compatible body (incoming webhooks read ``text``)."""
        what = self.type.replace("_", " ")
        return {"text": f"[pycanary] {self.queue}: {self.version} {what}: {self.reason} "
                        f"(stage {self.stage + 1}, canary {self.weight_bp / 100:g}%, "
                        f"deployment {self.deployment})"}

    def payload(self, kind: str) -> bytes:
        body = self.slack() if kind == "slack" else self.body()
        return json.dumps(body, separators=(",", ":"), default=str).encode()


# -- HTTP ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Answer:
    """What a webhook call came to: ``status`` (None if no HTTP answer) and ``error``."""

    status: int | None
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    @property
    def text(self) -> str:
        return f"HTTP {self.status}" if self.status is not None else self.error


PostFn = Callable[[str, bytes, float], Answer]


def post(url: str, body: bytes, timeout_s: float) -> Answer:
    """POST ``body`` (JSON) to ``url``; no redirects followed (a 3xx is not a delivery), no
    proxies. ``timeout_s`` bounds the connection and each read. Errors never carry the URL."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    try:
        if parts.scheme == "https":
            conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                host, parts.port, timeout=timeout_s, context=ssl.create_default_context())
        else:
            conn = http.client.HTTPConnection(host, parts.port, timeout=timeout_s)
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        headers = {"Content-Type": "application/json", "User-Agent": "pycanary-notify",
                   "Content-Length": str(len(body))}
        if parts.username or parts.password:
            import base64

            cred = f"{parts.username or ''}:{parts.password or ''}".encode()
            headers["Authorization"] = "Basic " + base64.b64encode(cred).decode()
        try:
            conn.request("POST", path, body=body, headers=headers)
            resp = conn.getresponse()
            resp.read(MAX_ANSWER_BYTES)
            return Answer(resp.status)
        finally:
            conn.close()
    except TimeoutError:
        return Answer(None, f"timed out after {timeout_s:g}s")
    except ConnectionRefusedError:
        return Answer(None, "connection refused")
    except OSError as exc:  # strerror names the problem, never the URL
        return Answer(None, f"{type(exc).__name__}: {exc.strerror}" if exc.strerror
                      else type(exc).__name__)
    except (http.client.HTTPException, ValueError) as exc:
        return Answer(None, type(exc).__name__)


# -- the sender ---------------------------------------------------------------------------------
@dataclass
class _Attempts:
    target: Target
    attempts: int = 0
    next_at: float = 0.0
    last: str = ""
    done: bool = False
    failed: bool = False


@dataclass
class _Delivery:
    note: Notification
    targets: list[_Attempts]

    def finished(self) -> bool:
        return all(t.done for t in self.targets)


@dataclass
class SendReport:
    """One pass (or ``--once``): what was read, delivered, given up on, still pending."""

    read: int = 0
    claimed: int = 0
    delivered: int = 0
    failed: int = 0
    acknowledged: int = 0
    pending: int = 0
    forgotten: int = 0  # consumers of gone senders deleted from the groups
    errors: list[str] = field(default_factory=list)

    def add(self, other: SendReport) -> None:
        for name in ("read", "claimed", "delivered", "failed", "acknowledged", "forgotten"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.pending = other.pending
        self.errors += other.errors

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class Sender:
    """Delivers every queue's outbox to its webhooks; see the module docstring.

    ``clock`` (monotonic seconds) drives the backoff; ``post`` is the HTTP call (tests may
    pass another). Thread-safe to stop; one instance per thread."""

    def __init__(
        self,
        conn: Connection,
        *,
        webhooks: Iterable[Target] = (),
        timeout_s: float = defaults.NOTIFY_TIMEOUT_S,
        max_attempts: int = defaults.NOTIFY_MAX_ATTEMPTS,
        backoff_s: float = defaults.NOTIFY_BACKOFF_S,
        backoff_max_s: float = defaults.NOTIFY_BACKOFF_MAX_S,
        claim_idle_s: float = defaults.NOTIFY_CLAIM_IDLE_S,
        forget_idle_s: float = defaults.NOTIFY_FORGET_IDLE_S,
        consumer: str | None = None,
        group: str = defaults.NOTIFY_GROUP,
        batch: int = 100,
        clock: Callable[[], float] = time.monotonic,
        post_fn: PostFn | None = None,
    ) -> None:
        if max_attempts < 1:
            raise ValidationError(f"must be at least 1, got {max_attempts}", field="max_attempts")
        self.conn = conn
        self.webhooks = list(webhooks)
        self.timeout_s = timeout_s
        self.max_attempts = max_attempts
        self.backoff_s = backoff_s
        self.backoff_max_s = backoff_max_s
        self.claim_idle_ms = int(claim_idle_s * 1000)
        self.forget_idle_ms = int(forget_idle_s * 1000)
        self.consumer = consumer or f"{socket.gethostname()}:{os.getpid()}"
        self.group = group
        self.batch = batch
        self.clock = clock
        self.post = post_fn or post
        self._inflight: dict[tuple[str, str], _Delivery] = {}
        self._groups: set[str] = set()
        self._touched_at = 0.0
        self._claimed_at: float | None = None  # last pass that looked for idle entries

    # -- reading ----------------------------------------------------------------------------
    def _queues(self) -> list[str]:
        return sorted(self.conn.client.smembers(self.conn.keys.queues))

    def _ensure_group(self, key: str) -> None:
        if key in self._groups:
            return
        try:
            # id 0: entries written before any sender ran (or while none did) are delivered
            self.conn.client.xgroup_create(key, self.group, id="0", mkstream=True)
        except redis.exceptions.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._groups.add(key)

    def _take(self, queue: str, entries: Iterable[Any], report: SendReport) -> None:
        for entry in entries or []:
            if not entry or entry[1] is None:
                continue  # trimmed away while pending: nothing left to deliver
            entry_id, fields = entry
            if (queue, entry_id) in self._inflight:
                continue
            note = Notification.from_entry(queue, entry_id, fields)
            targets = {t.key: t for t in [*self.webhooks, *note.webhooks]}
            self._inflight[(queue, entry_id)] = _Delivery(
                note, [_Attempts(t) for t in targets.values()])
            report.read += 1

    def _read(self, queue: str, report: SendReport, *, claim: bool) -> None:
        key = self.conn.keys.queue(queue).outbox
        try:
            self._ensure_group(key)
        except redis.exceptions.ResponseError as exc:  # e.g. a key of another type
            report.errors.append(f"{queue}: outbox unusable: {exc}")
            return
        client = self.conn.client
        try:
            if claim:
                claimed = client.xautoclaim(key, self.group, self.consumer,
                                            min_idle_time=self.claim_idle_ms, start_id="0-0",
                                            count=self.batch)
                got = claimed[1] if isinstance(claimed, list | tuple) and len(claimed) > 1 \
                    else []
                before = report.read
                self._take(queue, got, report)
                report.claimed += report.read - before
                self._forget_gone(key, report)
            res = client.xreadgroup(self.group, self.consumer, {key: ">"}, count=self.batch)
        except redis.exceptions.ResponseError as exc:
            if "NOGROUP" in str(exc):  # the stream was deleted meanwhile: make it again
                self._groups.discard(key)
                return
            raise
        for _stream, entries in res or []:
            self._take(queue, entries, report)

    def _forget_gone(self, key: str, report: SendReport) -> None:
        """Delete other consumers that hold nothing and have been idle past forget_idle
        (their pending entries, if any, were just claimed above once idle long enough)."""
        client = self.conn.client
        for c in client.xinfo_consumers(key, self.group):
            name = c.get("name")
            if name != self.consumer and int(c.get("pending", 1)) == 0 and \
                    int(c.get("idle", 0)) >= self.forget_idle_ms:
                client.xgroup_delconsumer(key, self.group, name)
                report.forgotten += 1

    def _touch(self) -> None:
        """Reset the idle time of the entries this sender is still retrying, so another
        sender does not claim (and deliver again) what this one is working on."""
        now = self.clock()
        if not self._inflight or now - self._touched_at < self.claim_idle_ms / 3000:
            return
        self._touched_at = now
        by_queue: dict[str, list[str]] = {}
        for (q, eid) in self._inflight:
            by_queue.setdefault(q, []).append(eid)
        for q, ids in by_queue.items():
            try:
                self.conn.client.xclaim(self.conn.keys.queue(q).outbox, self.group,
                                        self.consumer, 0, ids, justid=True)
            except redis.exceptions.RedisError as exc:
                log.info("could not refresh pending notifications of %s: %s", q, exc)

    # -- delivering -------------------------------------------------------------------------
    def _backoff(self, attempts: int) -> float:
        return min(self.backoff_max_s, self.backoff_s * 2 ** (attempts - 1))

    def _attempt(self, d: _Delivery, report: SendReport) -> None:
        now = self.clock()
        for a in d.targets:
            if a.done or a.next_at > now:
                continue
            answer = self.post(a.target.url, d.note.payload(a.target.kind), self.timeout_s)
            a.attempts += 1
            if answer.ok:
                a.done = True
                report.delivered += 1
                log.info("notification delivered", extra={"fields": {
                    "queue": d.note.queue, "deployment_id": d.note.deployment,
                    "type": d.note.type, "webhook": a.target.shown, "attempts": a.attempts}})
                continue
            a.last = answer.text
            if a.attempts >= self.max_attempts:
                a.done = a.failed = True
                report.failed += 1
                log.warning("notification given up after %d attempts: %s", a.attempts,
                            answer.text, extra={"fields": {
                                "queue": d.note.queue, "deployment_id": d.note.deployment,
                                "type": d.note.type, "webhook": a.target.shown}})
            else:
                a.next_at = self.clock() + self._backoff(a.attempts)
                log.info("notification attempt %d failed: %s; retrying", a.attempts,
                         answer.text, extra={"fields": {
                             "queue": d.note.queue, "type": d.note.type,
                             "webhook": a.target.shown}})

    def _settle(self, d: _Delivery, report: SendReport) -> None:
        qk = self.conn.keys.queue(d.note.queue)
        failures = [json.dumps({"notification": d.note.body(), "webhook": a.target.shown,
                                "kind": a.target.kind, "source": a.target.source,
                                "attempts": a.attempts, "error": a.last},
                               separators=(",", ":"), default=str)
                    for a in d.targets if a.failed]
        acked = self.conn.scripts.call(
            "notify_settle", [qk.outbox, qk.outbox_dead],
            [self.group, d.note.entry_id, defaults.NOTIFY_DEAD_MAXLEN, len(failures),
             *failures])
        report.acknowledged += int(acked or 0)
        del self._inflight[(d.note.queue, d.note.entry_id)]

    def pass_once(self) -> SendReport:
        """One pass: claim idle entries, read new ones, attempt every delivery that is due,
        acknowledge the finished ones. Never sleeps (but for the webhook calls themselves)."""
        report = SendReport()
        # idle entries are looked for at most twice per claim_idle (XAUTOCLAIM walks the
        # pending list), new ones on every pass
        now = self.clock()
        claim = self._claimed_at is None or now - self._claimed_at >= self.claim_idle_ms / 2000
        if claim:
            self._claimed_at = now
        for q in self._queues():
            try:
                self._read(q, report, claim=claim)
            except redis.exceptions.RedisError as exc:
                report.errors.append(f"{q}: {exc}")
        self._touch()
        for d in list(self._inflight.values()):
            self._attempt(d, report)
            if d.finished():
                try:
                    self._settle(d, report)
                except redis.exceptions.RedisError as exc:
                    report.errors.append(f"{d.note.queue}: settling {d.note.entry_id}: {exc}")
        report.pending = len(self._inflight)
        return report

    def next_due_in(self) -> float | None:
        """Seconds until the next retry is due (None: nothing in flight)."""
        dues = [a.next_at for d in self._inflight.values() for a in d.targets if not a.done]
        return None if not dues else max(0.0, min(dues) - self.clock())

    def run_once(self, sleep: Callable[[float], None] = time.sleep) -> SendReport:
        """Deliver everything in the outboxes now, retries included, then return: every entry
        read ends delivered or recorded failed (``pycanary notify --once``, cron, tests)."""
        total = SendReport()
        while True:
            total.add(self.pass_once())
            wait = self.next_due_in()
            if wait is None:
                return total
            sleep(min(wait, self.backoff_max_s))

    def run(self, stop: threading.Event, poll_s: float = defaults.NOTIFY_POLL_S) -> None:
        """Until ``stop`` is set: a pass, then wait ``poll_s`` (less if a retry is due)."""
        while not stop.is_set():
            try:
                report = self.pass_once()
                for e in report.errors:
                    log.warning("notification sender: %s", e)
            except Exception:
                log.exception("notification pass failed; retrying")
            wait = self.next_due_in()
            stop.wait(poll_s if wait is None else min(poll_s, max(0.01, wait)))

    def start(self, stop: threading.Event, poll_s: float = defaults.NOTIFY_POLL_S
              ) -> threading.Thread:
        """Run in a daemon thread of its own (how `pycanary controller` runs it)."""
        t = threading.Thread(target=self.run, args=(stop, poll_s), name="pycanary-notify",
                             daemon=True)
        t.start()
        return t


def failed_notifications(conn: Connection, queue: str, count: int = 100) -> list[dict[str, Any]]:
    """The queue's ``notify_failed`` records, newest first: what the sender gave up on, so an
    operator learns that a rollback's alert never reached anyone (``pycanary notifications``)."""
    from . import service

    service.require_queue(conn, queue)
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= 1000:
        raise ValidationError(f"must be 1-1000, got {count!r}", field="limit")
    out = []
    for eid, f in conn.client.xrevrange(conn.keys.queue(queue).outbox_dead, count=count):
        try:
            rec = json.loads(f.get("f") or "{}")
        except ValueError:
            rec = {}
        out.append({"id": eid, "entry": f.get("entry"), **rec})
    return out


# -- webhook gates ------------------------------------------------------------------------------
@dataclass
class GateResult:
    """The outcome of a gate look: ``answer`` is None while the call is still running."""

    answer: Answer | None
    started: bool = False  # a new call was started by this look


class GateCalls:
    """Webhook-gate calls in background threads, one at most per (deployment, stage).

    ``look`` never waits: it returns a finished call's answer (and forgets it, so the next
    look after a refusal asks again), or None while a call runs, starting one if none does.
    State is in memory only: a new controller simply asks again."""

    def __init__(self, post_fn: PostFn | None = None) -> None:
        self.post = post_fn or post
        self._lock = threading.Lock()
        self._running: dict[tuple[str, int], threading.Thread] = {}
        self._done: dict[tuple[str, int], Answer] = {}

    def _call(self, key: tuple[str, int], url: str, body: bytes, timeout_s: float) -> None:
        try:
            answer = self.post(url, body, timeout_s)
        except Exception as exc:  # a bug in the call must not leave the gate running forever
            answer = Answer(None, type(exc).__name__)
        with self._lock:
            self._running.pop(key, None)
            self._done[key] = answer

    def look(self, key: tuple[str, int], url: str, body: dict[str, Any],
             timeout_s: float) -> GateResult:
        with self._lock:
            answer = self._done.pop(key, None)
            if answer is not None and answer.ok:
                return GateResult(answer)
            if key in self._running:
                return GateResult(None)
            data = json.dumps(body, separators=(",", ":"), default=str).encode()
            t = threading.Thread(target=self._call, args=(key, url, data, timeout_s),
                                 name="pycanary-gate", daemon=True)
            self._running[key] = t
        t.start()
        return GateResult(answer, started=True)

    def forget(self, deployment_id: str) -> None:
        """Drop finished answers of a deployment (it moved on or ended)."""
        with self._lock:
            for k in [k for k in self._done if k[0] == deployment_id]:
                del self._done[k]
