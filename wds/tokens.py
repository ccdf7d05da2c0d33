"""WDS access tokens: who may connect, until when, and which channels they may read.

It owns the token format, a JWT signed with HS256 (WDS_TOKEN_SECRET) or RS256 (a key pair), with the
claims ``sub``, ``iat``, ``exp``, ``aud``, ``iss``, ``jti`` and ``channels`` (channel names and glob
patterns per mdc.names, ``*`` for every channel); ``mint`` makes one (for `mdpipe token` and the SCP),
``Verifier`` checks one and returns its ``Grant``. Only the configured algorithm is accepted, so
``alg: none`` and HS256/RS256 confusion are refused whatever the token's header says.

Pure: no I/O but reading the PEM key files when a Verifier is built or a token is minted with RS256.
``TokenError`` messages are fixed texts, safe to send to the client: they never quote the token.
"""

from __future__ import annotations

import hashlib
import re
import time
import uuid
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any, Literal

import jwt
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey, RSAPublicKey

from mdc.names import GLOB_RE, PATTERN_RE, is_known_channel
from mdpipe.settings import ConfigError, WdsSettings

MAX_TOKEN_CHARS = 8192  # checked before decoding: PyJWT would base64-decode and parse anything it is given
MAX_CHANNELS = 1000
MAX_SUBJECT_CHARS = 200
MAX_TOKEN_ID_CHARS = 200
EXP_LEEWAY_S = 5  # clock skew tolerated on exp
IAT_LEEWAY_S = 30  # and on iat: an issuer's clock a little ahead is common, a token from the future is not
MIN_RSA_BITS = 2048
_REQUIRED = ["sub", "exp", "iat", "aud", "iss", "channels"]
_MAX_DATE = 1e11  # NumericDates beyond (year 5138) or negative are malformed, and bound the arithmetic
_GLOB_OR_ESCAPE = re.compile(r"[*?\[\\]")

Code = Literal["auth_failed", "token_expired"]


class TokenError(Exception):
    """A token is refused. ``code`` is ``auth_failed`` or ``token_expired``; the message is safe to show."""

    def __init__(self, code: Code, message: str) -> None:
        super().__init__(message)
        self.code: Code = code


@dataclass(frozen=True, slots=True)
class Grant:
    """What a verified token lets its holder do."""

    subject: str
    expires: float  # epoch seconds
    channels: tuple[str, ...]  # channel names and glob patterns the holder may read
    token_id: str  # the jti claim, or the SHA-256 hex of the token without one

    def allows(self, channel: str) -> bool:
        """Whether the holder may read ``channel``: a name equal to an entry or matching a glob entry.

        ``channel`` may itself be a pattern (a subscription to ``trades.*``): it is allowed when an entry is
        the same pattern, ``*``, or a prefix glob (``trades.*``) that the pattern's literal start already
        fixes (``trades.A*``). Matching one glob against another would prove nothing (``a?`` matches
        ``a*``, which reads far more than ``a?``).
        """
        pattern = GLOB_RE.search(channel) is not None
        for entry in self.channels:
            if entry == channel or entry == "*":
                return True
            if not GLOB_RE.search(entry):
                continue
            if not pattern:
                if fnmatchcase(channel, entry):
                    return True
            elif entry.endswith("*") and _GLOB_OR_ESCAPE.split(channel, 1)[0].startswith(entry[:-1]):
                return True
        return False


class Verifier:
    """Checks tokens against the WDS settings; build one per process (RS256 reads the key file here)."""

    __slots__ = ("_algorithm", "_audience", "_issuer", "_key", "_max_ttl_s")

    def __init__(self, settings: WdsSettings) -> None:
        self._algorithm = settings.wds_token_algorithm
        self._audience = settings.wds_token_audience
        self._issuer = settings.wds_token_issuer
        self._max_ttl_s = settings.wds_token_max_ttl_s
        self._key: bytes | RSAPublicKey
        if self._algorithm == "RS256":
            self._key = _load_key("wds_token_public_key", settings.wds_token_public_key, private=False)
        else:
            self._key = settings.wds_token_secret.get_secret_value().encode()

    def verify(self, token: str) -> Grant:
        """The grant of ``token``, or TokenError."""
        # A JWT is short ASCII: anything else is refused before PyJWT decodes it.
        if not isinstance(token, str) or not token.isascii():
            raise TokenError("auth_failed", "invalid token: malformed")
        if len(token) > MAX_TOKEN_CHARS:
            raise TokenError("auth_failed", "invalid token: too long")
        try:
            claims = jwt.decode(
                token,
                self._key,
                algorithms=[self._algorithm],  # the configured one only, never the header's choice
                audience=self._audience,
                issuer=self._issuer,
                leeway=EXP_LEEWAY_S,
                # iat is checked below, with its own leeway; strict_aud: aud must be this very string
                options={"require": _REQUIRED, "verify_iat": False, "strict_aud": True},
            )
        except jwt.ExpiredSignatureError:
            raise TokenError("token_expired", "token expired") from None
        except jwt.PyJWTError as exc:
            raise TokenError("auth_failed", _reason(exc)) from None
        except (TypeError, ValueError, OverflowError):  # older PyJWT lets odd claim values escape as these
            raise TokenError("auth_failed", "invalid token: malformed") from None
        return self._grant(token, claims)

    def _grant(self, token: str, claims: dict[str, Any]) -> Grant:
        iat, exp = claims["iat"], claims["exp"]
        if not (_date(iat) and _date(exp)):
            raise TokenError("auth_failed", "invalid token: iat and exp must be numbers")
        if iat > time.time() + IAT_LEEWAY_S:
            raise TokenError("auth_failed", "invalid token: issued in the future")
        if not 0 < exp - iat <= self._max_ttl_s:
            raise TokenError("auth_failed", f"invalid token: lifetime must be 1 to {self._max_ttl_s} s")
        subject = claims["sub"]
        if not _valid_subject(subject):
            raise TokenError("auth_failed", "invalid token: bad sub claim")
        token_id = claims.get("jti")
        if token_id is None:
            token_id = hashlib.sha256(token.encode()).hexdigest()
        elif not (isinstance(token_id, str) and 0 < len(token_id) <= MAX_TOKEN_ID_CHARS):
            raise TokenError("auth_failed", "invalid token: bad jti claim")
        try:
            channels = _channels(claims["channels"])
        except ValueError:
            raise TokenError("auth_failed", "invalid token: bad channels claim") from None
        return Grant(subject=subject, expires=float(exp), channels=channels, token_id=token_id)


def mint(
    settings: WdsSettings,
    subject: str,
    channels: list[str],
    *,
    ttl_s: int | None = None,
    now: float | None = None,
) -> str:
    """A signed token for ``subject`` reading ``channels``, living ``ttl_s`` (default WDS_TOKEN_TTL_S).

    ValueError for a bad subject, channel list or lifetime; ConfigError when the RS256 key is unusable.
    """
    if not _valid_subject(subject):
        raise ValueError(f"subject must be 1 to {MAX_SUBJECT_CHARS} printable characters")
    entries = _channels(channels)
    ttl = settings.wds_token_ttl_s if ttl_s is None else ttl_s
    if type(ttl) is not int or ttl < 1:
        raise ValueError("ttl must be a whole number of seconds, at least 1")
    if ttl > settings.wds_token_max_ttl_s:
        raise ValueError(f"ttl of {ttl} s is above WDS_TOKEN_MAX_TTL_S ({settings.wds_token_max_ttl_s} s)")
    algorithm = settings.wds_token_algorithm
    key: str | RSAPrivateKey
    if algorithm == "RS256":
        key = _load_key("wds_token_private_key", settings.wds_token_private_key, private=True)
    else:
        key = settings.wds_token_secret.get_secret_value()
    iat = int(time.time() if now is None else now)
    claims = {
        "sub": subject,
        "iat": iat,
        "exp": iat + ttl,
        "aud": settings.wds_token_audience,
        "iss": settings.wds_token_issuer,
        "jti": uuid.uuid4().hex,
        "channels": list(entries),
    }
    token = jwt.encode(claims, key, algorithm=algorithm)
    if len(token) > MAX_TOKEN_CHARS:  # Verifier would refuse it
        raise ValueError(
            f"channels: too many, the token would be {len(token)} characters ({MAX_TOKEN_CHARS} at most)"
        )
    return token


def _valid_subject(subject: object) -> bool:
    return isinstance(subject, str) and 0 < len(subject) <= MAX_SUBJECT_CHARS and subject.isprintable()


def _channels(channels: object) -> tuple[str, ...]:
    """``channels`` checked (ValueError saying why) and without repeats."""
    if not isinstance(channels, list | tuple) or not channels:
        raise ValueError("channels: at least one channel or pattern is needed")
    if len(channels) > MAX_CHANNELS:
        raise ValueError(f"channels: at most {MAX_CHANNELS} entries")
    for entry in channels:
        if not isinstance(entry, str) or not _valid_entry(entry):
            raise ValueError(f"channels: {entry!r:.60} is neither a known channel nor a glob pattern")
    return tuple(dict.fromkeys(channels))


def _valid_entry(entry: str) -> bool:
    if GLOB_RE.search(entry):
        return PATTERN_RE.fullmatch(entry) is not None
    return is_known_channel(entry)


def _date(value: object) -> bool:
    # type(), not isinstance: JSON true is a bool, and bool is an int
    return type(value) in (int, float) and 0 <= value <= _MAX_DATE  # type: ignore[operator]


# Fixed texts by exception class, most specific first: PyJWT's own messages may quote decoded input.
_REASONS: tuple[tuple[type[jwt.PyJWTError], str], ...] = (
    (jwt.InvalidSignatureError, "invalid token: bad signature"),
    (jwt.InvalidAlgorithmError, "invalid token: algorithm not accepted"),
    (jwt.InvalidAudienceError, "invalid token: wrong audience"),
    (jwt.InvalidIssuerError, "invalid token: wrong issuer"),
    (jwt.ImmatureSignatureError, "invalid token: not yet valid"),
)


def _reason(exc: jwt.PyJWTError) -> str:
    if isinstance(exc, jwt.MissingRequiredClaimError) and exc.claim in _REQUIRED:
        return f"invalid token: no {exc.claim} claim"
    return next((text for kind, text in _REASONS if isinstance(exc, kind)), "invalid token: malformed")


def _load_key(field: str, path: str, *, private: bool) -> RSAPrivateKey | RSAPublicKey:
    """The RSA key in the PEM file at ``path`` (setting ``field``), or ConfigError naming the setting."""
    kind = "private" if private else "public"
    # A private key's setting is not echoed: someone may have pasted the key itself instead of its path.
    name = field.upper() if private or not path else f"{field.upper()}={path!r}"
    if not path:
        raise ConfigError(f"invalid setting {name}: the {kind} key file is needed with RS256")
    try:
        data = Path(path).read_bytes()
    except (OSError, ValueError) as exc:  # ValueError: a NUL in the path
        reason = getattr(exc, "strerror", None) or "not a file path"
        raise ConfigError(f"invalid setting {name}: cannot read the {kind} key file ({reason})") from None
    try:
        key = (
            serialization.load_pem_private_key(data, password=None)
            if private
            else serialization.load_pem_public_key(data)
        )
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise ConfigError(f"invalid setting {name}: not an unencrypted PEM {kind} key") from None
    if not isinstance(key, RSAPrivateKey | RSAPublicKey):
        raise ConfigError(f"invalid setting {name}: not an RSA key (RS256 needs one)")
    if key.key_size < MIN_RSA_BITS:
        raise ConfigError(f"invalid setting {name}: RSA key of {key.key_size} bits, {MIN_RSA_BITS} at least")
    return key
