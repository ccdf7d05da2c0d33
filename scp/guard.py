"""Who is calling and how often: the client's address behind trusted proxies only, limits on failed
logins and on token minting (counted in Redis, so every worker agrees), and the stateless CSRF token of
the anonymous forms (login, registration), so an anonymous visitor makes SCP store nothing.

- ``X-Forwarded-For`` is believed only when the socket's peer is in ``SCP_TRUSTED_PROXIES``; then the
  client is the right-most address of the header that is not a trusted proxy itself (left-most entries
  are whatever the client wrote). Without trusted proxies the socket's peer is the client.
- Failed logins are limited per (account, address) pair and per address, never per account alone: a
  stranger's failures cannot lock a user out from the addresses that user logs in from.

The client is a ``redis.Redis`` or, on a Redis Cluster, a ``redis.cluster.RedisCluster``: each counter
is one key, its pipelines are not transactions (the cluster client sends each key's commands to its
master), and the pair of failure counters, two slots, is read with ``mget_nonatomic`` there.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
import time
from typing import Any

import redis
import redis.cluster

from mdc import names

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(text: str) -> tuple[Network, ...]:
    """``"10.0.0.1, 10.1.0.0/16, ::1"`` as networks; ValueError naming a bad entry."""
    out = []
    for item in (p.strip() for p in text.split(",")):
        if item:
            try:
                out.append(ipaddress.ip_network(item, strict=False))
            except ValueError:
                raise ValueError(f"not an address or CIDR: {item[:60]}") from None
    return tuple(out)


class ClientAddress:
    """The client's address of a WSGI request (``environ``)."""

    def __init__(self, trusted: str) -> None:
        self.trusted = parse_networks(trusted)

    def _trusted(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address.strip())
        except ValueError:
            return False
        return any(ip in net for net in self.trusted)

    def __call__(self, environ: dict[str, Any]) -> str:
        peer = str(environ.get("REMOTE_ADDR") or "?")
        if not self.trusted or not self._trusted(peer):
            return peer
        hops = [h.strip() for h in str(environ.get("HTTP_X_FORWARDED_FOR") or "").split(",")][-20:]
        for hop in reversed(hops):
            if not hop:
                break
            if not self._trusted(hop):
                try:
                    return str(ipaddress.ip_address(hop))  # not a free-form string in logs and keys
                except ValueError:
                    break
        return peer


class LoginLimiter:
    """At most ``attempts`` failed logins a minute per (account, address) pair, and ``ADDRESS_FACTOR``
    times as many per address (several people may share one, behind a NAT)."""

    ADDRESS_FACTOR = 5

    def __init__(self, client: redis.Redis | redis.cluster.RedisCluster, attempts: int) -> None:
        self.client, self.attempts = client, attempts

    @staticmethod
    def _keys(address: str, email: str) -> list[str]:
        # hashed: the e-mail is whatever the client sent
        pair = hashlib.sha256(f"{address}\n{email[:254]}".encode()).hexdigest()[:32]
        return [names.scp_login_failures(f"ip:{address[:64]}"), names.scp_login_failures(f"pair:{pair}")]

    def blocked(self, address: str, email: str) -> bool:
        mget = getattr(self.client, "mget_nonatomic", self.client.mget)  # a cluster's keys span slots
        by_address, by_pair = (int(c or 0) for c in mget(self._keys(address, email)))
        return by_pair >= self.attempts or by_address >= self.attempts * self.ADDRESS_FACTOR

    def failed(self, address: str, email: str) -> None:
        pipe = self.client.pipeline(transaction=False)
        for key in self._keys(address, email):
            pipe.incr(key)
            pipe.expire(key, 60, nx=True)
        pipe.execute()


class RateLimit:
    """At most ``limit`` events a ``window_s`` per subject (a fixed window in Redis)."""

    def __init__(
        self, client: redis.Redis | redis.cluster.RedisCluster, what: str, limit: int, window_s: int = 60
    ) -> None:
        self.client, self.what, self.limit, self.window_s = client, what, limit, window_s

    def retry_after(self, subject: str) -> int:
        """Count one event of ``subject``: 0 when allowed, else the seconds to wait."""
        key = names.scp_limit(f"{self.what}:{subject}")
        pipe = self.client.pipeline(transaction=False)
        pipe.incr(key)
        pipe.expire(key, self.window_s, nx=True)
        pipe.ttl(key)
        count, _, ttl = pipe.execute()
        return 0 if int(count) <= self.limit else max(1, int(ttl))


class FormToken:
    """CSRF tokens of the anonymous forms without server-side state: the browser holds a random nonce
    in a cookie (SameSite=Lax: not sent with another site's POST), the form an HMAC of it and a time."""

    COOKIE = "mdpipe_form"
    LIFETIME_S = 2 * 3600

    def __init__(self, secret: str) -> None:
        self.key = hashlib.sha256(b"mdpipe form token\n" + secret.encode()).digest()

    @staticmethod
    def nonce() -> str:
        return secrets.token_urlsafe(18)

    def _mac(self, nonce: str, at: int) -> str:
        return hmac.new(self.key, f"{nonce}\n{at}".encode(), hashlib.sha256).hexdigest()

    def issue(self, nonce: str, now: float | None = None) -> str:
        at = int(time.time() if now is None else now)
        return f"{at}.{self._mac(nonce, at)}"

    def check(self, nonce: str, token: str, now: float | None = None) -> bool:
        at_text, _, mac = str(token).partition(".")
        if not nonce or not at_text.isdigit() or len(at_text) > 12:
            return False
        age = (time.time() if now is None else now) - int(at_text)
        return 0 <= age <= self.LIFETIME_S and hmac.compare_digest(mac, self._mac(nonce, int(at_text)))
