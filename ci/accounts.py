"""Dashboard accounts: create, remove, disable, list, and check a password.

Passwords are kept only as Argon2id hashes (argon2-cffi's PasswordHasher, the
parameters of RFC 9106's "second recommended option" as that library ships
them). A check of a name that has no account still hashes a password, against a
fixed dummy hash, so a wrong name and a wrong password take the same time and
answer the same: a caller learns nothing about which names exist.

Every function works in the caller's transaction and returns typed records,
never ORM rows (a record outlives its session).
"""

from __future__ import annotations

import functools
import logging
import unicodedata
from dataclasses import dataclass
from datetime import datetime

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from ci.errors import PermanentError
from ci.models import User

logger = logging.getLogger(__name__)

OPERATOR = "operator"
ROLES = (OPERATOR,)
MIN_PASSWORD_LENGTH = 12
MAX_PASSWORD_LENGTH = 1024  # hashing a megabyte "password" per request is a cheap DoS
MAX_NAME_LENGTH = 64

_HASHER = PasswordHasher()


@functools.cache
def dummy_hash() -> str:
    """Verified against when the name has no account: the same work as a real check.

    Made on first use, not at import (an Argon2 hash, ~0.1 s, which every command
    importing this module would pay); the dashboard makes it when it starts, so
    that no login, the first included, takes longer for an unknown name.
    """
    return _HASHER.hash("no such account: this hash only spends the time")


class AccountError(PermanentError):
    """The account cannot be made or changed as asked (the message says why)."""


@dataclass(frozen=True)
class Account:
    """A dashboard account, without its hash."""

    name: str
    role: str
    created_at: datetime
    disabled: bool

    @property
    def may_act(self) -> bool:
        """Whether this account may recheck, abort, drain or enable."""
        return self.role == OPERATOR and not self.disabled


def _record(user: User) -> Account:
    return Account(user.name, user.role, user.created_at, user.disabled)


def check_name(name: str) -> str:
    """The name as stored (NFC); AccountError if it is empty, too long or has
    control or separator characters (names are shown on every audited action)."""
    name = unicodedata.normalize("NFC", name.strip())
    if not name or len(name) > MAX_NAME_LENGTH:
        raise AccountError(f"a name is 1 to {MAX_NAME_LENGTH} characters")
    if any(unicodedata.category(ch)[0] in "CZ" and ch != " " for ch in name):
        raise AccountError("a name has no control, format or line-separator characters")
    return name


def check_password(password: str) -> None:
    """AccountError unless the password is long enough and not absurdly long."""
    if len(password) < MIN_PASSWORD_LENGTH:
        raise AccountError(f"a password has at least {MIN_PASSWORD_LENGTH} characters")
    if len(password) > MAX_PASSWORD_LENGTH:
        raise AccountError(f"a password has at most {MAX_PASSWORD_LENGTH} characters")


def create(session: Session, name: str, password: str, role: str = OPERATOR) -> Account:
    """Add an account; AccountError if the name is taken or name/password/role is invalid."""
    name = check_name(name)
    check_password(password)
    if role not in ROLES:
        raise AccountError(f"unknown role {role!r} (roles: {', '.join(ROLES)})")
    if session.scalar(select(User.id).where(User.name == name)) is not None:
        raise AccountError(f"an account named {name!r} exists")
    user = User(name=name, password_hash=_HASHER.hash(password), role=role, disabled=False)
    session.add(user)
    session.flush()
    logger.info("dashboard account %r created (%s)", name, role)
    return _record(user)


def remove(session: Session, name: str) -> bool:
    """Delete the account (its audit entries keep its name); False if there is none."""
    result = session.execute(delete(User).where(User.name == check_name(name)))
    removed = bool(getattr(result, "rowcount", 0))
    if removed:
        logger.info("dashboard account %r removed", name)
    return removed


def set_disabled(session: Session, name: str, disabled: bool) -> bool:
    """Disable (it can neither log in nor act, its sessions end) or re-enable an account."""
    user = session.scalar(select(User).where(User.name == check_name(name)))
    if user is None:
        return False
    user.disabled = disabled
    return True


def list_accounts(session: Session) -> list[Account]:
    """Every account, by name."""
    return [_record(u) for u in session.scalars(select(User).order_by(User.name))]


def find(session: Session, name: str) -> Account | None:
    """The account of that name, or None (a session's per-request check)."""
    user = session.scalar(select(User).where(User.name == name))
    return _record(user) if user is not None else None


@dataclass(frozen=True)
class Stored:
    """What a password check needs of an account (read in a short transaction)."""

    account: Account
    password_hash: str


@dataclass(frozen=True)
class Checked:
    """A password check's outcome: the account (None: refused), and the new hash
    to store when the old one was made with older parameters."""

    account: Account | None
    new_hash: str | None = None


def stored(session: Session, name: str) -> Stored | None:
    """The account and hash of that name; None for none, or a name that cannot be one."""
    try:
        name = check_name(name)
    except AccountError:
        return None
    user = session.scalar(select(User).where(User.name == name))
    return Stored(_record(user), user.password_hash) if user is not None else None


def check(found: Stored | None, password: str) -> Checked:
    """The Argon2 check itself, outside any transaction (it takes a moment: no
    database lock is held meanwhile).

    Every failure (no such name, wrong password, disabled, an over-long
    password) costs one Argon2 check and gives the same refusal.
    """
    if len(password) > MAX_PASSWORD_LENGTH:
        # No stored password is this long: fail, after the same work on a bounded input.
        found, password = None, password[:MAX_PASSWORD_LENGTH]
    try:
        _HASHER.verify(found.password_hash if found is not None else dummy_hash(), password)
    except (VerificationError, InvalidHashError):
        return Checked(None)
    if found is None or found.account.disabled:
        return Checked(None)
    if _HASHER.check_needs_rehash(found.password_hash):
        return Checked(found.account, _HASHER.hash(password))
    return Checked(found.account)


def store_hash(session: Session, name: str, password_hash: str) -> None:
    """Replace an account's hash (an upgrade after a successful check)."""
    user = session.scalar(select(User).where(User.name == name))
    if user is not None:
        user.password_hash = password_hash


def verify(session: Session, name: str, password: str) -> Account | None:
    """`stored`, `check` and `store_hash` in the caller's transaction: the account
    if the password is its own and it is not disabled, else None."""
    outcome = check(stored(session, name), password)
    if outcome.account is not None and outcome.new_hash is not None:
        store_hash(session, outcome.account.name, outcome.new_hash)
    return outcome.account
