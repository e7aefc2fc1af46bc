"""Dead letters: list, show, requeue and purge a queue's DLQ (service layer of `pycanary dlq`).

A dead letter is a JSON record written by `fail_jobs` (worker.py): ``job`` (the envelope as
last attempted) with ``error``, ``version``, ``lane``, ``worker``, ``attempts``, ``failed_at``;
or ``raw``/``raw_hex`` for an envelope no worker could decode. Moving them is a state change,
so it happens in lua/dead_letters.lua, a bounded batch per call, repeated from here: a record
is named by its exact text, so two operators requeueing at once never push a job twice.

Requeue goes to the tail of the stable lane (behind the waiting jobs, like a new job), with
``attempts`` reset to 0 and ``ready_at`` set to now (its queue wait counts from the requeue).
The stable lane, because a dead letter's fix is usually a rollback to stable or a stable fix;
the tail, because it waited for the fix already and must not starve the jobs queued meanwhile.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from . import defaults, service, validation
from .backends import streams
from .connection import Connection
from .errors import NotFoundError, ValidationError, raise_for_code
from .job import Envelope

#: Records per dead_letters call (the script accepts up to 1000).
BATCH = 200
#: Records read per LRANGE page when looking for job ids.
PAGE = 1000
#: Largest offset into a DLQ a listing accepts (far beyond any real DLQ).
MAX_OFFSET = 1_000_000_000


@dataclass
class DeadLetter:
    """One decoded record; ``envelope`` is what a requeue pushes (``None``: not requeueable,
    ``problem`` says why)."""

    raw: str
    job_id: str | None
    error: str
    version: str | None
    lane: str | None
    worker: str | None
    attempts: int | None
    failed_at: int | None
    payload: Any = None
    tenant: str | None = None
    envelope: Envelope | None = None
    problem: str = ""

    def to_dict(self, *, full: bool = False) -> dict[str, Any]:
        out = {"job_id": self.job_id, "error": self.error, "version": self.version,
               "lane": self.lane, "worker": self.worker, "attempts": self.attempts,
               "failed_at": self.failed_at, "tenant": self.tenant,
               "requeueable": self.envelope is not None, "problem": self.problem or None}
        if full:
            out["payload"] = self.payload
            out["record"] = _loads(self.raw)
        return out


def _loads(raw: str) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def _text(value: Any) -> str | None:
    """A record's text field as text (a foreign writer's number shows as one), or None."""
    return None if value is None else str(value)


def _int(value: Any) -> int | None:
    """A record's integer field, or None when it is missing or not an integer."""
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def decode(raw: str, queue: str) -> DeadLetter:
    """A DLQ record as the CLI and API show it; never raises (a garbled record is shown with
    its problem and stays where it is)."""
    rec = _loads(raw)
    if not isinstance(rec, dict):
        return DeadLetter(raw, None, "", None, None, None, None, None,
                          problem="not a JSON object")
    dl = DeadLetter(raw, None, str(rec.get("error", "")), _text(rec.get("version")),
                    _text(rec.get("lane")), _text(rec.get("worker")), _int(rec.get("attempts")),
                    _int(rec.get("failed_at")))
    env: Envelope | None = None
    try:
        if isinstance(rec.get("job"), dict):
            fields = {k: v for k, v in rec["job"].items()
                      if k in Envelope.__dataclass_fields__}
            env = Envelope.decode(Envelope(**fields).encode())  # what a worker will read
        elif isinstance(rec.get("raw"), str):
            env = Envelope.decode(rec["raw"])
        else:
            dl.problem = "the envelope was not valid UTF-8 (raw_hex): not requeueable"
    except (ValueError, TypeError) as exc:
        dl.problem = f"the envelope does not decode: {exc}"
    if env is not None:
        dl.job_id, dl.payload, dl.tenant = env.id, env.payload, env.tenant
        if env.queue != queue:
            dl.problem = f"the envelope names queue {env.queue!r}: not requeueable here"
        else:
            dl.envelope = env
    return dl


def count(conn: Connection, queue: str) -> int:
    service.require_queue(conn, queue)
    return int(conn.client.llen(conn.keys.queue(queue).dlq))


def list_dead(conn: Connection, queue: str, *, limit: int = 20,
              offset: int = 0) -> tuple[int, list[DeadLetter]]:
    """(how many, the newest ``limit`` records from ``offset``)."""
    service.require_queue(conn, queue)
    if not 1 <= limit <= 10_000:
        raise ValidationError(f"must be 1-10000, got {limit}", field="limit")
    if not 0 <= offset <= MAX_OFFSET:  # Redis refuses an index beyond a 64-bit integer
        raise ValidationError(f"must be 0-{MAX_OFFSET:,}, got {offset}", field="offset")
    key = conn.keys.queue(queue).dlq
    pipe = conn.client.pipeline(transaction=False)
    pipe.llen(key)
    pipe.lrange(key, offset, offset + limit - 1)
    total, raws = pipe.execute()
    return int(total), [decode(r, queue) for r in raws]


def dead_job_ids(conn: Connection, queue: str, *, batch: int = 1000) -> set[str]:
    """The job ids of every record in the queue's DLQ, read by pages (an admin and demo path:
    an accounting of which jobs ended dead-lettered)."""
    key = conn.keys.queue(queue).dlq
    out: set[str] = set()
    start = 0
    while True:
        raws = conn.client.lrange(key, start, start + batch - 1)
        out.update(d.job_id for d in (decode(r, queue) for r in raws) if d.job_id)
        if len(raws) < batch:
            return out
        start += batch


def find(conn: Connection, queue: str, job_ids: list[str]) -> list[DeadLetter]:
    """Every record of these job ids, oldest first (an admin path: it reads the DLQ by
    pages). Refuses the whole request, naming the first, if an id has no record."""
    service.require_queue(conn, queue)
    if not job_ids:
        raise ValidationError("give job ids or --all", field="job_id")
    wanted = set(job_ids)
    key = conn.keys.queue(queue).dlq
    found: list[DeadLetter] = []
    start = 0
    while True:
        page = conn.client.lrange(key, start, start + PAGE - 1)
        for raw in page:
            dl = decode(raw, queue)
            if dl.job_id in wanted:
                found.append(dl)
        if len(page) < PAGE:
            break
        start += PAGE
    missing = [j for j in job_ids if j not in {d.job_id for d in found}]
    if missing:
        raise NotFoundError(f"no dead letter with id {validation.quote(missing[0])} in "
                              f"{queue} (see `pycanary dlq list {queue}`)", field="job_id")
    return found[::-1]


@dataclass
class Report:
    """What a requeue or purge did: ``done`` records moved (or removed), ``missing`` ones gone
    meanwhile, ``skipped`` ones left in the DLQ (id or None, why), ``calls`` script calls."""

    action: str
    queue: str
    done: int = 0
    missing: int = 0
    calls: int = 0
    skipped: list[tuple[str | None, str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["skipped"] = [{"job_id": j, "problem": p} for j, p in self.skipped]
        return out


def _apply(conn: Connection, queue: str, action: str, letters: list[DeadLetter],
           report: Report, now: int) -> None:
    args: list[str] = [action]
    for dl in letters:
        if action == "requeue":
            if dl.envelope is None:
                report.skipped.append((dl.job_id, dl.problem))
                continue
            env = replace(dl.envelope, attempts=0, ready_at=now)
            args += [dl.raw, env.encode()]
        else:
            args += [dl.raw, ""]
    if len(args) == 1:
        return
    qk = conn.keys.queue(queue)
    script, keys = "dead_letters", qk.dead_letter_keys()
    if streams.backend_of(conn, queue) == "streams":  # requeued to the stable stream
        script, keys = "dead_letters_stream", [qk.dlq, qk.stream_stable]
    res = conn.scripts.call(script, keys, args)
    if isinstance(res, int) and res < 0:
        raise_for_code(res, script="dead_letters", field="queue")
    report.done += int(res[0])
    report.missing += int(res[1])
    report.calls += 1


def _run(conn: Connection, queue: str, action: str, job_ids: list[str] | None, all_: bool,
         batch: int, now_ms: int | None) -> Report:
    validation.queue_name(queue)
    if all_ == bool(job_ids):
        raise ValidationError("give job ids or --all (not both)", field="job_id")
    if not 1 <= batch <= 1000:
        raise ValidationError(f"must be 1-1000, got {batch}", field="batch")
    now = now_ms if now_ms is not None else defaults.now_ms()
    report = Report(action, queue)
    if job_ids:
        letters = find(conn, queue, job_ids)
        for i in range(0, len(letters), batch):
            _apply(conn, queue, action, letters[i:i + batch], report, now)
        return report
    service.require_queue(conn, queue)
    key = conn.keys.queue(queue).dlq
    # oldest first, from the right end; records left behind (not requeueable) are stepped
    # over. At most the records there at the start: dead letters arriving meanwhile (pushed at
    # the left) wait for the next run, so a busy DLQ cannot keep this loop going.
    left = int(conn.client.llen(key))
    kept = 0
    while left > 0:
        page = conn.client.lrange(key, -(kept + min(batch, left)), -(kept + 1))
        if not page:
            break
        left -= len(page)
        before = len(report.skipped)
        _apply(conn, queue, action, [decode(r, queue) for r in reversed(page)], report, now)
        kept += len(report.skipped) - before
    return report


def requeue(conn: Connection, queue: str, job_ids: list[str] | None = None, *,
            all_: bool = False, batch: int = BATCH, now_ms: int | None = None) -> Report:
    """Move dead letters (these ids, or all) to the tail of the stable lane, attempts reset.
    Records that cannot be requeued (undecodable, another queue's) stay and are reported."""
    return _run(conn, queue, "requeue", job_ids, all_, batch, now_ms)


def purge_question(conn: Connection, queue: str, job_ids: list[str] | None, *,
                   all_: bool = False) -> str:
    """What a face asks before a purge (deleted for good), with how many it would delete."""
    what = f"all {count(conn, queue):,} dead letters" if all_ else \
        f"{len(job_ids or [])} dead letter(s)"
    return f"Delete {what} of {queue} for good?"


def purge(conn: Connection, queue: str, job_ids: list[str] | None = None, *,
          all_: bool = False, batch: int = BATCH) -> Report:
    """Delete dead letters (these ids, or all)."""
    return _run(conn, queue, "purge", job_ids, all_, batch, None)
