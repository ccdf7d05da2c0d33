"""Who may publish what: the Redis ACL rules of a service publishing on ``signals.NAME`` (``mdc.publisher``).

A service outside the pipeline gets a Redis user of its own, named after its signal name, that can:

- read the market state (``mdc.reader``: read-only keys under the prefix) and subscribe to channels
  (``mdc.subscriber``): Redis checks a PSUBSCRIBE pattern (``bars.*``) literally against the allowed
  channel patterns, so subscribing is allowed on every channel (``&*``), which reads nothing the keys
  do not hold already;
- write only its own names, through a selector (Redis 7): the ``seq`` counters and recent lists of
  ``signals.NAME`` and ``signals.NAME.*``, its heartbeats (``hb:signals.NAME:*``), and PUBLISH (SPUBLISH
  on a Redis Cluster) on those channels alone. Redis channel permissions do not tell subscribing from
  publishing, so publishing is allowed in the selector only, whose channels are the service's: it
  cannot publish ``trades.AAPL``.

``rules(name, prefix)`` is the one declaration; the Helm chart and ``deploy/docker-compose.yml`` write
the same line (a test renders both and compares), ``mdpipe up`` applies it with ``ACL SETUSER``. The
credential stays with the service: it is never given to WDS, SCP or a browser.
"""

from __future__ import annotations

from .names import SIGNAL_NAME_RE, SIGNALS, Names

#: What the service runs: the publisher's script (EVALSHA, loaded on NOSCRIPT), the subscriber's and
#: reader's commands, and what any client sends on connecting.
_READ = (
    "+@read -@dangerous +subscribe +psubscribe +unsubscribe +punsubscribe +ping +echo +hello +auth "
    "+client|setname +client|id +client|info +select +multi +exec +discard +info +evalsha +eval "
    "+script|load +script|exists +ssubscribe +sunsubscribe +cluster|slots +cluster|shards +cluster|nodes "
    "+cluster|info +cluster|myid +readonly +asking"
)
#: What the publisher's script and heartbeat write, allowed on the service's own names only.
_WRITE = "+evalsha +eval +incr +lpush +ltrim +expire +set +del +publish +spublish"


def user(name: str) -> str:
    """The Redis user of the service publishing ``signals.NAME``."""
    return f"mdpipe-{_checked(name)}"


def rules(name: str, prefix: str = "md") -> str:
    """The ACL rules (without ``on`` and the password) of the service publishing ``signals.NAME``."""
    n = Names(prefix)
    p = n.prefix
    own = f"{SIGNALS}.{_checked(name)}"
    keys = " ".join(
        f"~{pattern}"
        for channel in (own, own + ".*")
        for pattern in (n.signal_seq(channel), n.signal_recent(channel))
    )
    return (
        f"resetkeys resetchannels -@all {_READ} %R~{p}:* &* "
        f"({_WRITE} {keys} ~{n.heartbeat(own, '*')} &{n.redis_channel(own)} &{n.redis_channel(own)}.*)"
    )


def setuser_args(name: str, password: str, prefix: str = "md") -> list[str]:
    """``ACL SETUSER`` arguments creating or resetting the service's user with ``password``."""
    if not password or any(c.isspace() for c in password):
        raise ValueError("the password must be non-empty, without spaces")
    return [user(name), "reset", "on", f">{password}", *_split(rules(name, prefix))]


def _split(line: str) -> list[str]:
    """The rules as ACL SETUSER arguments: a selector ``(...)`` is one argument."""
    out, depth, word = [], 0, ""
    for ch in line:
        if ch == " " and depth == 0:
            if word:
                out.append(word)
            word = ""
            continue
        depth += ch == "("
        depth -= ch == ")"
        word += ch
    if word:
        out.append(word)
    return out


def _checked(name: str) -> str:
    if not SIGNAL_NAME_RE.fullmatch(name):
        raise ValueError(f"signal name {name[:60]!r} must match [a-z0-9_]{{1,40}}")
    return name
