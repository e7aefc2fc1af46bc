"""The worker engine on the Streams backend: ``Worker`` with its list steps replaced.

Everything above the backend is inherited unchanged: lane assignment (rollback seen within a
maintenance tick, so no job starts on a rolled-back version after one heartbeat), the
executors, retries with backoff, heartbeats, stop and exit paths. What differs:

- a held job is named by its entry id (``_Running.entry_id``), pending on this worker's
  consumer in the lane's group: the PEL is the processing list;
- fetch/ack/fail are ``fetch_stream`` / ``ack_stream`` / ``fail_stream``, one pipeline per
  sync point as on lists;
- unstarted jobs are given back with ``return_stream`` (a new entry at the tail: a stream
  cannot un-deliver), to stable when the canary lane is closed;
- every heartbeat the worker touches its held entries (``touch_stream``) and reclaims entries
  idle longer than its TTL (``reclaim_stream``: XAUTOCLAIM of dead workers' jobs, deleting
  consumers that are gone); the list reaper has nothing to return for it.

Started jobs are marked in the lane's ``stream_running`` hash before they start, so a dead
worker's started jobs count as crashed attempts when they are reclaimed (of the claimer's
version: it serves the same lane). An idle worker blocks in XREADGROUP BLOCK, as a list
worker blocks in BLMOVE.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from typing import Any

import redis

from .. import defaults, metrics
from ..job import Envelope, encode_json
from ..keys import STREAM_GROUP
from ..worker import (
    BOUNCE_PAUSE_S,
    Worker,
    _Running,
    _text,
)
from . import streams

log = logging.getLogger("pycanary.worker")

#: Deliveries without an outcome (each worker holding it died) before an entry is
#: dead-lettered by the reclaim: a job that kills its workers must not kill every worker.
MAX_DELIVERIES = 5
#: Pause before fetch_stream when the lane's stream does not exist yet (it creates it).
IDLE_POLL_S = 0.02


class StreamWorker(Worker):
    """A ``Worker`` whose queues use the Streams backend (``queue configure --backend
    streams``); same arguments and behaviour, see the module docstring for the differences."""

    max_deliveries = MAX_DELIVERIES

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: (queue, entry id) -> lane of every held entry (pending, running or unrecorded):
        #: what the heartbeat touches, so no live worker's entry looks idle to XAUTOCLAIM
        self._lanes_held: dict[tuple[str, str], str] = {}

    # -- held jobs are named by entry id -------------------------------------------------
    def _hold(self, r: _Running) -> None:
        with self._lock:
            self._held[(r.queue, r.entry_id)] += 1
            self._lanes_held[(r.queue, r.entry_id)] = r.lane

    def _unhold(self, queue: str, raw: str) -> None:
        """``raw`` is the entry id here. Once released, the entry is no longer touched."""
        with self._lock:
            super()._unhold(queue, raw)
            if (queue, raw) not in self._held:
                self._lanes_held.pop((queue, raw), None)


    def _accept_entry(self, queue: str, lane: str, entry: streams.Entry) -> None:
        """An entry now pending here: held, bounced, or dead-lettered."""
        now = defaults.now_ms()
        raw = entry.raw
        try:
            if isinstance(raw, bytes):
                raise ValueError(f"not UTF-8 ({len(raw)} bytes)")
            env = Envelope.decode(raw)
        except (ValueError, KeyError, TypeError, RecursionError) as exc:
            self._dead_letter_entry(queue, lane, entry, exc)
            return
        if self.schemas is not None and env.schema not in self.schemas:
            streams.give_back(self.conn, queue, lane, self.id, [entry.id])
            self.stats.bounced += 1
            self._stop.wait(BOUNCE_PAUSE_S)
            return
        r = _Running(raw, env, queue, lane, time.perf_counter_ns(),
                     max(0.0, (now - env.waiting_since) * 1000.0), entry_id=entry.id)
        with self._lock:
            self._hold(r)
            self._pending.append(r)

    def _dead_letter_entry(self, queue: str, lane: str, entry: streams.Entry,
                           exc: BaseException) -> None:
        raw = entry.raw
        record: dict[str, Any] = {"error": f"undecodable envelope: {exc}"[:2000],
                                  "version": self.version, "lane": lane, "worker": self.id,
                                  "entry": entry.id, "failed_at": defaults.now_ms()}
        if isinstance(raw, bytes):
            record["raw_hex"] = raw.hex()
        else:
            record["raw"] = raw
        slot = metrics.slot_of(defaults.now_ms(), self.slot_s)
        res = streams.fail(self.conn, queue, lane, self.version, self.id, slot, self.keep_s,
                           [(entry.id, "dead", encode_json(record), "", 0, 0, "", "0", "")])
        self.stats.dead += res.recorded
        log.warning("worker %s: dead-lettered a poison envelope on %s: %s", self.id, queue, exc)

    def _write_marks(self, todo: list[_Running]) -> None:
        """Before jobs start, one HSET per (queue, lane) marks them in the lane's
        ``stream_running`` hash (entry id -> "<first> <unit>"): if this process dies mid-job,
        reclaim_stream counts exactly those as crashed attempts. On failure none counts as
        marked (the step is retried)."""
        by_key: dict[str, list[str]] = {}
        for r in todo:
            e = r.envelope
            first = "1" if e.attempts == 0 else "0"
            unit = metrics.unit_of(e.id, e.sticky_key, e.tenant,
                                   self._strata.get(r.queue, frozenset()))
            by_key.setdefault(self.conn.keys.queue(r.queue).stream_running(r.lane), []).extend(
                (r.entry_id, f"{first} {unit}"))
            r.first, r.unit = first, unit
        try:
            pipe = self.conn.client.pipeline(transaction=False)
            for key, pairs in by_key.items():
                pipe.execute_command("HSET", key, *pairs)
            pipe.execute()
        except BaseException:
            for r in todo:
                r.first = r.unit = ""
            raise

    # -- fetching and settling -----------------------------------------------------------
    def _block_fetch(self) -> int:
        """Idle: wait for one entry on the only active lane (XREADGROUP BLOCK, a plain
        command: scripts cannot block), or sleep a little. Read as bytes, like the lists'
        BLMOVE, so an envelope that is not UTF-8 is dead-lettered rather than failing the
        read. As there, the rolled-back check is the maintenance thread's: an entry read just
        after a rollback is given back unstarted."""
        lanes = self._active_lanes()
        if len(lanes) != 1:
            self._stop.wait(0.05 if lanes else min(0.5, self.heartbeat_s / 2))
            return 0
        q, lane = lanes[0]
        key = self.conn.keys.queue(q).stream(lane)
        try:
            res = self._raw_command(key, "XREADGROUP", "GROUP", STREAM_GROUP, self.id,
                                    "COUNT", 1, "BLOCK", max(1, int(self.block_s * 1000)),
                                    "STREAMS", key, ">")
        except redis.exceptions.ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            self._stop.wait(IDLE_POLL_S)  # no stream yet: fetch_stream creates it and its group
            return self._sync(1)
        if not res:
            return 0
        got = 0
        for _key, entries in res:
            for entry_id, fields in entries:
                # a flat [field, value, ...] reply, or a dict where the client parsed it (a
                # response callback: the recorder of tests/test_slots.py goes through one)
                if isinstance(fields, dict):
                    raw = fields.get(b"e", b"")
                else:
                    raw = dict(zip(fields[::2], fields[1::2], strict=True)).get(b"e", b"") \
                        if fields else b""
                self._accept_entry(q, lane, streams.Entry(
                    entry_id.decode(), _text(raw), lane))
                got += 1
        return got

    # -- the Streams scripts behind Worker._sync ----------------------------------------------
    def _job_ref(self, r: _Running) -> str:
        """The scripts name a held job by its entry id (the envelope is in the stream)."""
        return r.entry_id

    def _ack_call(self, q: str, lane: str, slot: int) -> tuple[str, list[str], list[Any]]:
        return "ack_stream", self.conn.keys.queue(q).stream_ack_keys(self.version, lane, slot), [
            self.keep_s, STREAM_GROUP, self.id]

    def _fail_call(self, q: str, lane: str, slot: int) -> tuple[str, list[str], list[Any]]:
        return "fail_stream", self.conn.keys.queue(q).stream_fail_keys(
            self.version, lane, slot), [self.keep_s, STREAM_GROUP, self.id]

    def _fetch_call(self, q: str, lane: str, want: int) -> tuple[str, list[str], list[Any]]:
        return "fetch_stream", self.conn.keys.queue(q).stream_fetch_keys(lane), [
            min(want, streams.MAX_FETCH), self.version, STREAM_GROUP, self.id]

    def _accept_fetched(self, q: str, lane: str, res: Any) -> int:
        """fetch_stream's entries: (id, envelope) pairs; those not UTF-8 come hex-encoded."""
        good, bad = res
        entries = streams._entries(good, lane) + [
            streams.Entry(streams._text(bad[i]), bytes.fromhex(streams._text(bad[i + 1])),
                          lane) for i in range(0, len(bad), 2)]
        for entry in entries:
            self._accept_entry(q, lane, entry)
        return len(entries)

    # -- giving back -----------------------------------------------------------------------
    def _give_back(self, runs: list[_Running]) -> Counter[str]:
        """Unstarted jobs back to their lanes (oldest first), each leaving `pending` only once
        its script ran. Called with the lock held."""
        moved: Counter[str] = Counter()
        for r in runs:
            returned, to_stable, _late = streams.give_back(self.conn, r.queue, r.lane, self.id,
                                                           [r.entry_id])
            self._pending.remove(r)
            self._unhold(r.queue, r.entry_id)
            moved["stable" if to_stable else r.lane] += returned
        return moved

    def _return_unwanted(self) -> None:
        back = [r for r in self._pending if not self._wanted(r.queue)]
        if not back:
            return
        moved = self._give_back(back)
        log.info("worker %s (version %s): %d fetched job(s) not started, given back (%s)",
                 self.id, self.version, len(back),
                 ", ".join(f"{n} to {lane}" for lane, n in sorted(moved.items())))

    def _return_pending(self, pending: Any) -> None:
        with self._lock:
            self._give_back(list(pending))

    # -- the PEL as the processing list ----------------------------------------------------
    def _my_pending(self, queue: str, lane: str) -> list[str]:
        key = self.conn.keys.queue(queue).stream(lane)
        try:
            rows = self.conn.client.xpending_range(key, STREAM_GROUP, "-", "+", 1000,
                                                   consumername=self.id)
        except redis.exceptions.ResponseError as exc:  # NOGROUP: nothing was ever fetched
            if "NOGROUP" in str(exc):
                return []
            raise
        return [r["message_id"] if isinstance(r["message_id"], str)
                else r["message_id"].decode() for r in rows]

    def _reconcile_locked(self) -> None:
        """After a failed step: entries pending here that nobody holds (a fetch whose reply was
        lost) are adopted; held entries no longer pending here (reclaimed or drained while
        this worker was silent) are dropped if not started."""
        for q in self.queues:
            for lane in ("stable", "canary"):
                ids = self._my_pending(q, lane)
                held = {eid for (qq, eid) in self._held if qq == q}
                mine = set(ids)
                kept = [r for r in self._pending
                        if not (r.queue == q and r.lane == lane and r.entry_id not in mine)]
                for r in self._pending:
                    if r not in kept:
                        self._unhold(q, r.entry_id)
                self._pending.clear()
                self._pending.extend(kept)
                key = self.conn.keys.queue(q).stream(lane)
                for eid in ids:
                    if eid in held:
                        continue
                    rows = self.conn.client.xrange(key, eid, eid)
                    raw = rows[0][1].get("e", "") if rows else ""
                    self._accept_entry(q, lane, streams.Entry(eid, raw, lane))
        self._needs_reconcile = False

    def _heartbeat(self) -> bool:
        alive = super()._heartbeat()
        try:
            self._touch_and_reclaim()
        except Exception as exc:  # retried next beat; the heartbeat itself went through
            log.warning("worker %s: touch/reclaim failed (%s)", self.id, exc)
        return alive

    def _touch_and_reclaim(self) -> None:
        """Keep held entries fresh; take over entries idle past this worker's TTL (their
        workers stopped touching them), for lanes this worker serves."""
        with self._lock:  # every held entry: pending, running (long jobs!) and unrecorded
            held: dict[tuple[str, str], list[str]] = {}
            for (q, eid), lane in self._lanes_held.items():
                held.setdefault((q, lane), []).append(eid)
        for (q, lane), ids in held.items():
            streams.touch(self.conn, q, lane, self.id, ids)
        if self._stop.is_set() or not self.ready.is_set():
            return
        for q, lane in self._active_lanes():
            got = streams.reclaim(self.conn, q, lane, self.id,
                                  min_idle_ms=self._min_idle_ms(q, lane),
                                  max_deliveries=self.max_deliveries, version=self.version,
                                  max_calls=10, slot_s=self.slot_s, keep_s=self.keep_s)
            self.stats.dead += got.dead
            for entry in got.entries:
                self._accept_entry(q, lane, entry)
            if got.entries or got.dead:
                log.warning("worker %s: took over %d job(s) of dead workers on %s/%s "
                            "(%d dead-lettered after %d deliveries)", self.id,
                            len(got.entries), q, lane, got.dead, self.max_deliveries)
        for q, lane in self._active_lanes():
            if lane == "stable":
                self._rescue_closed_canary(q)

    def _min_idle_ms(self, queue: str, lane: str, consumers: list | None = None) -> int:
        """The idle time after which a pending entry's worker counts as dead: the longest TTL
        advertised by the live (registered, deadline not passed) consumers of the lane's
        group, and this worker's own. A live worker touches its entries every heartbeat, well
        within its TTL, so whatever heartbeat the others run, only dead ones' entries get that
        idle."""
        key = self.conn.keys.queue(queue).stream(lane)
        if consumers is None:
            try:
                consumers = self.conn.client.xinfo_consumers(key, STREAM_GROUP)
            except redis.exceptions.ResponseError:
                return self.ttl_ms
        names = [c["name"] for c in consumers if c["name"] != self.id]
        if not names:
            return self.ttl_ms
        keys = self.conn.keys
        pipe = self.conn.client.pipeline(transaction=False)
        pipe.hmget(keys.worker_meta, names)
        for n in names:
            pipe.zscore(keys.worker_deadlines, n)
        metas, *deadlines = pipe.execute()
        now = defaults.now_ms()
        ttl = self.ttl_ms
        for meta, deadline in zip(metas, deadlines, strict=True):
            if deadline is None or deadline < now or not meta:
                continue  # not registered, or past its own deadline: dead
            try:
                ttl = max(ttl, int(json.loads(meta).get("ttl_ms") or defaults.TTL_MS))
            except (ValueError, TypeError, AttributeError):
                ttl = max(ttl, defaults.TTL_MS)
        return ttl

    def _rescue_closed_canary(self, queue: str) -> None:
        """A canary worker that died after the rollback's drain leaves entries pending in a
        closed canary stream, which no worker reads any more: a stable worker moves them to
        stable (drain_stream for those consumers: pending entries idle past the TTL, so
        untouched by a live worker), as the lists' reaper returns such jobs to stable."""
        qk = self.conn.keys.queue(queue)
        cfg = self.conn.client.hmget(qk.config, ["canary_version", "weight_bp"])
        if (cfg[0] or "") or int(cfg[1] or 0) > 0:
            return  # the canary lane is open: its own workers reclaim it
        try:
            consumers = self.conn.client.xinfo_consumers(qk.stream_canary, STREAM_GROUP)
        except redis.exceptions.ResponseError:  # no canary stream or group: nothing held
            return
        min_idle = self._min_idle_ms(queue, "canary", consumers)
        dead = [c["name"] for c in consumers
                if int(c["pending"]) > 0 and int(c["idle"]) >= min_idle]
        if dead:
            rep = streams.drain(self.conn, queue, retired=dead, max_seconds=1.0)
            if rep.moved:
                log.warning("worker %s: moved %d job(s) held by dead canary workers of %s "
                            "to the stable lane", self.id, rep.moved, queue)

    def _promote_due(self) -> None:
        for q in self.queues:
            streams.promote_delayed(self.conn, q)

    def _release(self) -> bool:
        """Exit: record what can be recorded, give back what was not started; True when this
        consumer holds nothing, so the worker may deregister."""
        try:
            if self._acks or self._fails:
                self._sync(0)
            self._return_pending(self._pending)
        except Exception as exc:
            log.warning("worker %s: could not record every outcome at exit (%s)", self.id, exc)
        if self._inflight or self._acks or self._fails or self._pending:
            log.warning("worker %s exits holding %d jobs (%d running): its entries are "
                        "reclaimed once idle past its TTL", self.id, sum(self._held.values()),
                        self._inflight)
            return False
        try:
            left = sum(len(self._my_pending(q, lane)) for q in self.queues
                       for lane in ("stable", "canary"))
        except Exception as exc:
            log.warning("worker %s: could not check its pending entries (%s)", self.id, exc)
            return False
        if left:
            log.warning("worker %s: %d entries still pending on it; reclaimed later", self.id,
                        left)
            return False
        return True


def worker_class(conn: Any, queues: list[str]) -> type[Worker]:
    """The engine for these queues: StreamWorker when every queue uses the Streams backend,
    Worker when none does; a mix is refused (one process serves one backend)."""
    kinds = {q: streams.backend_of(conn, q) for q in queues}
    if all(k == "streams" for k in kinds.values()):
        return StreamWorker
    if all(k == "lists" for k in kinds.values()):
        return Worker
    from ..errors import ValidationError

    raise ValidationError("mixes backends (" + ", ".join(f"{q}: {k}" for q, k in kinds.items())
                          + "); run one worker per backend", field="queues")
