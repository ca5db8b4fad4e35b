"""The Redis driver: committed outbox rows are relayed into Redis; workers reserve atomically.

Keys, all under ``BOURSE_QUEUE_REDIS_PREFIX`` (default ``bourse:``):

- ``job:<id>``            hash: queue, job, payload, attempts, created_at, request_id, unique_key, token
- ``queue:<q>``           list of ready job ids, oldest first
- ``queue:<q>:delayed``   sorted set of job ids by the time they become available
- ``queue:<q>:reserved``  sorted set of reserved job ids by reservation expiry
- ``unique:<key>``        the id of the one pending job with that unique key
- ``relayed:<id>``        marker (1 day) so a relay repeated after a crash pushes nothing twice
- ``queues``              set of every queue name seen

Reserving is one Lua script over the worker's queues in priority order: for each
queue it first moves due delayed jobs and expired reservations back to the ready
list, then pops the first id, counts the attempt, stores a fresh token and adds
the id to the reserved set. Scripts run atomically, so a worker dying anywhere
leaves the job either ready or reserved, never gone. Every time the scripts compare
or store is an argument, read from the driver's ``clock`` as the database driver's
are; only the relay marker's expiry is left to Redis.

The reservation script first acknowledges the worker's previous job (if its token
still holds it), so a busy worker makes one Redis round trip per job; the relay
notifies idle workers once its jobs are in Redis (docs/decisions/0024-queue-wake-up.md).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from typing import Any

from redis import Redis, RedisError
from sqlalchemy import bindparam, insert, text

from bourse.db import SQLITE_BEGIN_OPTION, Database
from bourse.logging import get_logger
from bourse.queue.database_driver import read_depths
from bourse.queue.driver import Clock, QueueDepth, Reserved, failed_row
from bourse.queue.models import FailedJob
from bourse.queue.wake import notify
from bourse.redis_client import create_redis
from bourse.settings import Settings

log = get_logger("bourse.queue.redis")

RELAY_BATCH = 500
RELAYED_MARKER_SECONDS = 86400
SAFE_EVICTION_POLICIES = frozenset({"noeviction"})

# Forget a finished job if ``token`` still holds it: the "ack" of _SETTLE and _RESERVE.
_ACK = """
local function ack(prefix, id, token)
  local key = prefix .. 'job:' .. id
  if redis.call('HGET', key, 'token') ~= token then return 0 end
  local queue = redis.call('HGET', key, 'queue')
  redis.call('ZREM', prefix .. 'queue:' .. queue .. ':reserved', id)
  local unique = redis.call('HGET', key, 'unique_key')
  if unique and unique ~= '' and redis.call('GET', prefix .. 'unique:' .. unique) == id then
    redis.call('DEL', prefix .. 'unique:' .. unique)
  end
  redis.call('DEL', key)
  return 1
end
"""

# ARGV: now, expiry (now + retry_after), token, prefix, the id and token of a finished
# job to acknowledge first ('' for none), then the queues in priority order.
_RESERVE = (
    _ACK
    + """
local now = tonumber(ARGV[1])
local prefix = ARGV[4]
if ARGV[5] ~= '' then ack(prefix, ARGV[5], ARGV[6]) end
for i = 7, #ARGV do
  local base = prefix .. 'queue:' .. ARGV[i]
  local list, delayed, reserved = base, base .. ':delayed', base .. ':reserved'
  for _, source in ipairs({delayed, reserved}) do
    local due = redis.call('ZRANGEBYSCORE', source, '-inf', now, 'LIMIT', 0, 200)
    if #due > 0 then
      redis.call('ZREM', source, unpack(due))
      redis.call('RPUSH', list, unpack(due))
    end
  end
  local id = redis.call('LPOP', list)
  while id do
    local key = prefix .. 'job:' .. id
    if redis.call('EXISTS', key) == 1 then
      redis.call('HINCRBY', key, 'attempts', 1)
      redis.call('HSET', key, 'token', ARGV[3], 'reserved_at', ARGV[1])
      redis.call('ZADD', reserved, ARGV[2], id)
      local fields = redis.call('HGETALL', key)
      table.insert(fields, 'id')
      table.insert(fields, id)
      return fields
    end
    id = redis.call('LPOP', list)
  end
end
return false
"""
)

# KEYS: none (keys derive from the prefix). ARGV: prefix, id, token, mode, at, uncount, now.
# mode "ack" forgets the job; "release" makes it available at ``at``.
_SETTLE = (
    _ACK
    + """
local prefix, id = ARGV[1], ARGV[2]
if ARGV[4] == 'ack' then return ack(prefix, id, ARGV[3]) end
local key = prefix .. 'job:' .. id
if redis.call('HGET', key, 'token') ~= ARGV[3] then return 0 end
local queue = redis.call('HGET', key, 'queue')
local base = prefix .. 'queue:' .. queue
redis.call('ZREM', base .. ':reserved', id)
redis.call('HDEL', key, 'token', 'reserved_at')
if tonumber(ARGV[6]) > 0 then redis.call('HINCRBY', key, 'attempts', -tonumber(ARGV[6])) end
if tonumber(ARGV[5]) > tonumber(ARGV[7]) then
  redis.call('ZADD', base .. ':delayed', ARGV[5], id)
else
  redis.call('RPUSH', base, id)
end
return 1
"""
)

# ARGV: prefix, id, queue, job, payload, created_at, request_id, unique_key, available_at, now, marker_ttl
_PUSH = """
local prefix, id, queue = ARGV[1], ARGV[2], ARGV[3]
if not redis.call('SET', prefix .. 'relayed:' .. id, '1', 'NX', 'EX', tonumber(ARGV[11])) then return 0 end
if ARGV[8] ~= '' then
  if not redis.call('SET', prefix .. 'unique:' .. ARGV[8], id, 'NX') then return 0 end
end
redis.call('HSET', prefix .. 'job:' .. id, 'queue', queue, 'job', ARGV[4], 'payload', ARGV[5],
  'created_at', ARGV[6], 'request_id', ARGV[7], 'unique_key', ARGV[8], 'attempts', 0)
redis.call('SADD', prefix .. 'queues', queue)
if tonumber(ARGV[9]) > tonumber(ARGV[10]) then
  redis.call('ZADD', prefix .. 'queue:' .. queue .. ':delayed', ARGV[9], id)
else
  redis.call('RPUSH', prefix .. 'queue:' .. queue, id)
end
return 1
"""


_OUTBOX_BATCH = (
    "SELECT id, uuid, queue, job, payload, created_at, request_id, unique_key, available_at"
    " FROM queue_jobs ORDER BY id LIMIT :n"
)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def check_eviction_policy(client: Redis) -> str | None:
    """Warn loudly if Redis may evict keys: evicted queue keys are lost jobs."""
    try:
        policy = _text(client.config_get("maxmemory-policy").get("maxmemory-policy", "unknown"))
    except RedisError as exc:
        log.warning("redis_eviction_policy_unknown", error=str(exc), hint="set maxmemory-policy noeviction")
        return None
    if policy not in SAFE_EVICTION_POLICIES:
        log.critical(
            "redis_may_evict_queued_jobs",
            maxmemory_policy=policy,
            hint="queued jobs can be silently dropped under memory pressure; set maxmemory-policy noeviction",
        )
    return policy


class RedisDriver:
    name = "redis"

    def __init__(
        self, db: Database, client: Redis, *, retry_after: float, prefix: str, clock: Clock = time.time
    ) -> None:
        self.db = db
        self.client = client
        self.retry_after = retry_after
        self.prefix = prefix
        self.clock = clock
        self._reserve = client.register_script(_RESERVE)
        self._settle = client.register_script(_SETTLE)
        self._push = client.register_script(_PUSH)
        lock = " FOR UPDATE SKIP LOCKED" if db.engine.dialect.name == "postgresql" else ""
        self._outbox_batch = text(_OUTBOX_BATCH + lock)

    @classmethod
    def from_settings(cls, settings: Settings, db: Database) -> RedisDriver:
        client = create_redis(settings)
        if client is None:
            raise ValueError("the redis queue driver needs BOURSE_REDIS_URL")
        return cls(db, client, retry_after=settings.queue_retry_after_seconds, prefix=settings.queue_redis_prefix)

    def check(self) -> str | None:
        return check_eviction_policy(self.client)

    def reserve(self, queues: Sequence[str], *, acknowledge: Reserved | None = None) -> Reserved | None:
        """One script, one round trip: acknowledge the finished job, then reserve the next.

        The acknowledgement comes first, inside the same atomic script, so the
        reservation still takes from the first non-empty queue as it is then.
        """
        token = uuid.uuid4().hex
        now = self.clock()
        done = ["", ""] if acknowledge is None else [acknowledge.id, acknowledge.token]
        found = self._reserve(args=[now, now + self.retry_after, token, self.prefix, *done, *queues])
        if not found:
            return None
        items = [_text(v) for v in found]
        fields = dict(zip(items[::2], items[1::2], strict=True))
        return Reserved(
            id=fields["id"],
            queue=fields["queue"],
            job=fields["job"],
            payload=fields["payload"],
            attempts=int(fields["attempts"]),
            created_at=float(fields["created_at"]),
            request_id=fields.get("request_id") or None,
            unique_key=fields.get("unique_key") or None,
            token=token,
        )

    def acknowledge(self, job: Reserved) -> None:
        self._settle(args=[self.prefix, job.id, job.token, "ack", 0, 0, 0])

    def next_available(self, queues: Sequence[str]) -> float | None:
        pipe = self.client.pipeline(transaction=False)
        for queue in queues:
            base = f"{self.prefix}queue:{queue}"
            pipe.zrange(f"{base}:delayed", 0, 0, withscores=True)
            pipe.zrange(f"{base}:reserved", 0, 0, withscores=True)
        due = [float(score) for first in pipe.execute() for _, score in first]
        return min(due, default=None)

    def release(self, job: Reserved, delay: float, *, uncount: bool = False) -> None:
        now = self.clock()
        released = self._settle(args=[self.prefix, job.id, job.token, "release", now + delay, 1 if uncount else 0, now])
        if released and self.db.engine.dialect.name == "postgresql":
            # Idle workers look again, and wait for the job's new time if it is the next due.
            with self.db.engine.begin() as conn:
                notify(conn)

    def fail(self, job: Reserved, exception: str, traceback: str) -> None:
        # The failed row first: a crash in between leaves the job reserved, to run again.
        if self.client.hget(f"{self.prefix}job:{job.id}", "token") != job.token.encode():
            return
        with self.db.engine.begin() as conn:
            conn.execute(insert(FailedJob).values(**failed_row(job, exception, traceback, self.clock())))
        self.acknowledge(job)

    def relay(self) -> int:
        """Move a batch of committed ``queue_jobs`` rows (the outbox) into Redis.

        Rows are locked (``SKIP LOCKED`` on PostgreSQL) so concurrent relays share
        the work. Each push is idempotent thanks to the ``relayed:<id>`` marker,
        so a crash between the pushes and the delete pushes nothing twice.
        """
        with self.db.engine.begin() as conn:
            rows = conn.execute(self._outbox_batch, {"n": RELAY_BATCH}).all()
            if not rows:
                return 0
            now = self.clock()
            pipe = self.client.pipeline(transaction=False)
            for row in rows:
                self._push(
                    args=[
                        self.prefix,
                        row.uuid,
                        row.queue,
                        row.job,
                        row.payload,
                        repr(row.created_at),
                        row.request_id or "",
                        row.unique_key or "",
                        repr(row.available_at),
                        now,
                        RELAYED_MARKER_SECONDS,
                    ],
                    client=pipe,
                )
            pipe.execute()
            ids = [row.id for row in rows]
            conn.execute(
                text("DELETE FROM queue_jobs WHERE id IN :ids").bindparams(bindparam("ids", expanding=True)),
                {"ids": ids},
            )
            # A worker woken by the enqueue whose relay found these rows locked waits
            # again: this wakes it once they are in Redis.
            notify(conn)
        return len(rows)

    def depths(self, queues: Sequence[str]) -> list[QueueDepth]:
        now = self.clock()
        with self.db.engine.connect().execution_options(**{SQLITE_BEGIN_OPTION: "DEFERRED"}) as conn:
            outbox = read_depths(conn, now)
        known = sorted(_text(q) for q in self.client.smembers(f"{self.prefix}queues"))
        names = list(dict.fromkeys([*queues, *known, *sorted(outbox)]))
        pipe = self.client.pipeline(transaction=False)
        for queue in names:
            base = f"{self.prefix}queue:{queue}"
            pipe.llen(base)
            pipe.zcard(f"{base}:delayed")
            pipe.zcard(f"{base}:reserved")
            pipe.lindex(base, 0)
        raw = pipe.execute()
        heads = [raw[i * 4 + 3] for i in range(len(names))]
        created = self.client.pipeline(transaction=False)
        for head in heads:
            created.hget(f"{self.prefix}job:{_text(head)}" if head else f"{self.prefix}job:-", "created_at")
        created_at = created.execute()
        result: list[QueueDepth] = []
        for i, queue in enumerate(names):
            ready, delayed, reserved = int(raw[i * 4]), int(raw[i * 4 + 1]), int(raw[i * 4 + 2])
            ages = [now - float(created_at[i])] if created_at[i] is not None else []
            pending = outbox.get(queue)
            if pending is not None:
                # Committed but not yet relayed: waiting as much as a ready job is.
                ready += pending.ready
                delayed += pending.delayed
                if pending.ready:
                    ages.append(pending.oldest_age_seconds)
            result.append(QueueDepth(queue, ready, delayed, reserved, max([0.0, *ages])))
        return result

    def flush_keys(self) -> None:
        """Delete every key under the prefix (tests and benchmarks)."""
        cursor = 0
        while True:
            cursor, keys = self.client.scan(cursor, match=f"{self.prefix}*", count=1000)
            if keys:
                self.client.delete(*keys)
            if cursor == 0:
                return

    def close(self) -> None:
        self.client.close()
