"""Jobs in Redis: one queue shared by workers on any number of machines.

Selected by a URL: ``redis://[:password@]host:port/db[?prefix=name&lease=seconds]`` (``rediss://``
for TLS).
Every key starts with the prefix (default ``queuectl``), so one Redis can hold several queues::

    P:job:<id>            hash: data (the job's JSON), state, owner, prio, member
    P:ids                 zset (all scores 0): every id, for prefix searches by ZRANGEBYLEX
    P:state:<state>       zset (scores 0) of members "<seq:020d>|<id>": each state, in enqueue order
    P:runnable            zset: due pending/failed jobs, score -priority, so (priority desc, seq)
    P:delayed             zset: pending/failed jobs not yet due, score due time; a claim promotes them
    P:counts              hash: jobs per state, changed in the same script as the jobs
    P:metrics             string: the aggregates of core/metrics.py, as JSON
    P:owner:<owner>       hash (host, pid, pgid) with a TTL: the owner's heartbeat lease
    P:notes               hash: owner -> the same as JSON, kept past the lease for the recoverer
    P:holders             set: owners that hold processing jobs;  P:owned:<owner>: their job ids
    P:manager:<id>        hash (info, stop) with a TTL: a running `start`;  P:managers: their ids
    P:stop                string: {"at": time, "force": bool} of the latest `queuectl stop`
    P:wake                list: wake-up tokens that idle workers BLPOP
    P:config  P:unique  P:deps:<id>  P:cancels  P:rate  P:claimtok:<token>

Every state change is one Lua script, so it happens whole or not at all, and counts, indexes and
metrics change with it. Scripts build key names from the prefix (a standalone Redis or a
replicated primary; Redis Cluster is not supported).

Liveness is a lease, not a pid: a worker refreshes ``P:owner:<owner>`` from a daemon thread; when
its process or machine dies the key expires, and any manager on any machine hands its jobs back.
Transient connection errors (a Redis restart, a failover) are retried with backoff and logged
once; a worker idles through an outage instead of crashing. No message carries the password.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import stat
import tempfile
import threading
import time
import urllib.parse
import uuid
from typing import Any, Callable, Iterable, Iterator

from .. import metrics
from ..errors import ConflictError, DuplicateJobError, StorageError
from ..job import Job, JobState
from ..storage import ManagerInfo, Storage
from ..utils.proc import end_orphan_group, kill_group, marked_session, run_marks

try:
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry
except ImportError:  # get_storage reports it with the install hint; SecretURL works without it
    redis = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

HOST_ENV = "QUEUECTL_HOST_ID"
DEFAULT_PREFIX = "queuectl"
DEFAULT_PORT = 6379
# A worker (or manager) that has not refreshed its lease for this long is dead: its jobs are
# recovered by any manager. Long enough to ride out a GC pause or a slow network, short enough
# that a dead machine's jobs come back within seconds. A job is recovered at most the lease +
# RECOVER_INTERVAL (1 s) after its worker died. The URL's `lease` sets it per process (each
# owner's key carries its own expiry, so processes with different leases can share a queue).
LEASE_SECONDS = 10
LEASE_RANGE = (2, 3600)
# Leases are refreshed this often (a quarter of a shorter lease): four refreshes may fail in a
# row before a live owner expires.
LEASE_REFRESH = 2.0
# Socket timeouts: a Redis that does not answer is an outage, not a hang.
CONNECT_TIMEOUT = 3.0
SOCKET_TIMEOUT = 5.0
# An idle worker blocks on the wake-up list at most this long per call (below SOCKET_TIMEOUT).
MAX_BLOCK = 4.0
# Wake-up tokens kept at most; a few per idle worker are plenty, and the list cannot grow.
MAX_WAKE = 64
# How long an operation retries a lost connection before it fails with a StorageError: short for
# a CLI command (it tells the user), long for a worker or manager (it rides out a Redis restart).
CLI_PATIENCE = 2.0
SERVICE_PATIENCE = 30.0
# Reconnect delays during an outage grow from the first to the last of these, doubling.
BACKOFF_MIN, BACKOFF_MAX = 0.1, 2.0
# Due jobs moved from the delayed set to the runnable set per claim (bounds one script's work).
PROMOTE_BATCH = 1000
# A claim token lets a claim whose reply was lost return the same job when it is retried (after
# an outage of up to this long); the owner's next claim deletes it once the reply has arrived.
CLAIM_TOKEN_TTL = 3600
# Grace between TERM and KILL when the command of a dead worker is ended.
ORPHAN_KILL_GRACE = 1.0
# Jobs fetched per round trip when listing.
FETCH_BATCH = 500
# Optimistic retries of the metrics document before an update gives up (never seen in practice).
METRICS_TRIES = 200

RUNNABLE = (JobState.PENDING, JobState.FAILED)

# -- Lua ----------------------------------------------------------------------------------------
# Shared helpers: index a job under its state, or remove it from the indexes of its state.
_LUA_PLACE = """
local function place(p, id, state, prio, member, due, owner, now)
  redis.call('ZADD', p .. 'state:' .. state, 0, member)
  if state == 'pending' or state == 'failed' then
    if tonumber(due) <= now then
      redis.call('ZADD', p .. 'runnable', -tonumber(prio), member)
    else
      redis.call('ZADD', p .. 'delayed', due, member)
    end
  elseif state == 'processing' then
    redis.call('SADD', p .. 'owned:' .. owner, id)
    redis.call('SADD', p .. 'holders', owner)
  end
end
local function unplace(p, id, state, member, owner)
  redis.call('ZREM', p .. 'state:' .. state, member)
  if state == 'pending' or state == 'failed' then
    redis.call('ZREM', p .. 'runnable', member)
    redis.call('ZREM', p .. 'delayed', member)
  elseif state == 'processing' and owner then
    redis.call('SREM', p .. 'owned:' .. owner, id)
  end
end
local function id_of(member)
  return string.sub(member, string.find(member, '|', 1, true) + 1)
end
"""

# ARGV: prefix, now, then per job: id, data, state, prio, member, due, owner.
# All or nothing; a job already stored with the very same data is a retry that landed: skipped.
_LUA_ADD = _LUA_PLACE + """
local p, now = ARGV[1], tonumber(ARGV[2])
local seen = {}
for b = 3, #ARGV, 7 do
  local id = ARGV[b]
  if seen[id] then return {'dup', id} end
  seen[id] = true
  local cur = redis.call('HGET', p .. 'job:' .. id, 'data')
  if cur and cur ~= ARGV[b + 1] then return {'dup', id} end
end
for b = 3, #ARGV, 7 do
  local id, data, state, prio, member, due, owner =
    ARGV[b], ARGV[b + 1], ARGV[b + 2], ARGV[b + 3], ARGV[b + 4], ARGV[b + 5], ARGV[b + 6]
  local key = p .. 'job:' .. id
  if redis.call('EXISTS', key) == 0 then
    redis.call('HSET', key, 'data', data, 'state', state, 'prio', prio, 'member', member)
    if state == 'processing' then redis.call('HSET', key, 'owner', owner) end
    redis.call('ZADD', p .. 'ids', 0, id)
    place(p, id, state, prio, member, due, owner, now)
    redis.call('HINCRBY', p .. 'counts', state, 1)
  end
end
return {'ok'}
"""

# ARGV: prefix, owner, now, token, promote batch, token TTL, the owner's previous token (its reply
# arrived: forget it). Promotes due delayed jobs, then takes the first runnable one.
# Returns {id, data} or nil.
_LUA_CLAIM = _LUA_PLACE + """
local p, owner, now, token = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
if ARGV[7] ~= '' then redis.call('DEL', p .. 'claimtok:' .. ARGV[7]) end
local tokkey = p .. 'claimtok:' .. token
local prev = redis.call('GET', tokkey)
if prev then  -- this claim was made before and its reply lost: hand over the same job
  local h = redis.call('HMGET', p .. 'job:' .. prev, 'state', 'owner', 'data')
  if h[1] == 'processing' and h[2] == owner then return {prev, h[3]} end
  return nil
end
local due = redis.call('ZRANGEBYSCORE', p .. 'delayed', '-inf', now, 'LIMIT', 0, tonumber(ARGV[5]))
for _, m in ipairs(due) do
  redis.call('ZREM', p .. 'delayed', m)
  local prio = redis.call('HGET', p .. 'job:' .. id_of(m), 'prio')
  if prio then redis.call('ZADD', p .. 'runnable', -tonumber(prio), m) end
end
for _ = 1, 100 do
  local first = redis.call('ZRANGE', p .. 'runnable', 0, 0)
  if #first == 0 then return nil end
  local m = first[1]
  local id = id_of(m)
  local key = p .. 'job:' .. id
  redis.call('ZREM', p .. 'runnable', m)
  local h = redis.call('HMGET', key, 'state', 'data', 'member')
  if (h[1] == 'pending' or h[1] == 'failed') and h[3] == m then
    redis.call('ZREM', p .. 'state:' .. h[1], m)
    redis.call('HSET', key, 'state', 'processing', 'owner', owner)
    place(p, id, 'processing', 0, m, 0, owner, 0)
    redis.call('HINCRBY', p .. 'counts', h[1], -1)
    redis.call('HINCRBY', p .. 'counts', 'processing', 1)
    redis.call('SET', tokkey, id, 'EX', tonumber(ARGV[6]))
    return {id, h[2]}
  end
end
return nil
"""

# ARGV: prefix, id, old state, old owner, data, new state, new owner, prio, member, due, now,
#       owner that must have no lease ('' = none), metrics mode ('1' = CAS), expected, new.
_LUA_UPDATE = _LUA_PLACE + """
local p, id = ARGV[1], ARGV[2]
local old_state, old_owner, data, state, owner = ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7]
local prio, member, due, now = ARGV[8], ARGV[9], ARGV[10], tonumber(ARGV[11])
local key = p .. 'job:' .. id
local cur = redis.call('HMGET', key, 'state', 'owner', 'data', 'member')
if not cur[1] then return 'conflict' end
if cur[3] == data and cur[1] == state then return 'ok' end  -- a retry of a change that landed
if cur[1] ~= old_state then return 'conflict' end
if old_state == 'processing' and cur[2] ~= old_owner then return 'conflict' end
if ARGV[12] ~= '' and redis.call('EXISTS', p .. 'owner:' .. ARGV[12]) == 1 then return 'alive' end
if ARGV[13] == '1' then
  local agg = redis.call('GET', p .. 'metrics') or ''
  if agg ~= ARGV[14] then return 'metrics' end
  redis.call('SET', p .. 'metrics', ARGV[15])
end
unplace(p, id, cur[1], cur[4], cur[2])
redis.call('HSET', key, 'data', data, 'state', state, 'prio', prio, 'member', member)
if state == 'processing' then
  redis.call('HSET', key, 'owner', owner)
else
  redis.call('HDEL', key, 'owner')
end
place(p, id, state, prio, member, due, owner, now)
if cur[1] ~= state then
  redis.call('HINCRBY', p .. 'counts', cur[1], -1)
  redis.call('HINCRBY', p .. 'counts', state, 1)
end
if (state == 'pending' or state == 'failed') and tonumber(due) <= now then
  redis.call('RPUSH', p .. 'wake', '1')
  redis.call('LTRIM', p .. 'wake', 0, tonumber(ARGV[16]) - 1)
end
return 'ok'
"""

# ARGV: prefix, id, expected state, retry ('1': a missing job is a delete that landed).
_LUA_DELETE = _LUA_PLACE + """
local p, id = ARGV[1], ARGV[2]
local key = p .. 'job:' .. id
local cur = redis.call('HMGET', key, 'state', 'owner', 'member')
if not cur[1] then
  if ARGV[4] == '1' then return 'ok' end
  return 'conflict'
end
if cur[1] ~= ARGV[3] or cur[1] == 'processing' then return 'conflict' end
unplace(p, id, cur[1], cur[3], cur[2])
redis.call('DEL', key)
redis.call('ZREM', p .. 'ids', id)
redis.call('SREM', p .. 'cancels', id)
redis.call('HINCRBY', p .. 'counts', cur[1], -1)
return 'ok'
"""

# ARGV: prefix, owner, note to keep if it still holds jobs. Ends a lease on purpose.
_LUA_UNREGISTER = """
local p, owner = ARGV[1], ARGV[2]
redis.call('DEL', p .. 'owner:' .. owner)
if redis.call('SCARD', p .. 'owned:' .. owner) == 0 then
  redis.call('HDEL', p .. 'notes', owner)
  redis.call('SREM', p .. 'holders', owner)
else
  redis.call('HSET', p .. 'notes', owner, ARGV[3])
end
return 1
"""

# ARGV: prefix, owner. Forgets a dead owner once it holds nothing.
_LUA_FORGET = """
local p, owner = ARGV[1], ARGV[2]
if redis.call('EXISTS', p .. 'owner:' .. owner) == 0 and redis.call('SCARD', p .. 'owned:' .. owner) == 0 then
  redis.call('SREM', p .. 'holders', owner)
  redis.call('HDEL', p .. 'notes', owner)
  redis.call('DEL', p .. 'owned:' .. owner)
  return 1
end
return 0
"""

# ARGV: prefix, stop document, mode. The time for stop_requested(since), and a flag on every
# manager listed now, so the stop reaches each of them whatever its clock says.
_LUA_STOP = """
local p = ARGV[1]
redis.call('SET', p .. 'stop', ARGV[2])
for _, id in ipairs(redis.call('SMEMBERS', p .. 'managers')) do
  if redis.call('EXISTS', p .. 'manager:' .. id) == 1 then
    redis.call('HSET', p .. 'manager:' .. id, 'stop', ARGV[3])
  end
end
return 1
"""

# ARGV: prefix, key, job id, expected holder ('' = nobody).
_LUA_RESERVE = """
local cur = redis.call('HGET', ARGV[1] .. 'unique', ARGV[2]) or ''
if cur == ARGV[4] then
  redis.call('HSET', ARGV[1] .. 'unique', ARGV[2], ARGV[3])
  return 1
end
if cur == ARGV[3] then return 1 end  -- a retry of a reservation that landed
return 0
"""

# ARGV: prefix, now, interval. GCRA: P:rate holds the earliest time the next start is allowed.
_LUA_RATE = """
local now, interval = tonumber(ARGV[2]), tonumber(ARGV[3])
local allowed = tonumber(redis.call('GET', ARGV[1] .. 'rate') or '0') or 0
-- (1 us of slack and a wait of at most one interval absorb the rounding of times near 1.7e9)
if allowed > now + 0.000001 then return tostring(math.min(allowed - now, interval)) end
redis.call('SET', ARGV[1] .. 'rate', string.format('%.17g', math.max(allowed, now) + interval))
return '0'
"""

# ARGV: prefix, states... Housekeeping at `start`: exact counts from the indexes, and the
# records of managers and owners that died holding nothing.
_LUA_MAINTAIN = """
local p = ARGV[1]
for i = 2, #ARGV do
  redis.call('HSET', p .. 'counts', ARGV[i], redis.call('ZCARD', p .. 'state:' .. ARGV[i]))
end
for _, id in ipairs(redis.call('SMEMBERS', p .. 'managers')) do
  if redis.call('EXISTS', p .. 'manager:' .. id) == 0 then redis.call('SREM', p .. 'managers', id) end
end
for _, owner in ipairs(redis.call('HKEYS', p .. 'notes')) do
  if redis.call('EXISTS', p .. 'owner:' .. owner) == 0 and redis.call('SISMEMBER', p .. 'holders', owner) == 0 then
    redis.call('HDEL', p .. 'notes', owner)
  end
end
return 1
"""


class SecretURL(str):
    """A Redis URL that prints without its password.

    str(), format() and repr() give the masked form (what `config`, logs and errors show); the
    text itself, which get_storage parses and which crosses to worker processes, keeps it.
    """

    def __str__(self) -> str:
        return mask_url(self)

    def __format__(self, spec: str) -> str:
        return format(mask_url(self), spec)

    def __repr__(self) -> str:
        return repr(mask_url(self))


def mask_url(url: str) -> str:
    """The URL as a user may see it: credentials replaced by ***."""
    try:
        return parse_url(url)["display"]
    except StorageError:
        return "redis://***"


def parse_url(url: str) -> dict[str, Any]:
    """Connection settings from a redis:// or rediss:// URL; StorageError if malformed.

    Messages never quote the URL: it may hold a password.
    """
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port or DEFAULT_PORT
    except ValueError:
        raise StorageError("invalid Redis URL: the port must be a number from 1 to 65535") from None
    if parts.scheme not in ("redis", "rediss"):
        raise StorageError("invalid Redis URL: it must start with redis:// or rediss://")
    host = parts.hostname or "localhost"
    db_text = parts.path.strip("/") or "0"
    if not (db_text.isascii() and db_text.isdigit()):  # isdigit alone takes '³', which int() refuses
        raise StorageError("invalid Redis URL: the database must be a number, as in redis://host:6379/0")
    query = urllib.parse.parse_qs(parts.query, keep_blank_values=True)
    unknown = sorted(set(query) - {"prefix", "lease"})
    if unknown:
        raise StorageError(f"invalid Redis URL: unknown option(s) {', '.join(unknown)} (known: prefix, lease)")
    prefix = query.get("prefix", [DEFAULT_PREFIX])[-1]
    if not prefix or len(prefix) > 64 or not all(c.isalnum() or c in "._-" for c in prefix):
        raise StorageError("invalid Redis URL: prefix must be 1-64 letters, digits, '.', '_' or '-'")
    lease = LEASE_SECONDS
    if "lease" in query:
        text = query["lease"][-1]
        low, high = LEASE_RANGE
        if not (text.isascii() and text.isdigit() and low <= int(text) <= high):
            raise StorageError(f"invalid Redis URL: lease must be a whole number of seconds from {low} to {high}")
        lease = int(text)
    shown_host = f"[{host}]" if ":" in host else host
    display = f"{parts.scheme}://{'***@' if '@' in parts.netloc else ''}{shown_host}:{port}/{int(db_text)}"
    options = [f"prefix={prefix}"] * (prefix != DEFAULT_PREFIX) + [f"lease={lease}"] * (lease != LEASE_SECONDS)
    if options:
        display += "?" + "&".join(options)
    password = urllib.parse.unquote(parts.password) if parts.password is not None else None
    username = urllib.parse.unquote(parts.username) if parts.username else None
    return {"host": host, "port": port, "db": int(db_text), "username": username, "password": password,
            "ssl": parts.scheme == "rediss", "prefix": prefix + ":", "lease": lease, "display": display,
            "where": f"{shown_host}:{port}"}


def _member(job: Job) -> str:
    """Index member: enqueue order first, then the id (zero-padded so text order is seq order)."""
    return f"{max(0, int(job.seq)):020d}|{job.id}"


def _num(value: float) -> str:
    return repr(float(value))


class _Lease:
    """A key kept alive by a daemon thread: written now, refreshed every `_lease_refresh` seconds.

    The thread never dies of a Redis error: it logs the outage once (through the storage) and
    retries with backoff, so a live process gets its lease back as soon as Redis does.
    """

    def __init__(self, storage: RedisStorage, name: str, write: Callable[[], None]):
        self.storage = storage
        self.name = name
        self._write = write
        self._lock = threading.Lock()
        self._halt = threading.Event()
        self.stopped = False
        self.confirmed = False
        self._thread = threading.Thread(target=self._run, name=f"queuectl-lease-{name}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def refresh(self) -> None:
        """Writes the lease now; redis errors propagate to the caller."""
        with self._lock:
            if self.stopped:
                return
            self._write()
            self.confirmed = True

    def stop(self) -> None:
        self._halt.set()
        with self._lock:  # waits for a write in progress, so none lands after the caller's DEL
            self.stopped = True

    def _run(self) -> None:
        every = self.storage._lease_refresh
        delay, failures, complained = every, 0, False
        while not self._halt.wait(delay):
            try:
                self.refresh()
            except Exception as e:
                if _is_transient(e):  # Redis restarting, a network blip: back off and retry
                    self.storage._lost(e)
                    failures += 1
                    delay = min(BACKOFF_MIN * 2 ** failures, every)
                    continue
                if not complained:  # a password rotated under us, a full Redis: say so, keep trying
                    log.warning("Cannot refresh the lease of %s at Redis %s: %s", self.name,
                                self.storage._where, _describe(e))
                    complained = True
                delay = every
                continue
            self.storage._back()
            delay, failures, complained = every, 0, False


class RedisStorage(Storage):
    """The Storage contract on Redis. See the module docstring for the key layout."""

    def __init__(self, url: str):
        if redis is None:
            raise StorageError("the Redis backend needs redis-py: install the redis extra: pip install -e '.[redis]'")
        cfg = parse_url(url)
        self.display = cfg["display"]
        self._where = cfg["where"]
        self._p = cfg["prefix"]
        self._lease_seconds: int = cfg["lease"]
        self._lease_refresh = min(LEASE_REFRESH, self._lease_seconds / 4)
        # For this long after Redis restarted nothing is recovered, so that live owners renew
        # leases that expired while it was down; owners with the default lease refresh (and
        # retry) at most LEASE_REFRESH apart, whatever our own lease.
        self._restart_grace = max(self._lease_seconds, 2 * LEASE_REFRESH)
        self._host = os.environ.get(HOST_ENV) or socket.gethostname()
        self._r = redis.Redis(
            host=cfg["host"], port=cfg["port"], db=cfg["db"], username=cfg["username"],
            password=cfg["password"], ssl=cfg["ssl"], decode_responses=True,
            socket_timeout=SOCKET_TIMEOUT, socket_connect_timeout=CONNECT_TIMEOUT,
            retry=Retry(NoBackoff(), 0))  # retries are ours: only idempotent steps are repeated
        self._scripts = {name: self._r.register_script(src) for name, src in (
            ("add", _LUA_ADD), ("claim", _LUA_CLAIM), ("update", _LUA_UPDATE), ("delete", _LUA_DELETE),
            ("unregister", _LUA_UNREGISTER), ("forget", _LUA_FORGET), ("stop", _LUA_STOP),
            ("reserve", _LUA_RESERVE), ("rate", _LUA_RATE), ("maintain", _LUA_MAINTAIN))}
        self._owners: dict[str, _Lease] = {}
        self._managers: dict[str, _Lease] = {}
        self._pgids: dict[str, int] = {}
        self._claim_tokens: dict[str, str] = {}  # per owner: the token of a claim not yet answered
        self._acked_tokens: dict[str, str] = {}  # per owner: the token of its last claim, to delete
        self._state_lock = threading.Lock()
        self._down = False
        self._failures = 0
        self._retry_at = 0.0
        self._warned: set[str] = set()

    # -- connection health -----------------------------------------------------------------
    def _lost(self, error: Exception) -> None:
        """Notes an outage; the first failure of one is logged, the rest are quiet."""
        with self._state_lock:
            self._failures += 1
            self._retry_at = time.monotonic() + min(BACKOFF_MIN * 2 ** (self._failures - 1), BACKOFF_MAX)
            if self._down:
                return
            self._down = True
        # A worker or manager logs the outage; a CLI command reports it in its one error line.
        level = logging.WARNING if (self._owners or self._managers) else logging.DEBUG
        log.log(level, "Lost the connection to Redis at %s (%s); retrying", self._where, _describe(error))

    def _back(self) -> None:
        if not self._down:
            return
        with self._state_lock:
            was_down, self._down, self._failures, self._retry_at = self._down, False, 0, 0.0
        if was_down:
            level = logging.INFO if (self._owners or self._managers) else logging.DEBUG
            log.log(level, "Reconnected to Redis at %s", self._where)

    def _patience(self) -> float:
        return SERVICE_PATIENCE if (self._owners or self._managers) else CLI_PATIENCE

    def _call(self, fn: Callable[[bool], Any], patience: float | None = None) -> Any:
        """Runs fn(retry) and retries lost connections with backoff; other errors become StorageError.

        Only for idempotent steps (every script here checks whether its change already landed).
        """
        deadline = time.monotonic() + (self._patience() if patience is None else patience)
        delay, attempt = BACKOFF_MIN, 0
        while True:
            try:
                result = fn(attempt > 0)
            except redis.AuthenticationError as e:
                raise self._error(e) from None
            except _transient_errors() as e:
                self._lost(e)
                if time.monotonic() + delay > deadline:
                    raise StorageError(f"cannot reach Redis at {self._where} ({_describe(e)})") from None
                time.sleep(delay)
                delay, attempt = min(delay * 2, BACKOFF_MAX), attempt + 1
                continue
            except redis.RedisError as e:
                raise self._error(e) from None
            self._back()
            return result

    def _soft(self, fn: Callable[[], Any], default: Any) -> Any:
        """For steps a worker or manager repeats anyway: during an outage they answer `default`.

        No retry and no wait: the step is skipped until the next reconnect attempt is due.
        """
        if self._down and time.monotonic() < self._retry_at:
            return default
        try:
            result = fn()
        except redis.AuthenticationError as e:
            raise self._error(e) from None
        except _transient_errors() as e:
            self._lost(e)
            return default
        except redis.RedisError as e:
            raise self._error(e) from None
        self._back()
        return result

    def _error(self, e: Exception) -> StorageError:
        """A StorageError that names host and port only (a redis message never holds our password)."""
        if isinstance(e, redis.AuthenticationError) or _auth_failure(e):
            return StorageError(f"Redis at {self._where} refused the credentials (wrong or missing password)")
        if isinstance(e, redis.ResponseError):
            first = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
            return StorageError(f"Redis at {self._where} refused a command: {first}")
        return StorageError(f"Redis at {self._where} failed: {_describe(e)}")

    def _key(self, *parts: str) -> str:
        return self._p + ":".join(parts)

    # -- store ---------------------------------------------------------------------------
    def exists(self) -> bool:
        return bool(self._call(lambda _r: self._r.exists(self._key("counts"), self._key("config"),
                                                         self._key("ids"))))

    def close(self) -> None:
        for owner in list(self._owners):
            self.unregister_owner(owner)
        for manager_id in list(self._managers):
            self.unregister_manager(manager_id)
        try:
            self._r.close()
        except Exception:  # closing must not fail
            pass

    # -- settings ------------------------------------------------------------------------
    def load_config(self) -> dict[str, Any]:
        raw = self._call(lambda _r: self._r.get(self._key("config")))
        if raw is None:
            return {}
        try:
            data = json.loads(raw)
        except ValueError:
            data = None
        if not isinstance(data, dict):
            self._warn_once("config", "The config stored in Redis at %s is unreadable; using defaults",
                            self._where)
            return {}
        return data

    def save_config(self, values: dict[str, Any]) -> None:
        text = json.dumps(values)
        self._call(lambda _r: self._r.set(self._key("config"), text))

    # -- jobs ----------------------------------------------------------------------------
    def add(self, job: Job) -> None:
        self.add_many([job])

    def add_many(self, jobs: Iterable[Job]) -> None:
        """All or nothing, in one script; durable as far as Redis persistence goes (see README)."""
        args: list[Any] = [self._p, _num(time.time())]
        for job in jobs:
            args += [job.id, job.to_json().decode(), job.state.value, str(int(job.priority)), _member(job),
                     _num(job.due_at), job.worker_id or ""]
        if len(args) == 2:
            return
        result = self._call(lambda _r: self._scripts["add"](args=args))
        if result[0] == "dup":
            raise DuplicateJobError(f"a job with id '{result[1]}' already exists", result[1])

    def get(self, job_id: str) -> Job | None:
        row = self._call(lambda _r: self._r.hmget(self._key("job", job_id), "state", "owner", "data"))
        return self._job(job_id, *row)

    def _job(self, job_id: str, state: str | None, owner: str | None, data: str | None) -> Job | None:
        if state is None or data is None:
            return None
        try:
            job = Job.from_json(data.encode())
            job.state = JobState(state)  # the indexed state, not the content, is the truth
        except (ValueError, TypeError) as e:
            self._warn_once(f"job:{job_id}", "Job %s in Redis at %s is unreadable (%s); skipped",
                            job_id, self._where, type(e).__name__)
            return None
        if job.state is JobState.PROCESSING:
            job.worker_id = owner
        return job

    def match_ids(self, prefix: str) -> list[str]:
        low, high = ("[" + prefix, "(" + prefix + "\x7f") if prefix else ("-", "+")
        return list(self._call(lambda _r: self._r.zrangebylex(self._key("ids"), low, high)))

    def jobs(self, state: JobState | None = None) -> Iterator[Job]:
        states = (state,) if state else tuple(JobState)

        def members(_retry: bool) -> list[str]:
            pipe = self._r.pipeline(transaction=True)  # one snapshot: a moving job is listed once
            for st in states:
                pipe.zrange(self._key("state", st.value), 0, -1)
            return sorted(m for found in pipe.execute() for m in found)

        ids = [m.partition("|")[2] for m in self._call(members)]
        found: list[Job] = []
        for i in range(0, len(ids), FETCH_BATCH):
            batch = ids[i:i + FETCH_BATCH]

            def fetch(_retry: bool, batch: list[str] = batch) -> list[Any]:
                pipe = self._r.pipeline(transaction=False)
                for job_id in batch:
                    pipe.hmget(self._key("job", job_id), "state", "owner", "data")
                return pipe.execute()

            for job_id, row in zip(batch, self._call(fetch)):
                job = self._job(job_id, *row)
                if job is not None and (state is None or job.state is state):
                    found.append(job)
        return iter(found)

    def counts(self) -> dict[JobState, int]:
        raw = self._call(lambda _r: self._r.hgetall(self._key("counts")))
        counts = {s: 0 for s in JobState}
        for s in JobState:
            try:
                counts[s] = max(0, int(raw.get(s.value, 0)))
            except ValueError:
                pass
        return counts

    def oldest_waiting(self) -> float | None:
        """The first member of the pending index: its name starts with the enqueue time."""
        first = self._call(lambda _r: self._r.zrange(self._key("state", JobState.PENDING.value), 0, 0))
        return int(first[0].partition("|")[0]) / 1e9 if first else None

    def metrics(self) -> dict[str, Any]:
        raw = self._call(lambda _r: self._r.get(self._key("metrics")))
        return metrics.merge_defaults(_loads(raw))

    # -- claim and update ------------------------------------------------------------------
    def claim(self, owner: str, now: float) -> Job | None:
        """One script: promote due jobs, take the first. During an outage: None (the worker idles).

        A claim whose reply is lost is retried with the same token, so it returns the job it
        took instead of leaving it stranded under a live owner.
        """
        lease = self._owners.get(owner)
        if lease is not None and not lease.confirmed:
            self._soft(lease.refresh, None)  # never hold a job without a lease in Redis
            if not lease.confirmed:
                return None
        token = self._claim_tokens.setdefault(owner, uuid.uuid4().hex)
        args = [self._p, owner, _num(now), token, PROMOTE_BATCH, CLAIM_TOKEN_TTL, self._acked_tokens.get(owner, "")]
        missing = object()
        result = self._soft(lambda: self._scripts["claim"](args=args), missing)
        if result is missing:
            return None
        self._claim_tokens.pop(owner, None)
        self._acked_tokens.pop(owner, None)
        if not result:
            return None
        self._acked_tokens[owner] = token
        job = self._job(result[0], "processing", owner, result[1])
        return job

    def update(self, old: Job, new: Job) -> None:
        self._call(lambda _r: self._update(old, new))

    def _update(self, old: Job, new: Job, dead_owner: str = "") -> None:
        """One script; the metrics document is compared-and-set in it (re-folded on a race)."""
        if old.id != new.id:
            raise ValueError("update cannot change a job's id")
        now = time.time()
        probe = metrics.empty()
        metrics.apply(probe, old, new, now)
        touches = probe != metrics.empty()
        base = [self._p, old.id, old.state.value, old.worker_id or "", new.to_json().decode(), new.state.value,
                new.worker_id or "", str(int(new.priority)), _member(new), _num(new.due_at), _num(now), dead_owner]
        for _ in range(METRICS_TRIES):
            if touches:
                raw = self._r.get(self._key("metrics")) or ""
                agg = metrics.merge_defaults(_loads(raw))
                metrics.apply(agg, old, new, now)
                extra = ["1", raw, json.dumps(agg, separators=(",", ":"))]
            else:
                extra = ["0", "", ""]
            result = self._scripts["update"](args=base + extra + [MAX_WAKE])
            if result == "ok":
                return
            if result == "conflict":
                raise ConflictError(f"job {old.id} changed while we worked on it")
            if result == "alive":
                raise ConflictError(f"job {old.id}: its worker renewed its lease")
            time.sleep(0.001)  # 'metrics': another change updated the aggregates first
        raise StorageError(f"job {old.id}: the metrics in Redis at {self._where} kept changing; not updated")

    def delete(self, job: Job) -> None:
        result = self._call(lambda retry: self._scripts["delete"](
            args=[self._p, job.id, job.state.value, "1" if retry else "0"]))
        if result != "ok":
            raise ConflictError(f"job {job.id} changed while we worked on it")
        for attempt in range(1, job.attempts + 2):  # its output, where this host has it
            for path in self.output_paths(job.id, attempt):
                try:
                    os.unlink(path)
                except OSError:
                    pass

    # -- recovery ------------------------------------------------------------------------
    def recover(self, decide: Callable[[Job], Job],
                completed: Callable[[Job, float], Job] | None = None) -> list[Job]:
        """Jobs of owners whose lease is gone, each moved by a compare-and-set that also checks,
        in the same script, that the lease is still gone: of several recoverers one wins a job.
        (`completed` goes unused: this backend holds no result, see `Storage.hold_result`.)

        During an outage, or in the first seconds after Redis restarted (one lease, at least 4 s:
        live workers have not yet renewed leases that expired while it was down), nothing is
        recovered.
        """
        return self._soft(lambda: self._recover(decide), [])

    def _recover(self, decide: Callable[[Job], Job]) -> list[Job]:
        holders = [o for o in self._r.smembers(self._key("holders")) if o not in self._owners]
        if not holders:
            return []
        pipe = self._r.pipeline(transaction=False)
        for owner in holders:
            pipe.exists(self._key("owner", owner))
            pipe.hget(self._key("notes"), owner)
        answers = pipe.execute()
        dead = [(o, _loads(answers[2 * i + 1]) or {}) for i, o in enumerate(holders) if not answers[2 * i]]
        if not dead:
            return []
        restarted = self._redis_uptime() < self._restart_grace
        results: list[Job] = []
        for owner, note in dead:
            if restarted and note and not note.get("gone"):
                continue  # its lease may have expired while Redis was down: give it time to renew
            self._end_orphan_command(owner, note)
            for job_id in sorted(self._r.smembers(self._key("owned", owner))):
                job = self._job(job_id, *self._r.hmget(self._key("job", job_id), "state", "owner", "data"))
                if job is None or job.state is not JobState.PROCESSING or job.worker_id != owner:
                    continue
                self._end_unnoted_command(owner, note, job)
                new = decide(job)
                try:
                    self._update(job, new, dead_owner=owner)
                except ConflictError:
                    continue  # another manager recovered it first, or the owner is back
                results.append(new)
            self._scripts["forget"](args=[self._p, owner])
        return results

    def _redis_uptime(self) -> float:
        try:
            return float(self._r.info("server").get("uptime_in_seconds", self._restart_grace))
        except redis.ResponseError:  # INFO disabled (some hosted Redis): assume it has been up
            return float(self._restart_grace)

    def _end_orphan_command(self, owner: str, note: dict[str, Any]) -> None:
        try:
            pgid = int(note.get("pgid") or 0)
        except (TypeError, ValueError):
            pgid = 0
        if pgid <= 0:
            return
        if note.get("host") == self._host:
            noted_at = note.get("at")
            end_orphan_group(pgid, owner, float(noted_at) if type(noted_at) in (int, float) else None,
                             ORPHAN_KILL_GRACE)
        else:
            # A process group can only be signalled from its own machine: if that machine is
            # alive (the worker alone died), the command may still run there while the job runs
            # again here. At-least-once; a manager on that host would end it.
            self._warn_once(f"orphan:{owner}", "Worker %s died on host %s; its command (process group %s) "
                            "cannot be ended from here and may still be running there", owner,
                            note.get("host"), pgid)

    def _end_unnoted_command(self, owner: str, note: dict[str, Any], job: Job) -> None:
        """A worker that died after recording an attempt's start but before noting its command's
        group: the command, if it started, carries the attempt's marks in its environment."""
        try:
            noted = int(note.get("pgid") or 0) > 0
        except (TypeError, ValueError):
            noted = False
        if noted or note.get("host") != self._host or job.finished_at is not None:
            return  # noted; another machine's; or taken but not started (see orphan_rule)
        pgid = marked_session(run_marks(owner, job.id, job.attempts))
        if pgid:
            log.warning("Ending process group %s left running by dead worker %s", pgid, owner)
            kill_group(pgid, ORPHAN_KILL_GRACE)

    def maintain(self) -> None:
        states = [s.value for s in JobState]
        self._call(lambda _r: self._scripts["maintain"](args=[self._p, *states]))

    # -- owners and managers ---------------------------------------------------------------
    def register_owner(self, owner: str) -> None:
        """Starts the owner's lease. A Redis outage does not fail it: the thread keeps trying,
        and `claim` takes nothing until the lease is in Redis."""
        if owner in self._owners:
            return
        key = self._key("owner", owner)

        def write() -> None:
            # "at": a recoverer tells the noted group from a later process given its number
            info = {"host": self._host, "pid": os.getpid(), "pgid": self._pgids.get(owner) or 0,
                    "at": round(time.time(), 3)}
            pipe = self._r.pipeline(transaction=True)
            pipe.hset(key, mapping=info)
            pipe.expire(key, self._lease_seconds)
            pipe.hset(self._key("notes"), owner, json.dumps(info))
            pipe.execute()

        lease = _Lease(self, owner, write)
        self._owners[owner] = lease
        try:
            self._soft(lease.refresh, None)
        except StorageError:
            del self._owners[owner]
            raise
        lease.start()

    def unregister_owner(self, owner: str) -> None:
        lease = self._owners.pop(owner, None)
        if lease is None:
            return
        lease.stop()
        self._pgids.pop(owner, None)
        self._claim_tokens.pop(owner, None)
        self._acked_tokens.pop(owner, None)
        note = json.dumps({"host": self._host, "pid": os.getpid(), "pgid": 0, "gone": True})
        try:
            self._call(lambda _r: self._scripts["unregister"](args=[self._p, owner, note]), patience=1.0)
        except StorageError:
            pass  # the lease expires by itself

    def note_running(self, owner: str, pgid: int | None, defer: bool = False) -> None:
        """Keeps the pgid and host in the owner's lease and notes: a recoverer on the same host
        ends that process group; one on another host cannot (see _end_orphan_command)."""
        lease = self._owners.get(owner)
        if lease is None:
            return
        self._pgids[owner] = pgid or 0
        self._soft(lease.refresh, None)

    def register_manager(self, info: ManagerInfo) -> None:
        key = self._key("manager", info.id)
        doc = json.dumps({"id": info.id, "pid": info.pid, "workers": info.workers, "started_at": info.started_at,
                          "host": info.host, "storage": info.storage, "extra": info.extra})

        def write() -> None:
            pipe = self._r.pipeline(transaction=True)
            pipe.hset(key, "info", doc)
            pipe.expire(key, self._lease_seconds)
            pipe.sadd(self._key("managers"), info.id)
            pipe.execute()

        lease = _Lease(self, f"manager {info.id}", write)
        self._call(lambda _r: lease.refresh())
        self._managers[info.id] = lease
        lease.start()

    def unregister_manager(self, manager_id: str) -> None:
        lease = self._managers.pop(manager_id, None)
        if lease is not None:
            lease.stop()

        def remove(_retry: bool) -> None:
            pipe = self._r.pipeline(transaction=True)
            pipe.delete(self._key("manager", manager_id))
            pipe.srem(self._key("managers"), manager_id)
            pipe.execute()

        try:
            self._call(remove, patience=1.0)
        except StorageError:
            pass  # its lease expires by itself

    def managers(self) -> list[ManagerInfo]:
        """Managers whose lease is alive: a killed one drops out within its lease."""
        def read(_retry: bool) -> list[Any]:
            ids = sorted(self._r.smembers(self._key("managers")))
            pipe = self._r.pipeline(transaction=False)
            for mid in ids:
                pipe.hget(self._key("manager", mid), "info")
            return pipe.execute()

        found = []
        for raw in self._call(read):
            data = _loads(raw)
            if isinstance(data, dict):
                try:
                    found.append(ManagerInfo(**data))
                except TypeError:
                    continue
        return sorted(found, key=lambda m: m.started_at)

    def request_stop(self, force: bool = False) -> None:
        doc = json.dumps({"at": time.time(), "force": force})
        mode = "force" if force else "graceful"
        self._call(lambda _r: self._scripts["stop"](args=[self._p, doc, mode]))

    def stop_requested(self, since: float) -> str | None:
        """A flag on one of our managers (set by `stop` on every host), or a stop at/after `since`.
        During an outage: None (the manager goes on; Ctrl+C still works)."""
        def read() -> list[Any]:
            pipe = self._r.pipeline(transaction=False)
            pipe.get(self._key("stop"))
            for mid in self._managers:
                pipe.hget(self._key("manager", mid), "stop")
            return pipe.execute()

        answers = self._soft(read, None)
        if not answers:
            return None
        flags = [a for a in answers[1:] if a]
        if flags:
            return "force" if "force" in flags else "graceful"
        data = _loads(answers[0])
        try:
            if isinstance(data, dict) and float(data["at"]) >= since:
                return "force" if data.get("force") else "graceful"
        except (KeyError, TypeError, ValueError):
            pass
        return None

    # -- scheduling aids -------------------------------------------------------------------
    def unique_holder(self, key: str) -> str | None:
        return self._call(lambda _r: self._r.hget(self._key("unique"), key)) or None

    def reserve_unique(self, key: str, job_id: str, expected: str | None) -> bool:
        return bool(self._call(lambda _r: self._scripts["reserve"](args=[self._p, key, job_id, expected or ""])))

    def add_dependant(self, dependency: str, job_id: str) -> None:
        self._call(lambda _r: self._r.sadd(self._key("deps", dependency), job_id))

    def dependants(self, dependency: str) -> list[str]:
        return sorted(self._call(lambda _r: self._r.smembers(self._key("deps", dependency))))

    def request_cancel(self, job_id: str) -> None:
        self._call(lambda _r: self._r.sadd(self._key("cancels"), job_id))

    def cancel_requested(self, job_id: str) -> bool:
        """One SISMEMBER; False during an outage (a running job is not cut short by one)."""
        return bool(self._soft(lambda: self._r.sismember(self._key("cancels"), job_id), False))

    def clear_cancel(self, job_id: str) -> None:
        self._call(lambda _r: self._r.srem(self._key("cancels"), job_id))

    def take_start_slot(self, rate: float, now: float | None = None) -> float:
        """Shared GCRA in one script. During an outage a job may start (0.0): better than none."""
        if rate <= 0:
            return 0.0
        if now is None:
            now = time.time()  # the script runs as it arrives: no wait between this and the slot
        args = [self._p, _num(now), _num(1.0 / rate)]
        return max(0.0, float(self._soft(lambda: self._scripts["rate"](args=args), "0")))

    # -- output ----------------------------------------------------------------------------
    def output_paths(self, job_id: str, attempt: int) -> tuple[str, str]:
        """Local files: output stays on the host of the worker that ran the attempt (Redis holds
        only jobs and their last error), so `queuectl logs` finds it on that host only.

        A private folder per store under the temp dir, the same for every process of this user,
        or the base class's one-off temp folder if that path is not safely ours.
        """
        folder = self._output_folder()
        if folder is None:
            return super().output_paths(job_id, attempt)
        base = os.path.join(folder, f"{job_id}.{attempt}")
        return base + ".out", base + ".err"

    def _output_folder(self) -> str | None:
        if not hasattr(self, "_output_folder_path"):
            user = os.getuid() if hasattr(os, "getuid") else "user"
            top = os.path.join(tempfile.gettempdir(), f"queuectl-{user}")
            folder = os.path.join(top, "redis-" + hashlib.sha256(self.display.encode()).hexdigest()[:16])
            try:
                # Level by level: makedirs() gives its mode to the leaf only, so a top folder it
                # created was readable by all, refused below, and every process then wrote its
                # output to a one-off folder where `queuectl logs` never found it.
                for path in (top, folder):
                    try:
                        os.mkdir(path, 0o700)
                    except FileExistsError:
                        _tighten(path)
                safe = all(_private_dir(path) for path in (top, folder))
            except OSError:
                safe = False
            self._output_folder_path = folder if safe else None
        return self._output_folder_path

    # -- wake-ups ------------------------------------------------------------------------
    def wait_for_work(self, owner: str, timeout: float) -> None:
        """BLPOP on the wake-up list: an enqueue on any host wakes an idle worker at once."""
        if timeout <= 0:
            return
        blocked = self._soft(lambda: self._r.blpop([self._key("wake")], timeout=min(timeout, MAX_BLOCK)), False)
        if blocked is False:
            time.sleep(timeout)  # Redis is unreachable: wait as a poller would

    def notify_work(self, count: int = 1) -> None:
        """Pushes up to `count` tokens; the list is trimmed to MAX_WAKE so it cannot grow."""
        n = max(1, min(count, MAX_WAKE))

        def push() -> None:
            pipe = self._r.pipeline(transaction=True)
            pipe.rpush(self._key("wake"), *(["1"] * n))
            pipe.ltrim(self._key("wake"), 0, MAX_WAKE - 1)
            pipe.execute()

        self._soft(push, None)

    # -- helpers -------------------------------------------------------------------------
    def _warn_once(self, what: str, message: str, *args: Any) -> None:
        if what not in self._warned:
            self._warned.add(what)
            log.warning(message, *args)


def _is_transient(e: BaseException) -> bool:
    return isinstance(e, _transient_errors()) and not isinstance(e, redis.AuthenticationError)


def _transient_errors() -> tuple[type[BaseException], ...]:
    """Errors that a retry may cure: a lost or refused connection, a timeout, Redis loading its
    data after a restart, a replica not yet promoted. Not a wrong password."""
    return (redis.ConnectionError, redis.TimeoutError, redis.exceptions.ReadOnlyError)


def _auth_failure(e: Exception) -> bool:
    text = str(e)
    return text.startswith(("NOAUTH", "WRONGPASS")) or "AUTH" in text.split(" ", 1)[0]


def _describe(e: Exception) -> str:
    """A short reason for an error, from its type and errno only (never its arguments)."""
    if redis is not None:
        if isinstance(e, redis.AuthenticationError):
            return "authentication failed"
        if isinstance(e, redis.exceptions.BusyLoadingError):
            return "Redis is loading its data"
        if isinstance(e, redis.TimeoutError):
            return "timed out"
        if isinstance(e, redis.exceptions.ReadOnlyError):
            return "connected to a read-only replica"
    text = str(e).lower()
    if "refused" in text:
        return "connection refused"
    if "name or service not known" in text or "nodename nor servname" in text or "getaddrinfo" in text:
        return "unknown host"
    if "timed out" in text or "timeout" in text:
        return "timed out"
    if "closed" in text or "reset" in text or "broken pipe" in text:
        return "connection lost"
    return type(e).__name__


def _tighten(path: str) -> None:
    """Makes a folder of ours private if it is not (an earlier version left its top folder open).

    Anything else, a symlink or another user's folder, is left as it is, for _private_dir to refuse.
    """
    st = os.lstat(path)
    if stat.S_ISDIR(st.st_mode) and hasattr(os, "geteuid") and st.st_uid == os.geteuid() and st.st_mode & 0o077:
        os.chmod(path, 0o700)


def _private_dir(path: str) -> bool:
    """A real directory of ours that nobody else may enter (a shared temp dir is no place to trust)."""
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        return False
    if hasattr(os, "geteuid") and (st.st_uid != os.geteuid() or st.st_mode & 0o077):
        return False
    return True


def _loads(raw: str | None) -> Any:
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return None
