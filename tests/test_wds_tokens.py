"""WDS tokens: real JWTs minted, forged and verified (wds/tokens.py), and the `mdpipe token` command."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from hypothesis import given
from hypothesis import strategies as st

from mdpipe.settings import DEV_WDS_TOKEN_SECRET, ConfigError, WdsSettings
from tests.strategies import JSON
from wds.tokens import MAX_CHANNELS, Grant, TokenError, Verifier, mint

ROOT = Path(__file__).resolve().parent.parent
SECRET = "test-secret-of-the-wds-token-tests-0123456789"
OTHER_SECRET = "another-secret-nobody-configured-0123456789"
DROP = object()  # a claim left out


def hs(**overrides: Any) -> WdsSettings:
    return WdsSettings(**{"wds_token_secret": SECRET, **overrides})


def claims(now: float | None = None, **changes: Any) -> dict[str, Any]:
    """Valid claims for hs(), with ``changes`` (DROP removes a claim)."""
    iat = int(time.time() if now is None else now)
    out = {
        "sub": "bot",
        "iat": iat,
        "exp": iat + 600,
        "aud": "mdpipe-wds",
        "iss": "mdpipe",
        "jti": "id-1",
        "channels": ["stats.AAPL"],
    }
    for name, value in changes.items():
        if value is DROP:
            del out[name]
        else:
            out[name] = value
    return out


def signed(payload: dict[str, Any], key: Any = SECRET, algorithm: str = "HS256") -> str:
    return jwt.encode(payload, key, algorithm=algorithm)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def by_hand(header: dict[str, Any], payload: dict[str, Any], hmac_key: bytes | None = None) -> str:
    """A JWT built without PyJWT, signed with HMAC-SHA256 over ``hmac_key`` or left unsigned."""
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}"
    signature = b"" if hmac_key is None else hmac.new(hmac_key, signing_input.encode(), "sha256").digest()
    return f"{signing_input}.{b64(signature)}"


def refused(verifier: Verifier, token: str, code: str = "auth_failed") -> TokenError:
    with pytest.raises(TokenError) as err:
        verifier.verify(token)
    assert err.value.code == code
    message = str(err.value)
    assert message and "\n" not in message and len(message) < 100
    assert all(part not in message for part in token.split(".") if len(part) > 6)  # never echoes the token
    return err.value


@pytest.fixture(scope="module")
def rsa_keys(tmp_path_factory) -> tuple[Path, Path]:
    """(private, public) PEM files of a fresh 2048-bit key pair."""
    folder = tmp_path_factory.mktemp("keys")
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private, public = folder / "private.pem", folder / "public.pem"
    private.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return private, public


def rs(keys: tuple[Path, Path], **overrides: Any) -> WdsSettings:
    private, public = keys
    paths = {"wds_token_private_key": str(private), "wds_token_public_key": str(public)}
    return hs(**{"wds_token_algorithm": "RS256", **paths, **overrides})


# -- accepted ---------------------------------------------------------------------------------------


def test_a_minted_hs256_token_verifies_to_its_grant():
    settings = hs()
    before = time.time()
    token = mint(settings, "ticker-bot", ["stats.*", "trades.AAPL", "stats.*"])
    grant = Verifier(settings).verify(token)
    assert grant.subject == "ticker-bot"
    assert grant.channels == ("stats.*", "trades.AAPL")  # repeats dropped, order kept
    assert int(before) + 900 <= grant.expires <= time.time() + 900  # WDS_TOKEN_TTL_S by default
    payload = jwt.decode(token, options={"verify_signature": False})
    assert grant.token_id == payload["jti"] and len(grant.token_id) == 32
    assert payload["aud"] == "mdpipe-wds" and payload["iss"] == "mdpipe"
    assert mint(settings, "ticker-bot", ["halts"]) != mint(settings, "ticker-bot", ["halts"])  # own jti each


def test_ttl_and_clock_are_the_callers():
    token = mint(hs(), "bot", ["halts"], ttl_s=60, now=time.time() - 30)
    grant = Verifier(hs()).verify(token)
    assert 25 <= grant.expires - time.time() <= 31


def test_without_jti_the_token_id_is_the_tokens_hash():
    token = signed(claims(jti=DROP))
    assert Verifier(hs()).verify(token).token_id == hashlib.sha256(token.encode()).hexdigest()


def test_clock_skew_is_tolerated_within_the_leeways():
    now = time.time()
    verifier = Verifier(hs())
    verifier.verify(signed(claims(now - 600, exp=int(now) - 2)))  # expired 2 s ago: within 5 s on exp
    verifier.verify(signed(claims(now + 20)))  # issued 20 s ahead: within 30 s on iat


def test_rs256_round_trip(rsa_keys):
    token = mint(rs(rsa_keys), "bot", ["leaders.gainers", "signals.momentum"])
    assert jwt.get_unverified_header(token)["alg"] == "RS256"
    # WDS only needs the public key
    verifier = Verifier(rs(rsa_keys, wds_token_private_key=""))
    assert verifier.verify(token).channels == ("leaders.gainers", "signals.momentum")


# -- refused ----------------------------------------------------------------------------------------


def test_an_expired_token_is_token_expired():
    token = mint(hs(), "bot", ["halts"], ttl_s=60, now=time.time() - 120)
    error = refused(Verifier(hs()), token, "token_expired")
    assert str(error) == "token expired"


def test_an_expired_token_with_a_bad_signature_is_auth_failed():
    token = mint(hs(wds_token_secret=OTHER_SECRET), "bot", ["halts"], ttl_s=60, now=time.time() - 120)
    refused(Verifier(hs()), token)


def test_another_secrets_signature_is_refused():
    token = mint(hs(wds_token_secret=OTHER_SECRET), "bot", ["halts"])
    assert "signature" in str(refused(Verifier(hs()), token))


def test_a_forged_payload_is_refused():
    header, _, signature = mint(hs(), "bot", ["stats.AAPL"]).split(".")
    forged = claims(channels=["*"])
    refused(Verifier(hs()), f"{header}.{b64(json.dumps(forged).encode())}.{signature}")


def test_alg_none_is_refused():
    token = by_hand({"alg": "none", "typ": "JWT"}, claims(channels=["*"]))
    assert token.endswith(".")
    assert "algorithm" in str(refused(Verifier(hs()), token))


def test_algorithm_confusion_is_refused(rsa_keys):
    verifier = Verifier(rs(rsa_keys))
    # an HS256 token, validly signed with the shared secret, to a verifier configured for RS256
    refused(verifier, mint(hs(), "bot", ["halts"]))
    # the classic: header says HS256, HMAC keyed with the public key PEM that the RS256 verifier holds
    public_pem = rsa_keys[1].read_bytes()
    forged = by_hand({"alg": "HS256", "typ": "JWT"}, claims(channels=["*"]), hmac_key=public_pem)
    assert "algorithm" in str(refused(verifier, forged))
    # and the other way round: an RS256 token to an HS256 verifier
    refused(Verifier(hs()), mint(rs(rsa_keys), "bot", ["halts"]))


def _bad(**changes: Any) -> Callable[[float], dict[str, Any]]:
    return lambda now: claims(now, **changes)


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (_bad(aud="someone-else"), "audience"),
        (_bad(aud=["mdpipe-wds", "someone-else"]), "audience"),  # aud must equal WDS_TOKEN_AUDIENCE
        (_bad(iss="elsewhere"), "issuer"),
        (_bad(channels=DROP), "no channels claim"),
        (_bad(sub=DROP), "no sub claim"),
        (_bad(exp=DROP), "no exp claim"),
        (_bad(iat=DROP), "no iat claim"),
        (_bad(aud=DROP), "no aud claim"),
        (_bad(iss=DROP), "no iss claim"),
        (_bad(channels=["stats.AAPL", "trades.*;x"]), "channels"),  # a pattern mdc.names refuses
        (_bad(channels=["stat.AAPL"]), "channels"),  # not a known channel
        (_bad(channels=["stats.AAPL", 7]), "channels"),
        (_bad(channels=[]), "channels"),
        (_bad(channels="stats.AAPL"), "channels"),  # a string, not a list
        (_bad(channels=["?"] * (MAX_CHANNELS + 1)), "channels"),  # short enough to fit in 8 KB
        (lambda now: claims(now, exp=int(now) + 86_401), "lifetime"),  # WDS_TOKEN_MAX_TTL_S is 86,400
        (lambda now: claims(now + 60), "future"),  # iat beyond the 30 s leeway
        (lambda now: claims(now, exp=int(now) - 1, iat=int(now)), "lifetime"),  # exp before iat...
        (lambda now: claims(now - 10, exp=int(now) + 60), None),  # ...not: this one is valid
        (_bad(iat="now"), "numbers"),
        (_bad(iat=True), "numbers"),
        (lambda now: claims(now, exp=str(int(now) + 60)), "numbers"),  # PyJWT alone would accept it
        (_bad(sub=""), "sub"),
        (_bad(sub="bot\n"), "sub"),
        (_bad(sub=["bot"]), "malformed"),
        (_bad(jti=12), "malformed"),
        (_bad(jti=""), "jti"),
        (lambda now: claims(now, nbf=int(now) + 3600), "not yet valid"),
    ],
)
def test_bad_claims_are_refused(make, reason):
    token = signed(make(time.time()))
    if reason is None:
        Verifier(hs()).verify(token)
    else:
        assert reason in str(refused(Verifier(hs()), token))


def test_an_oversize_token_is_refused_before_decoding():
    token = signed(claims(padding="x" * 8200))
    assert "too long" in str(refused(Verifier(hs()), token))
    assert "too long" in str(refused(Verifier(hs()), "a" * 10_000_000))


@pytest.mark.parametrize(
    "token", ["", ".", "..", "a.b.c", "not a token", "é.é.é", "\x00", "eyJhbGciOiJIUzI1NiJ9..", "a.b.c.d.e"]
)
def test_garbage_is_refused(token):
    refused(Verifier(hs()), token)


@given(st.text(max_size=400) | st.binary(max_size=400).map(lambda b: b.decode("latin-1")))
def test_arbitrary_text_raises_token_error_and_nothing_else(text):
    with pytest.raises(TokenError) as err:  # nothing else, and no grant: text is never a signed token
        Verifier(hs()).verify(text)
    assert err.value.code == "auth_failed"


CLAIM_NAMES = st.sampled_from(["sub", "iat", "exp", "aud", "iss", "jti", "channels", "nbf"])
CHANNELISH = st.lists(st.sampled_from(["stats.AAPL", "*", "trades.*", "x", "[", ""]) | st.text(max_size=8))


@given(st.dictionaries(CLAIM_NAMES, JSON | CHANNELISH, max_size=8))
def test_any_validly_signed_claims_give_a_grant_or_token_error(changes):
    token = by_hand({"alg": "HS256", "typ": "JWT"}, claims(**changes), SECRET.encode())
    try:
        grant = Verifier(hs()).verify(token)
    except TokenError:
        return
    assert isinstance(grant.subject, str) and grant.channels and all(grant.channels)


# -- keys and minting -------------------------------------------------------------------------------


def test_rs256_key_files_are_checked_at_construction(rsa_keys, tmp_path):
    with pytest.raises(ConfigError, match=r"^invalid setting WDS_TOKEN_PUBLIC_KEY: .*needed"):
        Verifier(rs(rsa_keys, wds_token_public_key=""))
    missing = tmp_path / "nope.pem"
    with pytest.raises(ConfigError, match=r"^invalid setting WDS_TOKEN_PUBLIC_KEY='.*nope.pem': cannot read"):
        Verifier(rs(rsa_keys, wds_token_public_key=str(missing)))
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("-----BEGIN PUBLIC KEY-----\nnot base64\n-----END PUBLIC KEY-----\n")
    with pytest.raises(ConfigError, match=r"WDS_TOKEN_PUBLIC_KEY=.*not an unencrypted PEM public key"):
        Verifier(rs(rsa_keys, wds_token_public_key=str(garbage)))
    ec_key = tmp_path / "ec.pem"
    ec_key.write_bytes(
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    with pytest.raises(ConfigError, match="not an RSA key"):
        Verifier(rs(rsa_keys, wds_token_public_key=str(ec_key)))
    small = tmp_path / "small.pem"
    small.write_bytes(
        rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505 - the weak key refused
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    with pytest.raises(ConfigError, match="1024 bits"):
        Verifier(rs(rsa_keys, wds_token_public_key=str(small)))


def test_rs256_minting_needs_the_private_key(rsa_keys, tmp_path):
    with pytest.raises(ConfigError, match=r"^invalid setting WDS_TOKEN_PRIVATE_KEY: .*needed"):
        mint(rs(rsa_keys, wds_token_private_key=""), "bot", ["halts"])
    pasted = rsa_keys[0].read_text()  # the key itself instead of its path: not echoed
    with pytest.raises(ConfigError, match=r"^invalid setting WDS_TOKEN_PRIVATE_KEY: cannot read") as err:
        mint(rs(rsa_keys, wds_token_private_key=pasted), "bot", ["halts"])
    assert "PRIVATE KEY-----" not in str(err.value)
    with pytest.raises(ConfigError, match="WDS_TOKEN_PRIVATE_KEY: not an unencrypted PEM private key"):
        mint(rs(rsa_keys, wds_token_private_key=str(rsa_keys[1])), "bot", ["halts"])  # the public one


@pytest.mark.parametrize(
    ("subject", "channels", "ttl", "message"),
    [
        ("", ["halts"], None, "subject"),
        ("x" * 201, ["halts"], None, "subject"),
        ("bot\t1", ["halts"], None, "subject"),
        ("bot", [], None, "at least one"),
        ("bot", ["halts", "nope"], None, "'nope' is neither"),
        ("bot", ["trades.AAPL", "trades.* x"], None, "'trades.* x' is neither"),
        ("bot", ["?"] * (MAX_CHANNELS + 1), None, "at most 1000"),
        ("bot", [f"stats.S{i}" for i in range(MAX_CHANNELS)], None, "the token would be"),
        ("bot", "halts", None, "at least one"),
        ("bot", ["halts"], 0, "ttl"),
        ("bot", ["halts"], 86_401, "above WDS_TOKEN_MAX_TTL_S"),
    ],
)
def test_mint_refuses_bad_input(subject, channels, ttl, message):
    with pytest.raises(ValueError, match=message):
        mint(hs(), subject, channels, ttl_s=ttl)


def test_mint_keeps_to_the_configured_maximum_lifetime():
    settings = hs(wds_token_ttl_s=300, wds_token_max_ttl_s=300)  # the settings refuse a default above it
    with pytest.raises(ValueError, match="ttl of 600 s is above WDS_TOKEN_MAX_TTL_S"):
        mint(settings, "bot", ["halts"], ttl_s=600)
    assert Verifier(settings).verify(mint(settings, "bot", ["halts"], ttl_s=300)).subject == "bot"


# -- grants -----------------------------------------------------------------------------------------


def test_grant_allows_names_globs_and_star():
    grant = Grant("bot", 0.0, ("stats.AAPL", "trades.*", "bars.?", "leaders.gainers"), "id")
    assert grant.allows("stats.AAPL") and grant.allows("leaders.gainers")
    assert not grant.allows("stats.MSFT") and not grant.allows("leaders.losers") and not grant.allows("halts")
    assert grant.allows("trades.MSFT") and grant.allows("trades.BRK.B")
    assert not grant.allows("quotes.MSFT") and not grant.allows("trades") and not grant.allows("Trades.X")
    assert grant.allows("bars.X") and not grant.allows("bars.XY")
    # patterns: only one the grant already covers
    assert grant.allows("trades.*") and grant.allows("trades.A*") and grant.allows("trades.[AB]*")
    assert grant.allows("bars.?")  # the very entry
    assert not grant.allows("trades*") and not grant.allows("t*") and not grant.allows("*")
    assert not grant.allows("bars.*")  # "bars.?" matches the text "bars.*", but reads far less
    assert not Grant("bot", 0.0, ("a?",), "id").allows("a*")

    everything = Grant("bot", 0.0, ("*",), "id")
    assert all(everything.allows(c) for c in ("halts", "stats.AAPL", "signals.momentum.AAPL", "*", "x.*"))


# -- mdpipe token -----------------------------------------------------------------------------------


def mdpipe_token(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mdpipe", "token", *args], capture_output=True, text=True, timeout=60,
        env={**os.environ, "MDPIPE_ENV": "development", **env}, cwd=ROOT,
    )  # fmt: skip


def test_mdpipe_token_prints_a_token_that_verifies():
    args = ["--subject", "ticker-bot", "--channels", "stats.*, trades.AAPL", "--ttl", "120"]
    result = mdpipe_token(*args, WDS_TOKEN_SECRET=SECRET)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("\n") == 1 and result.stderr == ""
    grant = Verifier(hs()).verify(result.stdout.strip())
    assert grant.subject == "ticker-bot" and grant.channels == ("stats.*", "trades.AAPL")
    assert grant.expires <= time.time() + 120


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--subject", "bot", "--channels", "stats.AAPL,nope"], "mdpipe: token: channels: 'nope' is neither"),
        (["--subject", "bot", "--channels", " , "], "mdpipe: token: channels: at least one"),
        (["--subject", "", "--channels", "halts"], "mdpipe: token: subject must be"),
        (
            ["--subject", "bot", "--channels", "halts", "--ttl", "no"],
            "mdpipe: invalid setting WDS_TOKEN_TTL_S=",
        ),
    ],
)
def test_mdpipe_token_bad_arguments_are_one_line(args, message):
    result = mdpipe_token(*args)
    assert result.returncode == 2 and result.stdout == ""
    assert len(result.stderr.splitlines()) == 1 and result.stderr.startswith(message)


def test_mdpipe_token_in_production_refuses_the_development_secret():
    production = {"MDPIPE_ENV": "production", "RABBITMQ_URL": "amqp://mdpipe:pw@127.0.0.1:5672/"}
    result = mdpipe_token("--subject", "bot", "--channels", "halts", **production)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.splitlines() == [
        "mdpipe: invalid setting WDS_TOKEN_SECRET: production mode needs a value of its own"
    ]
    assert DEV_WDS_TOKEN_SECRET not in result.stderr
    result = mdpipe_token("--subject", "bot", "--channels", "halts", WDS_TOKEN_SECRET=SECRET, **production)
    assert result.returncode == 0 and Verifier(hs()).verify(result.stdout.strip()).channels == ("halts",)
