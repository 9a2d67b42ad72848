"""Managed keys in the store: plaintext once, digests only, lookup, revocation, expiry parsing."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from sqlalchemy import select

from seekserve.tenancy.keys import KeyLimits, KeyNotFoundError, KeyStore, parse_expiry
from seekserve.tenancy.schema import api_keys
from seekserve.tenancy.store import Store

SQL_METACHARACTERS = [
    "' OR '1'='1",
    "sk-' OR 1=1 --",
    "key_'; DROP TABLE api_keys; --",
    '" OR ""="',
    "%' OR prefix LIKE '%",
    "\\'; SELECT pg_sleep(5); --",
    "sk-x' UNION SELECT * FROM api_keys --",
]


async def test_create_returns_the_plaintext_and_stores_only_its_digest(store: Store) -> None:
    keys = KeyStore(store)
    limits = KeyLimits(rpm=60, tpm=10_000, max_concurrency=4, max_user_concurrency=1,
                       models=frozenset({"deepseek-v4-pro"}), budget_tokens=5000,
                       budget_usd=Decimal("12.345"))
    expires = datetime(2031, 1, 2, 3, 4, 5, tzinfo=UTC)
    created = await keys.create("ci", limits, expires)

    assert created.plaintext.startswith("sk-") and len(created.plaintext) == 46
    assert created.key.digest == hashlib.sha256(created.plaintext.encode()).hexdigest()
    assert created.key.prefix == created.plaintext[:10]
    async with store.read() as conn:
        row = (await conn.execute(select(api_keys))).mappings().one()
    stored = " ".join(str(v) for v in row.values())
    assert created.plaintext not in stored
    assert created.plaintext[10:] not in stored  # not even the part after the prefix

    found = await keys.by_digest(created.key.digest)
    assert found is not None
    assert found.id == created.key.id and found.name == "ci"
    assert found.limits == limits
    assert found.expires_at == expires
    assert found.revoked_at is None and found.is_active(datetime.now(UTC))
    assert await keys.by_digest(hashlib.sha256(b"sk-other").hexdigest()) is None


async def test_revoke_by_id_prefix_or_plaintext(store: Store) -> None:
    keys = KeyStore(store)
    a, b, c = [await keys.create(name) for name in ("a", "b", "c")]
    assert (await keys.revoke(a.key.id)).revoked_at is not None
    assert (await keys.revoke(b.key.prefix + "…")).revoked_at is not None
    revoked_c = await keys.revoke(c.plaintext)
    assert revoked_c.id == c.key.id
    first = revoked_c.revoked_at
    assert first is not None and not revoked_c.is_active(datetime.now(UTC))
    assert (await keys.revoke(c.key.id)).revoked_at == first  # the first revocation stands
    with pytest.raises(KeyNotFoundError):
        await keys.revoke("key_doesnotexist")


@pytest.mark.parametrize("ref", SQL_METACHARACTERS)
async def test_sql_metacharacters_in_a_key_reference_match_nothing(store: Store, ref: str
                                                                    ) -> None:
    keys = KeyStore(store)
    created = await keys.create(ref)  # as a name it is stored verbatim
    with pytest.raises(KeyNotFoundError):
        await keys.revoke(ref)
    [listed] = await keys.list()
    assert listed.name == ref
    assert listed.revoked_at is None
    assert (await keys.by_digest(created.key.digest)) is not None


def test_expiry_accepts_durations_dates_and_datetimes() -> None:
    now = datetime(2030, 5, 1, 12, 0, tzinfo=UTC)
    assert parse_expiry("30d", now) == now + timedelta(days=30)
    assert parse_expiry("12h", now) == now + timedelta(hours=12)
    assert parse_expiry("2w", now) == now + timedelta(weeks=2)
    assert parse_expiry("2031-02-03", now) == datetime(2031, 2, 3, tzinfo=UTC)
    assert parse_expiry("2031-02-03T04:05:00+02:00", now) == datetime(2031, 2, 3, 2, 5,
                                                                       tzinfo=UTC)
    with pytest.raises(ValueError, match="neither a duration"):
        parse_expiry("next tuesday", now)
