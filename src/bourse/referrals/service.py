"""Referral codes, referral links, the IB hierarchy and commission plans.

Functions that take a ``Session`` add and flush; the caller's boundary commits
(one transaction per request). Nothing here moves money: commission accrual
reads :func:`upline`, :func:`plan_at` and :func:`split_commission`.
"""

from __future__ import annotations

import re
import secrets
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from bourse.assets.rounding import BPS, bps, split
from bourse.errors import raises
from bourse.identity.models import Role, User
from bourse.logging import get_logger
from bourse.referrals.errors import (
    AlreadyReferred,
    IbNotFound,
    InvalidReferralCode,
    NotAnIb,
    PlanExceedsFee,
    PlanInvalid,
    PlanTooDeep,
    ReferralCodeNotFound,
    ReferralCodeTaken,
    SelfReferral,
    TooManyReferralCodes,
    UnknownReferralCode,
)
from bourse.referrals.models import CODE_MAX_LENGTH, CODE_MIN_LENGTH, CommissionPlan, PlanKind, Referral, ReferralCode

log = get_logger(__name__)

CODE_PATTERN = re.compile(rf"^[A-Z0-9-]{{{CODE_MIN_LENGTH},{CODE_MAX_LENGTH}}}$")
# No 0/O or 1/I: generated codes are read aloud and typed from paper.
_GENERATED_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"
GENERATED_CODE_LENGTH = 10  # 32**10 = 2**50 codes: a collision is retried, not expected
_GENERATE_ATTEMPTS = 5
# An IB needs a handful of codes (one per campaign); a cap keeps a runaway script
# from filling the table. Deactivated codes do not count.
MAX_ACTIVE_CODES_PER_IB = 100

SYMBOL_PATTERN = re.compile(r"^[A-Z0-9]{2,12}-[A-Z0-9]{2,12}$")
# A non-negative decimal in the quote asset's units, at most 8 decimals (the
# largest asset scale). Accrual converts it at the quote asset's own scale.
_PER_LOT_AMOUNT = re.compile(r"^(0|[1-9][0-9]{0,14})(\.[0-9]{1,8})?$")
MAX_PER_LOT_SYMBOLS = 1000
# IN lists are sent in chunks: SQLite and PostgreSQL both limit bound parameters.
_IN_CHUNK = 500


def _now() -> datetime:
    return datetime.now(UTC)


def _chunks(ids: Sequence[uuid.UUID]) -> Iterator[Sequence[uuid.UUID]]:
    for start in range(0, len(ids), _IN_CHUNK):
        yield ids[start : start + _IN_CHUNK]


# --- referral codes -----------------------------------------------------------------------


def normalise_code(raw: str) -> str:
    """Codes are upper-case; what people type is trimmed and upper-cased before lookup."""
    return raw.strip().upper()


def generate_code() -> str:
    return "".join(secrets.choice(_GENERATED_ALPHABET) for _ in range(GENERATED_CODE_LENGTH))


def _require_ib(session: Session, user_id: uuid.UUID, *, lock: bool = False) -> User:
    user = session.get(User, user_id, with_for_update=lock)
    if user is None:
        raise IbNotFound("There is no such user")
    if user.role != Role.ib:
        raise NotAnIb("This user is not an introducing broker")
    return user


def create_code(
    session: Session, ib_user_id: uuid.UUID, code: str | None = None, *, now: datetime | None = None
) -> ReferralCode:
    """A new active code for the IB: the one asked for, or a random one.

    Refusals: ``invalid_referral_code`` (not 6 to 32 of ``A-Z``, ``0-9``, ``-``),
    ``referral_code_taken`` (any IB's code, active or not: codes are never
    reused), ``too_many_referral_codes``.
    """
    # Locks the IB's row, so that concurrent creations count active codes one at a time.
    _require_ib(session, ib_user_id, lock=True)
    active = session.scalar(
        select(func.count())
        .select_from(ReferralCode)
        .where(ReferralCode.ib_user_id == ib_user_id, ReferralCode.active.is_(True))
    )
    if (active or 0) >= MAX_ACTIVE_CODES_PER_IB:
        raise TooManyReferralCodes(f"At most {MAX_ACTIVE_CODES_PER_IB} active codes; deactivate one first")
    created = now or _now()
    if code is not None:
        wanted = normalise_code(code)
        if not CODE_PATTERN.match(wanted):
            raise InvalidReferralCode(
                f"A referral code is {CODE_MIN_LENGTH} to {CODE_MAX_LENGTH} characters: A-Z, 0-9 and -"
            )
        if not _insert_code(session, wanted, ib_user_id, created):
            raise ReferralCodeTaken("This referral code is already taken")
        row = session.get_one(ReferralCode, wanted)
    else:
        for _ in range(_GENERATE_ATTEMPTS):
            candidate = generate_code()
            if _insert_code(session, candidate, ib_user_id, created):
                row = session.get_one(ReferralCode, candidate)
                break
        else:  # pragma: no cover - 2**50 codes: five collisions in a row do not happen
            raise ReferralCodeTaken("Could not find a free referral code; try again")
    log.info("referral_code_created", ib_user_id=str(ib_user_id), code=row.code)
    return row


def _insert_code(session: Session, code: str, ib_user_id: uuid.UUID, now: datetime) -> bool:
    """Insert the code unless it exists; False if it does (or a concurrent insert won)."""
    if session.get(ReferralCode, code) is not None:
        return False
    try:
        # A savepoint: losing a race for the same code leaves the transaction usable.
        with session.begin_nested():
            session.add(ReferralCode(code=code, ib_user_id=ib_user_id, active=True, created_at=now))
    except IntegrityError:
        return False
    return True


@dataclass(frozen=True)
class CodeSummary:
    code: str
    active: bool
    created_at: datetime
    referred_users: int


def list_codes(session: Session, ib_user_id: uuid.UUID) -> list[CodeSummary]:
    """The IB's codes, newest first, each with how many users registered with it."""
    counts = (
        select(Referral.code, func.count().label("n"))
        .where(Referral.ib_user_id == ib_user_id)
        .group_by(Referral.code)
        .subquery()
    )
    rows = session.execute(
        select(ReferralCode, func.coalesce(counts.c.n, 0))
        .outerjoin(counts, counts.c.code == ReferralCode.code)
        .where(ReferralCode.ib_user_id == ib_user_id)
        .order_by(ReferralCode.created_at.desc(), ReferralCode.code)
    ).all()
    return [
        CodeSummary(code=row.code, active=row.active, created_at=row.created_at, referred_users=int(count))
        for row, count in rows
    ]


def deactivate_code(session: Session, ib_user_id: uuid.UUID, code: str) -> ReferralCode:
    """Stop a code from being used to register. Users already referred stay referred.

    Another IB's code is ``referral_code_not_found``, exactly like a code that does
    not exist. Deactivating an inactive code is harmless.
    """
    row = session.get(ReferralCode, normalise_code(code), with_for_update=True)
    if row is None or row.ib_user_id != ib_user_id:
        raise ReferralCodeNotFound("No such referral code")
    if row.active:
        row.active = False
        session.flush()
        log.info("referral_code_deactivated", ib_user_id=str(ib_user_id), code=row.code)
    return row


# --- referral links -----------------------------------------------------------------------


def active_code(session: Session, raw: str) -> ReferralCode:
    """The active code ``raw`` names (case-insensitive), or ``unknown_referral_code``.

    The row is share-locked: registrations with the same code run side by side,
    while a concurrent deactivation waits for them to finish.
    """
    code = normalise_code(raw)
    row = session.get(ReferralCode, code, with_for_update={"read": True}) if CODE_PATTERN.match(code) else None
    if row is None or not row.active:
        raise UnknownReferralCode("This referral code does not exist or is no longer active")
    return row


def refer(session: Session, user_id: uuid.UUID, code: ReferralCode, *, now: datetime | None = None) -> Referral:
    """Link ``user_id`` to the IB owning ``code``: once per user, for ever.

    Registration calls this in the transaction that creates the user. Refusals:
    ``self_referral`` (an IB using their own code), ``already_referred``.
    """
    if code.ib_user_id == user_id:
        raise SelfReferral("Nobody can be referred by themselves")
    if session.get(Referral, user_id) is not None:
        raise AlreadyReferred("This user was already referred")
    referral = Referral(user_id=user_id, ib_user_id=code.ib_user_id, code=code.code, created_at=now or _now())
    try:
        with session.begin_nested():
            session.add(referral)
    except IntegrityError:
        raise AlreadyReferred("This user was already referred") from None
    log.info("user_referred", user_id=str(user_id), ib_user_id=str(code.ib_user_id), code=code.code)
    return referral


@raises(UnknownReferralCode)
def referral_at_signup(session: Session, raw: str) -> Callable[[uuid.UUID], None]:
    """Identity's registration hook (:class:`bourse.identity.api.ReferralAtSignup`), passed in by
    :mod:`bourse.app`: check the code before the user exists, then link the new user to it.

    An unknown or inactive code is refused (``unknown_referral_code``) and no user is created.
    """
    code = active_code(session, raw)

    def link(user_id: uuid.UUID) -> None:
        refer(session, user_id, code)

    return link


def referrer_of(session: Session, user_id: uuid.UUID) -> uuid.UUID | None:
    """Who referred the user, whatever that user's role is now."""
    return session.scalar(select(Referral.ib_user_id).where(Referral.user_id == user_id))


def upline(session: Session, user_id: uuid.UUID, max_depth: int) -> list[uuid.UUID]:
    """The IBs above ``user_id``: ``[level 1, level 2, ...]``, at most ``max_depth`` of them.

    Level 1 referred the user, level 2 referred level 1, and so on. The walk stops
    at the first referrer who is no longer an IB (a demoted IB earns nothing, and
    the IBs above them are not moved up a level, which would pay them the rate of
    a level they do not hold), at a user nobody referred, and at an id already
    seen (a cycle cannot be created, but a walk must never loop).
    """
    if max_depth < 0:
        raise ValueError("max_depth is never negative")
    chain: list[uuid.UUID] = []
    seen = {user_id}
    current = user_id
    while len(chain) < max_depth:
        found = session.execute(
            select(Referral.ib_user_id, User.role)
            .join(User, User.id == Referral.ib_user_id)
            .where(Referral.user_id == current)
        ).one_or_none()
        if found is None:
            break
        ib_user_id, role = found
        if Role(role) != Role.ib or ib_user_id in seen:
            break
        chain.append(ib_user_id)
        seen.add(ib_user_id)
        current = ib_user_id
    return chain


@dataclass(frozen=True)
class ReferredUser:
    user_id: uuid.UUID
    email: str
    joined: datetime
    code: str


def referred_users(session: Session, ib_user_id: uuid.UUID, *, limit: int = 100, offset: int = 0) -> list[ReferredUser]:
    """Users the IB referred directly (level 1), newest first."""
    rows = session.execute(
        select(Referral.user_id, User.email, Referral.created_at, Referral.code)
        .join(User, User.id == Referral.user_id)
        .where(Referral.ib_user_id == ib_user_id)
        .order_by(Referral.created_at.desc(), Referral.user_id)
        .limit(limit)
        .offset(offset)
    ).all()
    return [ReferredUser(user_id=r[0], email=r[1], joined=r[2], code=r[3]) for r in rows]


@dataclass(frozen=True)
class DownlineMember:
    user_id: uuid.UUID
    email: str
    role: Role
    level: int
    referred_by: uuid.UUID
    joined: datetime


def downline(session: Session, ib_user_id: uuid.UUID, max_depth: int) -> list[DownlineMember]:
    """Everybody below the IB, to ``max_depth`` levels, ordered by level then join time.

    The mirror of :func:`upline`: a member's own referrals count only while that
    member is an IB, so every member listed at level ``n`` has this IB at level
    ``n`` of their upline.
    """
    members: list[DownlineMember] = []
    seen = {ib_user_id}
    parents = [ib_user_id]
    for level in range(1, max_depth + 1):
        if not parents:
            break
        found: list[DownlineMember] = []
        for chunk in _chunks(parents):
            rows = session.execute(
                select(Referral.user_id, User.email, User.role, Referral.ib_user_id, Referral.created_at)
                .join(User, User.id == Referral.user_id)
                .where(Referral.ib_user_id.in_(chunk))
            ).all()
            found.extend(
                DownlineMember(user_id=r[0], email=r[1], role=Role(r[2]), level=level, referred_by=r[3], joined=r[4])
                for r in rows
                if r[0] not in seen
            )
        found.sort(key=lambda m: (m.joined, str(m.user_id)))
        members.extend(found)
        seen.update(m.user_id for m in found)
        parents = [m.user_id for m in found if m.role == Role.ib]
    return members


# --- commission plans ---------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """One version of an IB's commission plan, as accrual reads it.

    ``levels`` (basis points, level 1 first) is set for ``percent_of_fee``;
    ``amounts`` (symbol to decimal string in the quote asset) for ``per_lot``.
    """

    id: uuid.UUID
    ib_user_id: uuid.UUID
    kind: PlanKind
    valid_from: datetime
    valid_to: datetime | None
    created_by: uuid.UUID | None
    levels: tuple[int, ...] = ()
    amounts: Mapping[str, str] = field(default_factory=dict)


def _plan(row: CommissionPlan) -> Plan:
    kind = PlanKind(row.kind)
    terms: Mapping[str, Any] = row.terms or {}
    return Plan(
        id=row.id,
        ib_user_id=row.ib_user_id,
        kind=kind,
        valid_from=row.valid_from,
        valid_to=row.valid_to,
        created_by=row.created_by,
        levels=tuple(int(v) for v in terms.get("levels", ())),
        amounts={str(k): str(v) for k, v in dict(terms.get("amounts", {})).items()},
    )


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def validate_percent_of_fee(levels: Iterable[object], max_depth: int) -> list[int]:
    """Checked levels: each 0 to 10000 bps, at most ``max_depth`` of them, summing to at most 10000.

    Refusals: ``plan_invalid``, ``plan_too_deep``, ``plan_exceeds_fee``.
    """
    checked = list(levels)
    if not checked:
        raise PlanInvalid("A percent_of_fee plan needs at least one level")
    for index, value in enumerate(checked, start=1):
        if not _is_int(value) or not 0 <= value <= BPS:  # type: ignore[operator]
            raise PlanInvalid(f"Level {index}: basis points are a whole number from 0 to {BPS}")
    if len(checked) > max_depth:
        raise PlanTooDeep(f"At most {max_depth} levels (BOURSE_IB_MAX_DEPTH), not {len(checked)}")
    values = [int(v) for v in checked]  # type: ignore[call-overload]
    if sum(values) > BPS:
        raise PlanExceedsFee(f"The levels add up to {sum(values)} bps: more than the whole fee ({BPS})")
    return values


def validate_per_lot(amounts: Mapping[str, object]) -> dict[str, str]:
    """Checked amounts: instrument symbols such as ``BTC-USD`` to non-negative decimal strings.

    Symbols are checked by shape only: instruments may be listed after the plan.
    Refusal: ``plan_invalid``.
    """
    if not amounts:
        raise PlanInvalid("A per_lot plan needs an amount for at least one instrument")
    if len(amounts) > MAX_PER_LOT_SYMBOLS:
        raise PlanInvalid(f"At most {MAX_PER_LOT_SYMBOLS} instruments per plan")
    checked: dict[str, str] = {}
    for symbol, amount in amounts.items():
        if not isinstance(symbol, str) or not SYMBOL_PATTERN.match(symbol):
            raise PlanInvalid("Instrument symbols look like BTC-USD: 2 to 12 of A-Z and 0-9, a dash, 2 to 12 more")
        if not isinstance(amount, str) or not _PER_LOT_AMOUNT.match(amount):
            raise PlanInvalid(
                f'{symbol}: the amount per lot is a non-negative decimal string with at most 8 decimals, e.g. "0.50"'
            )
        checked[symbol] = amount
    return checked


def set_plan(
    session: Session,
    ib_user_id: uuid.UUID,
    *,
    kind: PlanKind,
    max_depth: int,
    levels: Iterable[object] | None = None,
    amounts: Mapping[str, object] | None = None,
    actor: uuid.UUID | None = None,
    now: datetime | None = None,
) -> Plan:
    """Replace the IB's plan: the current one (if any) ends now and the new one starts.

    Refusals: ``ib_not_found``, ``not_an_ib``, ``plan_invalid``, ``plan_too_deep``,
    ``plan_exceeds_fee``. The IB's user row is locked, so concurrent replacements
    happen one after the other and each closes its predecessor.
    """
    kind = PlanKind(kind)
    if kind is PlanKind.percent_of_fee:
        if amounts is not None:
            raise PlanInvalid("A percent_of_fee plan has levels, not amounts")
        terms: dict[str, Any] = {"levels": validate_percent_of_fee(levels or (), max_depth)}
    else:
        if levels is not None:
            raise PlanInvalid("A per_lot plan has amounts, not levels")
        terms = {"amounts": validate_per_lot(amounts or {})}
    _require_ib(session, ib_user_id, lock=True)
    start = now or _now()
    current = session.scalars(
        select(CommissionPlan).where(CommissionPlan.ib_user_id == ib_user_id, CommissionPlan.valid_to.is_(None))
    ).one_or_none()
    if current is not None:
        # A clock that stepped back must not give the old plan a negative period.
        start = max(start, current.valid_from)
        current.valid_to = start
        session.flush()  # close it before the new row claims "current"
    row = CommissionPlan(
        id=uuid.uuid4(),
        ib_user_id=ib_user_id,
        kind=kind,
        terms=terms,
        valid_from=start,
        valid_to=None,
        created_by=actor,
        created_at=_now(),
    )
    session.add(row)
    session.flush()
    log.info(
        "commission_plan_set",
        ib_user_id=str(ib_user_id),
        plan_id=str(row.id),
        kind=kind.value,
        replaced=str(current.id) if current is not None else None,
        actor=str(actor) if actor is not None else None,
    )
    return _plan(row)


def current_plan(session: Session, ib_user_id: uuid.UUID) -> Plan | None:
    row = session.scalars(
        select(CommissionPlan).where(CommissionPlan.ib_user_id == ib_user_id, CommissionPlan.valid_to.is_(None))
    ).one_or_none()
    return None if row is None else _plan(row)


def plan_history(session: Session, ib_user_id: uuid.UUID) -> list[Plan]:
    """Every version of the IB's plan, newest first."""
    rows = session.scalars(
        select(CommissionPlan)
        .where(CommissionPlan.ib_user_id == ib_user_id)
        .order_by(CommissionPlan.valid_from.desc(), CommissionPlan.created_at.desc())
    ).all()
    return [_plan(row) for row in rows]


def plan_at(session: Session, ib_user_id: uuid.UUID, when: datetime) -> Plan | None:
    """The plan in force at ``when`` (``valid_from <= when < valid_to``), or None.

    Accrual calls this with the fill's time, so a plan replaced after a trade
    still pays that trade at the old terms.
    """
    if when.tzinfo is None:
        raise ValueError("plan_at() needs an aware datetime")
    row = session.scalars(
        select(CommissionPlan)
        .where(
            CommissionPlan.ib_user_id == ib_user_id,
            CommissionPlan.valid_from <= when,
            (CommissionPlan.valid_to.is_(None)) | (CommissionPlan.valid_to > when),
        )
        .order_by(CommissionPlan.valid_from.desc())
        .limit(1)
    ).one_or_none()
    return None if row is None else _plan(row)


# --- commission arithmetic ----------------------------------------------------------------


def split_commission(fee: int, levels_bps: Sequence[int]) -> list[int]:
    """Each level's commission on ``fee`` (minor units), level 1 first.

    Each share is rounded down on its own (bourse.assets.rounding.split), so the
    shares never add up to more than the fee; what is left, rounding included,
    stays with the house. ``split_commission(1001, [3000, 1000]) == [300, 100]``.
    """
    if isinstance(fee, bool) or not isinstance(fee, int) or fee < 0:
        raise ValueError("the fee is a non-negative integer of minor units")
    for value in levels_bps:
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= BPS:
            raise ValueError(f"each level is 0 to {BPS} basis points, not {value!r}")
    if sum(levels_bps) > BPS:
        raise ValueError("the levels add up to more than the whole fee")
    shares = split(fee, {str(index): bps(value) for index, value in enumerate(levels_bps)})
    return [shares.parts[str(index)] for index in range(len(levels_bps))]
