"""The lease: which of several ``mdpipe mdl`` replicas of a market holds the one vendor connection.

The vendor allows one connection per market, so any number of listeners may run but only the holder of
the lease ``mdc.names.mdl_lease(market)`` in Redis connects and publishes; the others are standbys, ready
to take over. The key's value is a random token of this instance followed by the instance name (for
status pages); it is taken with ``SET NX PX ttl`` semantics, renewed every ``ttl/3`` by a script that
compares the token before ``PEXPIRE``, and released on a clean stop by a script that compares it before
``DEL`` (a standby then takes over at its next try, without waiting for the TTL).

Fencing: the holder keeps a *local* deadline, the monotonic time at which its last successful acquire or
renewal was *sent*, plus the TTL, minus a margin. Redis expires the key at least a TTL after it received
that command, so later than the deadline: by the time anyone else can take the lease, the old holder's
deadline has passed. The listener connects to the vendor and publishes only before its deadline (it checks
before every message) and closes its vendor connection as soon as the deadline passes, whether because
renewals fail or because the process was paused (SIGSTOP, a long GC, a frozen VM): a paused holder that
resumes finds its deadline gone and publishes nothing.

``LeaseCore`` decides (sans I/O, with an injected clock); ``Lease`` runs it against Redis in a task.

On a Redis Cluster (a ``Target`` with seeds) nothing changes: the lease is one key, and each script
names it in ``KEYS[1]`` (and touches no other), so the cluster client routes it to the master owning
that key's slot and the script runs there atomically as on one Redis. A failover of that master may
lose the key (asynchronous replication): a standby then takes it while the old holder's local
deadline still fences it, as after an expiry.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisError

from mdc import names
from mdc.connect import Target

log = logging.getLogger(__name__)

RENEW_FRACTION = 1 / 3  # the holder renews every ttl/3: two renewals may fail before the deadline
MARGIN_FRACTION = 1 / 5  # the local deadline is this much of the TTL before Redis expires the key

# Each script reads and writes KEYS[1] alone: one slot, so it runs as is on a Redis Cluster.
# Take the key if nobody holds it (SET NX PX), or extend it if we already do (a holder whose local deadline
# passed while the key was still its own gets it back); returns the holder's value either way.
ACQUIRE = """
local v = redis.call('GET', KEYS[1])
if not v then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return ARGV[1]
end
if v == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return v
"""
RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


@dataclass(frozen=True, slots=True)
class Change:
    """A change of role: ``leader`` is the new one; ``cause`` says why (acquired, expired, taken)."""

    leader: bool
    cause: str


class LeaseCore:
    """The lease's decisions, without I/O: when to try, what a result means, and the local deadline.

    The adapter calls ``attempt()`` just before sending an acquire or renewal (it returns the send time),
    then ``result(sent_at, holder)`` with the holder's value Redis answered (``None``: the key was not ours
    or the command failed), and ``expire()`` whenever it wakes; each returns a ``Change`` or ``None``.
    """

    def __init__(
        self,
        value: str,
        ttl_s: float,
        *,
        retry_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 0 < retry_s < ttl_s:
            raise ValueError("retry_s must be positive and shorter than ttl_s")
        self.value, self.ttl_s, self.retry_s, self.clock = value, ttl_s, retry_s, clock
        self.renew_s = ttl_s * RENEW_FRACTION
        self.margin_s = ttl_s * MARGIN_FRACTION
        self.leader = False
        self.deadline = 0.0  # monotonic; only meaningful while leader
        self.holder: str | None = None  # the holder's value as last seen (ours while leader)
        self._next = 0.0  # when the next attempt is due

    @property
    def ttl_ms(self) -> int:
        return max(1, round(self.ttl_s * 1000))

    def valid(self) -> bool:
        """May we use the vendor connection and publish now? (The fence.)"""
        return self.leader and self.clock() < self.deadline

    def expire(self) -> Change | None:
        """Step down if the local deadline has passed."""
        if self.leader and self.clock() >= self.deadline:
            return self._step_down("expired")
        return None

    def due_in(self) -> float:
        """Seconds until the next attempt, or until the deadline if that comes first."""
        now = self.clock()
        wait = self._next - now
        if self.leader:
            wait = min(wait, self.deadline - now)
        return max(0.0, wait)

    def attempt(self) -> float:
        """An acquire (standby) or renewal (leader) is being sent now: returns its send time."""
        now = self.clock()
        self._next = now + (self.renew_s if self.leader else self.retry_s)
        return now

    def op_timeout(self) -> float:
        """How long to wait for Redis's answer: never past the deadline, nor longer than a renewal period."""
        if self.leader:
            return max(0.0, min(self.renew_s, self.deadline - self.clock()))
        return max(self.retry_s, 0.05)

    def result(self, sent_at: float, holder: str | None, *, failed: bool = False) -> Change | None:
        """Redis answered the command sent at ``sent_at``: the key now holds ``holder`` (ours when we hold
        it). ``failed``: no answer (an error or a timeout): nothing is known, the deadline decides."""
        if failed:
            if self.leader:
                self._next = min(self._next, self.clock() + self.retry_s)  # retry soon, not in ttl/3
            return self.expire()
        self.holder = holder
        if holder == self.value:
            deadline = sent_at + self.ttl_s - self.margin_s
            if self.leader:
                self.deadline = max(self.deadline, deadline)
                return self.expire()
            if self.clock() >= deadline:
                return None  # the answer came too late to use: try again next time
            self.leader, self.deadline = True, deadline
            self._next = sent_at + self.renew_s
            return Change(True, "acquired")
        if self.leader:
            return self._step_down("taken")
        return None

    def released(self) -> Change | None:
        """We gave the lease up (a clean stop)."""
        if self.leader:
            return self._step_down("released")
        return None

    def _step_down(self, cause: str) -> Change:
        self.leader, self.deadline = False, 0.0
        self._next = self.clock()  # standby: try again at once (the key may well still be ours)
        if cause != "released":
            self._next += self.retry_s
        return Change(False, cause)


def holder_name(value: str | None) -> str | None:
    """The instance name in a lease value (``<token> <instance>``)."""
    if not value:
        return None
    return value.partition(" ")[2] or None


class Lease:
    """Runs a ``LeaseCore`` against Redis: ``run(stop)`` until stopped, then ``release()``.

    ``on_change(change)`` is called (synchronously, in the event loop) on every change of role, at the
    latest at the local deadline even if Redis hangs.
    """

    def __init__(
        self,
        target: str | Target,
        market: str,
        instance: str,
        *,
        ttl_s: float,
        retry_s: float,
        on_change: Callable[[Change], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.target = Target(target) if isinstance(target, str) else target
        self.key, self.instance = names.mdl_lease(market), instance
        self.core = LeaseCore(f"{secrets.token_hex(12)} {instance}", ttl_s, retry_s=retry_s, clock=clock)
        self.on_change = on_change
        self.connected: bool | None = None  # the last command got an answer (None: none sent yet)
        self._client: Redis | RedisCluster | None = None
        self._wake = asyncio.Event()

    @property
    def leader(self) -> bool:
        return self.core.leader

    def valid(self) -> bool:
        return self.core.valid()

    @property
    def holder(self) -> str | None:
        return holder_name(self.core.holder)

    async def run(self, stop: asyncio.Event) -> None:
        core = self.core
        timeout = max(0.5, core.ttl_s)
        self._client = self.target.client(socket_timeout=timeout, socket_connect_timeout=timeout)
        acquire, renew = self._client.register_script(ACQUIRE), self._client.register_script(RENEW)
        try:
            while not stop.is_set():
                self._changed(core.expire())
                wait = core.due_in()
                if wait > 0:
                    self._wake.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), wait)
                    continue
                leader = core.leader
                sent_at = core.attempt()
                script = renew if leader else acquire
                try:
                    answer = await asyncio.wait_for(
                        script(keys=[self.key], args=[core.value, core.ttl_ms]), core.op_timeout()
                    )
                except (RedisError, OSError, TimeoutError) as exc:
                    if self.connected is not False:
                        error = f"{type(exc).__name__}: {exc}"
                        log.warning("lease: redis unavailable", extra={"error": error})
                    self.connected = False
                    self._changed(core.result(sent_at, None, failed=True))
                    continue
                self.connected = True
                if leader:
                    holder = core.value if answer == 1 else None
                else:
                    holder = answer.decode() if isinstance(answer, bytes) else answer
                self._changed(core.result(sent_at, holder))
        finally:
            self.connected = False

    def _changed(self, change: Change | None) -> None:
        if change is not None:
            self.on_change(change)

    async def release(self) -> None:
        """Give the lease up (after closing the vendor connection): a standby takes over at its next try."""
        self._changed(self.core.released())
        client = self._client
        if client is None:
            return
        try:
            await asyncio.wait_for(
                client.eval(RELEASE, 1, self.key, self.core.value), max(0.5, self.core.ttl_s)
            )
        except (RedisError, OSError, TimeoutError) as exc:
            log.warning("lease: release failed", extra={"error": f"{type(exc).__name__}: {exc}"})
        finally:
            self._client = None
            with contextlib.suppress(Exception):
                await client.aclose()
