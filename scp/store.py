"""The control plane's database: users (py4web ``Auth``'s ``auth_user``, plus a ``role``) and API tokens.

One place builds the tables (``open_store``), used by the py4web app in each worker and by
``mdpipe scp create-user``. Roles are ``admin`` (changes things) and ``viewer`` (reads). A disabled user
has py4web's ``account-blocked`` mark, which its login refuses.

API tokens (``Authorization: Bearer mdp_...``) are random; only their SHA-256 is stored, so a leaked
database does not leak usable tokens. A token acts as its user, with the user's role at the time of use.

Each user has an ``auth_epoch``, bumped when an admin disables it, changes its role or its password.
Sessions and API tokens carry the epoch they were made in and are refused once it moved on: disabling a
user or changing a password ends every session and token, and re-enabling does not bring them back.

A login costs one password hash whether or not the account exists (an unknown e-mail is checked against
a dummy hash of the same cost), so its time does not tell which accounts exist.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import re
import secrets
import threading
import unicodedata
from dataclasses import dataclass
from typing import Any

from py4web import DAL, Field
from py4web.utils.auth import Auth
from pydal.helpers.classes import DatabaseStoredFile
from pydal.migrator import InDBMigrator
from pydal.validators import CRYPT

from mdpipe.settings import ScpSettings

ROLES = ("admin", "viewer")
TOKEN_PREFIX = "mdp_"  # noqa: S105 - a prefix, not a secret
BLOCKED = "account-blocked"  # py4web Auth's mark of a disabled account
MIN_PASSWORD = 12
MAX_TOKENS_PER_USER = 50
# py4web's default is pbkdf2 with 1,000 rounds; new passwords get many more (old hashes still verify:
# the stored hash says its own parameters).
HASH = CRYPT(digest_alg="pbkdf2(210000,32,sha512)", salt=True)
EMAIL_RE = re.compile(r"[^@\s]{1,64}@[^@\s]{1,190}\.[^@\s.]{1,63}")
LOCAL_RE = re.compile(r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]{1,64}")  # an ASCII local part (RFC 5322 atoms)


class StoreError(ValueError):
    """Refused input (a duplicate e-mail, a weak password, ...): the message is safe to show."""


@dataclass(frozen=True)
class User:
    id: int
    email: str
    role: str
    active: bool
    epoch: int = 0  # auth_epoch: sessions and API tokens of another epoch are refused

    def public(self) -> dict[str, Any]:
        return {"id": self.id, "email": self.email, "role": self.role, "active": self.active}


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None, microsecond=0)


class Store:
    def __init__(self, db: DAL, auth: Auth) -> None:
        self.db, self.auth = db, auth

    # -- users -----------------------------------------------------------------------------------------

    def _user(self, row: Any) -> User:
        return User(row.id, row.email, row.role or "viewer", row.action_token != BLOCKED, row.auth_epoch or 0)

    def users(self) -> list[User]:
        return [self._user(r) for r in self.db(self.db.auth_user).select(orderby=self.db.auth_user.id)]

    def user(self, user_id: int) -> User | None:
        row = self.db.auth_user(user_id)
        return self._user(row) if row else None

    def create_user(self, email: str, password: str, role: str = "viewer") -> User:
        email = check_email(email)
        check_password(password)
        check_role(role)
        if self.db(self.db.auth_user.email == email).count():
            raise StoreError("a user with this e-mail exists")
        user_id = self.db.auth_user.insert(
            email=email,
            username=email,
            password=str(HASH(password)[0]),
            role=role,
            first_name="",
            last_name="",
        )
        self.db.commit()
        return self.user(user_id)  # type: ignore[return-value]

    def update_user(
        self,
        user_id: int,
        *,
        role: str | None = None,
        active: bool | None = None,
        password: str | None = None,
    ) -> User | None:
        row = self.db.auth_user(user_id)
        if row is None:
            return None
        changes: dict[str, Any] = {}
        if role is not None:
            changes["role"] = check_role(role)
        if active is not None:
            changes["action_token"] = None if active else BLOCKED
        if password is not None:
            check_password(password)
            changes["password"] = str(HASH(password)[0])
        before = self._user(row)
        if role not in (None, before.role) or active not in (None, before.active) or password is not None:
            # every session and API token of the user made before this change is refused from now on
            changes["auth_epoch"] = before.epoch + 1
        if changes:
            row.update_record(**changes)
            self.db.commit()
        return self.user(user_id)

    def admins(self) -> int:
        table = self.db.auth_user
        active = (table.action_token == None) | (table.action_token != BLOCKED)  # noqa: E711 - SQL NULL
        return self.db((table.role == "admin") & active).count()

    def ensure_admin(self, email: str, password: str) -> User | None:
        """Create the first admin from the environment when there is no admin yet; None if there is."""
        if self.admins():
            return None
        existing = self.db(self.db.auth_user.email == check_email(email)).select().first()
        if existing:
            return self.update_user(existing.id, role="admin", active=True, password=password)
        return self.create_user(email, password, "admin")

    def check_login(self, email: str, password: str) -> User | None:
        """The user when the e-mail and password match an active account, else None.

        Exactly one password hash in every case (an unknown e-mail, a disabled account, a wrong
        password): the answer's time does not tell which accounts exist."""
        if not isinstance(email, str) or not isinstance(password, str) or len(password) > 1024:
            password = ""
        email = normalize_email(email) if isinstance(email, str) else ""
        row = self.db(self.db.auth_user.email == email).select().first() if email else None
        stored = row.password if row is not None and row.password else _dummy_hash()
        matches = CRYPT()(password)[0] == stored  # the stored hash names its own algorithm and cost
        if row is None or not matches or row.action_token == BLOCKED:
            return None
        return self._user(row)

    # -- API tokens ------------------------------------------------------------------------------------

    def mint_api_token(self, user_id: int, name: str, days: int) -> tuple[dict[str, Any], str]:
        """A new API token of ``user_id``: its record and the token itself (shown once)."""
        name = (name or "").strip()
        if not 1 <= len(name) <= 100:
            raise StoreError("name: 1 to 100 characters")
        table = self.db.api_token
        if self.db((table.user_id == user_id) & (table.revoked == False)).count() >= MAX_TOKENS_PER_USER:  # noqa: E712
            raise StoreError(f"at most {MAX_TOKENS_PER_USER} tokens per user: revoke some first")
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        now = utcnow()
        user = self.user(user_id)
        token_id = table.insert(
            user_id=user_id,
            epoch=user.epoch if user else -1,
            name=name,
            digest=_digest(token),
            hint=token[: len(TOKEN_PREFIX) + 4],
            created_on=now,
            expires_on=now + dt.timedelta(days=days),
            revoked=False,
        )
        self.db.commit()
        return self._token(table(token_id)), token

    def api_tokens(self, user_id: int | None = None) -> list[dict[str, Any]]:
        table = self.db.api_token
        query = table.id > 0 if user_id is None else table.user_id == user_id
        return [self._token(r) for r in self.db(query).select(orderby=table.id)]

    def revoke_api_token(self, token_id: int, user_id: int | None) -> bool:
        """Revoke a token (of ``user_id`` only, unless None: an admin's call)."""
        table = self.db.api_token
        query = table.id == token_id
        if user_id is not None:
            query &= table.user_id == user_id
        n = self.db(query).update(revoked=True)
        self.db.commit()
        return n > 0

    def api_user(self, token: str) -> User | None:
        """The active user of a valid, unexpired, unrevoked token; None otherwise."""
        if not isinstance(token, str) or not token.startswith(TOKEN_PREFIX) or len(token) > 200:
            return None
        table = self.db.api_token
        row = self.db(table.digest == _digest(token)).select().first()
        # the lookup is by digest (an index, not a comparison of secrets); check again in constant time
        if row is None or not secrets.compare_digest(row.digest, _digest(token)):
            return None
        if row.revoked or row.expires_on < utcnow():
            return None
        user = self.user(row.user_id)
        if user is None or not user.active or (row.epoch or 0) != user.epoch:
            return None
        if row.last_used_on is None or (utcnow() - row.last_used_on).total_seconds() > 60:
            row.update_record(last_used_on=utcnow())
            self.db.commit()
        return user

    @staticmethod
    def _token(row: Any) -> dict[str, Any]:
        return {
            "id": row.id,
            "user_id": row.user_id,
            "name": row.name,
            "hint": row.hint + "...",
            "created": _iso(row.created_on),
            "expires": _iso(row.expires_on),
            "last_used": _iso(row.last_used_on),
            "revoked": bool(row.revoked),
        }


def _iso(value: dt.datetime | None) -> str | None:
    return None if value is None else value.isoformat() + "Z"


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


_DUMMY: list[str] = []
_DUMMY_LOCK = threading.Lock()


def _dummy_hash() -> str:
    """A hash of the same algorithm and cost as a real one, of a password nobody knows (made once)."""
    with _DUMMY_LOCK:
        if not _DUMMY:
            _DUMMY.append(str(HASH(secrets.token_urlsafe(24))[0]))
        return _DUMMY[0]


def normalize_email(email: str) -> str:
    """The form an address is stored and looked up in: NFKC, trimmed, lower case."""
    return unicodedata.normalize("NFKC", email).strip().lower()


def _script(char: str) -> str:
    """The script of a letter, from its Unicode name (LATIN, CYRILLIC, GREEK, ...); "" for the rest."""
    if not char.isalpha():
        return ""
    return unicodedata.name(char, "UNKNOWN").split(" ")[0]


def check_email(email: object) -> str:
    """A normalized address; refused when it could pass for another: a local part that is not ASCII,
    a domain label mixing scripts (``exаmple.com`` with a Cyrillic ``а``), or one IDNA cannot encode."""
    if not isinstance(email, str) or len(email) > 254:
        raise StoreError("email: not an e-mail address")
    email = normalize_email(email)
    if not EMAIL_RE.fullmatch(email):
        raise StoreError("email: not an e-mail address")
    local, _, domain = email.rpartition("@")
    if not LOCAL_RE.fullmatch(local):
        raise StoreError("email: the part before @ must be ASCII letters, digits or .!#$%&'*+/=?^_`{|}~-")
    for label in domain.split("."):
        if len({_script(c) for c in label} - {""}) > 1:
            raise StoreError("email: a domain mixing alphabets (a look-alike of another address)")
        if not label.isascii():
            try:
                label.encode("idna")
            except UnicodeError:
                raise StoreError("email: not a valid domain name") from None
    return email


def check_password(password: object) -> str:
    if not isinstance(password, str) or not MIN_PASSWORD <= len(password) <= 1024:
        raise StoreError(f"password: {MIN_PASSWORD} to 1024 characters")
    return password


def check_role(role: object) -> str:
    if role not in ROLES:
        raise StoreError("role: admin or viewer")
    return role  # type: ignore[return-value]


def open_store(settings: ScpSettings, session: Any = None, *, pool_size: int = 4) -> Store:
    """Connect to ``PYDAL_URI`` and define (migrate) the tables.

    pyDAL's migration records live in the database itself (``InDBMigrator``), not in files beside it:
    SCP keeps no state of its own, so replicas and containers with a throw-away data folder agree. A
    database whose tables exist without records (made by files, or by a replica starting at the same
    moment) has them recorded as they are (a fake migration), then migrated normally.
    """
    _private_files(settings)
    try:
        return _define(settings, session, pool_size, fake=False)
    except Exception as exc:  # the driver's own "already exists" error: one per database engine
        if "exist" not in str(exc).lower():
            raise
    _define(settings, session, pool_size, fake=True).db.close()
    return _define(settings, session, pool_size, fake=False)


def _private_files(settings: ScpSettings) -> None:
    """The data folder 0700 and a SQLite database file 0600 (it holds password hashes), made so before
    SQLite opens it (SQLite gives its journal files the database's mode)."""
    folder = settings.scp_data_dir
    os.makedirs(folder, mode=0o700, exist_ok=True)
    os.chmod(folder, 0o700)
    uri = settings.pydal_uri.get_secret_value()
    if not uri.startswith("sqlite://") or uri.endswith(":memory:"):
        return
    name = uri.removeprefix("sqlite://").split("?")[0]
    path = os.path.join(folder, name)  # pyDAL: a relative file is in the folder; an absolute one stays
    os.makedirs(os.path.dirname(path) or ".", mode=0o700, exist_ok=True)
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))  # an empty file is a new SQLite database
    os.chmod(path, 0o600)  # an older install's file, made 0644


def _define(settings: ScpSettings, session: Any, pool_size: int, fake: bool) -> Store:
    uri = settings.pydal_uri.get_secret_value()
    db = DAL(uri, folder=settings.scp_data_dir, pool_size=pool_size, migrate=True, fake_migrate_all=fake,
             lazy_tables=False, adapter_args={"migrator": InDBMigrator})  # fmt: skip
    try:
        DatabaseStoredFile.web2py_filesystems.discard(db._uri)  # pyDAL's cache: the database may be new
        DatabaseStoredFile.try_create_web2py_filesystem(db)  # the migrator's records (if not there yet)
        db.commit()
        return _tables(db, settings, session)
    except Exception:
        db.rollback()
        db.close()
        raise


def _tables(db: DAL, settings: ScpSettings, session: Any) -> Store:
    auth = Auth(
        session,
        db,
        define_tables=False,
        use_username=False,
        registration_requires_confirmation=False,
        extra_fields=[
            Field("role", "string", length=16, default="viewer", readable=True, writable=False),
            Field("auth_epoch", "integer", default=0, readable=False, writable=False),
        ],
        login_expiration_time=settings.scp_session_ttl_s,
        password_complexity=None,
        inject=False,
    )
    auth.define_tables()
    db.define_table(
        "api_token",
        Field("user_id", "reference auth_user", ondelete="CASCADE"),
        Field("name", "string", length=100),
        Field("digest", "string", length=64, unique=True),
        Field("hint", "string", length=16),
        Field("created_on", "datetime"),
        Field("expires_on", "datetime"),
        Field("last_used_on", "datetime"),
        Field("revoked", "boolean", default=False),
        Field("epoch", "integer", default=0),  # the user's auth_epoch when made
    )
    db.commit()
    return Store(db, auth)
