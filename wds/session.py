"""One authenticated client's state, sans I/O: its grant, subscriptions, rate limit and outbound queue.

The stitching rule lives here. Subscribing puts a channel in the *pending* state: live updates are held
until the snapshot comes (a state channel's newest only; a trades or feed channel's in order, the newest
``FEED_WAITING``); the snapshot goes out with its ``seq`` S, then the held updates whose seq is above S,
and from then on only updates above S. So a client never misses an update between its snapshot and the
stream, and never sees one older than its snapshot. A ``max_hz`` subscription holds back updates that
come too soon and sends what it held when its time comes (combined as the outbox combines them:
``wds.conflation``).

Times are the caller's clock (seconds, monotonic); nothing here does I/O or sleeps.
"""

from __future__ import annotations

from dataclasses import dataclass

from mdc.names import is_known_channel
from mdc.subscriber import FEED_WAITING, LATEST

from .conflation import combine
from .outbox import Outbox
from .protocol import Update, encode_error
from .tokens import Grant

Refusal = tuple[str, str, list[str]]  # error code, message, channels

RATE_BURST_S = 2.0  # the token bucket holds this many seconds of actions
RATE_ERROR_EVERY_S = 1.0  # at most one rate_limited error per second


@dataclass(slots=True)
class Subscription:
    max_hz: float = 0.0
    snapshot_seq: int | None = None  # None: the snapshot is pending
    last: int = 0  # the newest seq queued: an older update never replaces or follows it
    early: list[Update] | None = None  # pending: the updates held for after the snapshot, oldest first
    held: Update | None = None  # throttled: what is held back until its time
    next_at: float = 0.0  # throttled: the earliest time of the next update
    timer: bool = False  # a release is scheduled
    skipped: bool = False  # throttled: updates before what is held were skipped, so it goes conflated


_QUEUED = (False, 0.0)  # offer's answers, made once: fan-out makes no object per client
_REPLACED = (True, 0.0)


class Session:
    def __init__(self, grant: Grant, max_subscriptions: int, actions_per_s: float, buffer_bytes: int) -> None:
        self.grant = grant
        self.max_subscriptions = max_subscriptions
        self.rate = actions_per_s
        self.subscriptions: dict[str, Subscription] = {}
        self.outbox = Outbox(buffer_bytes)
        self._tokens = actions_per_s * RATE_BURST_S
        self._refilled = 0.0
        self._rate_error_at = -RATE_ERROR_EVERY_S
        self.rate_limited = 0

    # -- actions ---------------------------------------------------------------------------------------

    def allow_action(self, now: float) -> bool:
        """Take one action from the token bucket; False (and a ``rate_limited`` error at most once a
        second) when it is empty."""
        cap = self.rate * RATE_BURST_S
        self._tokens = min(cap, self._tokens + (now - self._refilled) * self.rate) if self._refilled else cap
        self._refilled = now
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        self.rate_limited += 1
        if now - self._rate_error_at >= RATE_ERROR_EVERY_S:
            self._rate_error_at = now
            self.outbox.control(
                encode_error("rate_limited", f"more than {self.rate:g} actions per second: ignored")
            )
        return False

    def check_subscribe(
        self, channels: tuple[str, ...]
    ) -> tuple[list[str], list[tuple[str, str, list[str]]]]:
        """The channels that may be subscribed, and the refused ones as (code, message, channels)."""
        errors: list[Refusal] = []
        known = [c for c in channels if is_known_channel(c)]
        if len(known) < len(channels):
            unknown = [c for c in channels if not is_known_channel(c)]
            errors.append(("unknown_channel", "not a channel WDS serves", unknown))
        ok = [c for c in known if self.grant.allows(c)]
        if len(ok) < len(known):
            allowed = set(ok)
            forbidden = [c for c in known if c not in allowed]
            errors.append(("forbidden_channel", "the token does not allow these channels", forbidden))
        new = [c for c in ok if c not in self.subscriptions]
        room = max(0, self.max_subscriptions - len(self.subscriptions))
        if len(new) > room:
            over = set(new[room:])
            ok = [c for c in ok if c not in over]
            errors.append((
                "too_many_subscriptions",
                f"at most {self.max_subscriptions} subscriptions per connection",
                [c for c in new if c in over],
            ))  # fmt: skip
        return ok, errors

    def subscribe(self, channel: str, max_hz: float) -> bool:
        """Pending until its snapshot; True when the channel is new to this client."""
        sub = self.subscriptions.get(channel)
        new = sub is None
        if sub is None:
            sub = self.subscriptions[channel] = Subscription()
        sub.max_hz, sub.snapshot_seq, sub.early, sub.held, sub.skipped = max_hz, None, None, None, False
        self.outbox.forget(channel)  # the snapshot supersedes an update still waiting
        return new

    def unsubscribe(self, channel: str) -> bool:
        self.outbox.forget(channel)
        return self.subscriptions.pop(channel, None) is not None

    def resyncing(self) -> None:
        """Redis came back: every channel waits for a fresh snapshot, holding live updates meanwhile."""
        for channel, sub in self.subscriptions.items():
            sub.snapshot_seq, sub.early, sub.held, sub.skipped = None, None, None, False
            self.outbox.forget(channel)

    def resync(self, channel: str) -> bool:
        """A fresh snapshot of ``channel`` is coming (its history arrived): hold its live updates until
        then. False when it is not subscribed, or already waits for a snapshot (it gets that one)."""
        sub = self.subscriptions.get(channel)
        if sub is None or sub.snapshot_seq is None:
            return False
        sub.snapshot_seq, sub.early, sub.held, sub.skipped = None, None, None, False
        self.outbox.forget(channel)
        return True

    def snapshot(self, channel: str, seq: int, frame: bytes, now: float) -> None:
        """Queue the snapshot (``frame``, encoded once for every client) and what was held behind it."""
        sub = self.subscriptions.get(channel)
        if sub is None or sub.snapshot_seq is not None:  # unsubscribed meanwhile, or already had one
            return
        self.outbox.control(frame)
        sub.snapshot_seq = sub.last = seq
        early, sub.early = sub.early, None
        for update in early or ():
            if update.seq > sub.last:
                # a gap: updates between the snapshot and this one went by while it was read
                self.outbox.update(update, conflated=update.seq > sub.last + 1)
                sub.last = update.seq
        if sub.max_hz and sub.last > seq:
            sub.next_at = now + 1 / sub.max_hz

    # -- updates ---------------------------------------------------------------------------------------

    def offer(self, update: Update, now: float, skipped: bool = False) -> tuple[bool, float]:
        """A live update of a subscribed channel. Returns (conflated: it replaced one still waiting,
        release time: when > 0, call ``release`` then, for an update ``max_hz`` held back).

        ``skipped``: WDS dropped older updates of the channel on its input (it was behind): if this
        client misses some because of it, the update goes out marked ``conflated``."""
        sub = self.subscriptions.get(update.channel)
        if sub is None:
            return _QUEUED
        if sub.snapshot_seq is None:
            self._hold_early(sub, update)
            return _QUEUED
        if update.seq <= sub.last:
            return _QUEUED  # the snapshot or a newer update already reflects it
        if sub.max_hz:
            return self._throttle(sub, update, now, skipped)
        skipped = skipped and update.seq > sub.last + 1
        sub.last = update.seq
        return _REPLACED if self.outbox.update(update, skipped) else _QUEUED

    def _hold_early(self, sub: Subscription, update: Update) -> None:
        early = sub.early
        if not early:
            sub.early = [update]
        elif update.seq > early[-1].seq:
            if update.kind is LATEST:
                early[0] = update  # a state: the newest is all the snapshot's client needs
            else:
                early.append(update)
                if len(early) > FEED_WAITING:
                    del early[0]  # the gap it leaves is marked conflated after the snapshot

    def _throttle(self, sub: Subscription, update: Update, now: float, skipped: bool) -> tuple[bool, float]:
        held = sub.held
        # a gap before this update (WDS skipped some on its input) that this client did not have
        skipped = skipped and update.seq > (sub.last if held is None else held.seq) + 1
        if now < sub.next_at:  # too soon: held back, with what was held before it
            if held is None:
                sub.held, replaced = update, False
                sub.skipped = skipped
            else:
                sub.held, replaced = combine(held, update.conflated if skipped else update)
                sub.skipped |= replaced
            if sub.timer:
                return replaced, 0.0
            sub.timer = True
            return replaced, sub.next_at
        sub.next_at = now + 1 / sub.max_hz
        replaced = False
        if held is not None:
            # its time came but the release timer has not fired yet: what was held goes now, with this
            # one (the timer then finds nothing to release)
            update, replaced = combine(held, update.conflated if skipped else update)
            skipped, sub.held, sub.skipped = sub.skipped, None, False
        sub.last = update.seq
        return self.outbox.update(update, conflated=skipped) or replaced, 0.0

    def release(self, channel: str, now: float) -> bool:
        """A throttled channel's time has come: queue its held update. True if one was queued."""
        sub = self.subscriptions.get(channel)
        if sub is None:
            return False
        sub.timer = False
        if sub.snapshot_seq is None:
            return False  # subscribed again or resyncing: what is held now waits for the snapshot
        held, sub.held = sub.held, None
        skipped, sub.skipped = sub.skipped, False
        if held is None or held.seq <= sub.last:
            return False
        sub.next_at = now + 1 / sub.max_hz if sub.max_hz else 0.0
        sub.last = held.seq
        self.outbox.update(held, conflated=skipped)
        return True
