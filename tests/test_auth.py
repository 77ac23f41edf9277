"""Access tokens: minting, verification and every rejection, each with a clear reason."""

from __future__ import annotations

import time

import jwt
import pytest

from bluewren.auth import MAX_ID_LENGTH, TokenIssuer
from bluewren.errors import AuthError

SECRET = "s" * 48


def test_minted_token_verifies_to_its_user_and_device() -> None:
    issuer = TokenIssuer(SECRET)
    before = int(time.time())
    identity = issuer.verify(issuer.mint("alice", "phone", ttl=60))
    assert (identity.user, identity.device) == ("alice", "phone")
    assert before <= identity.issued_at <= identity.expires_at - 60 + 1
    assert 0 < identity.seconds_left() <= 60


def test_every_token_gets_a_distinct_id() -> None:
    issuer = TokenIssuer(SECRET)
    ids = {issuer.verify(issuer.mint("alice")).token_id for _ in range(100)}
    assert len(ids) == 100


def test_expired_token_is_refused_past_the_leeway() -> None:
    issuer = TokenIssuer(SECRET, leeway=0)
    now = int(time.time())
    token = jwt.encode(
        {"sub": "a", "dev": "d", "jti": "j", "iat": now - 20, "exp": now - 10}, SECRET
    )
    with pytest.raises(AuthError, match="expired"):
        issuer.verify(token)
    assert TokenIssuer(SECRET, leeway=30).verify(token).user == "a"


def test_token_signed_with_another_secret_is_refused() -> None:
    token = TokenIssuer("x" * 48).mint("mallory")
    with pytest.raises(AuthError, match="invalid token"):
        TokenIssuer(SECRET).verify(token)


def test_unsigned_token_is_refused() -> None:
    now = int(time.time())
    claims = {"sub": "a", "dev": "d", "jti": "j", "iat": now, "exp": now + 60}
    token = jwt.encode(claims, None, algorithm="none")
    with pytest.raises(AuthError, match="invalid token"):
        TokenIssuer(SECRET).verify(token)


@pytest.mark.parametrize("missing", ["sub", "dev", "jti", "iat", "exp"])
def test_token_without_a_required_claim_names_it(missing: str) -> None:
    now = int(time.time())
    claims: dict[str, object] = {"sub": "a", "dev": "d", "jti": "j", "iat": now, "exp": now + 60}
    del claims[missing]
    with pytest.raises(AuthError, match=repr(missing)):
        TokenIssuer(SECRET).verify(jwt.encode(claims, SECRET))


def test_issuer_is_checked_when_configured() -> None:
    token = TokenIssuer(SECRET, issuer="other").mint("a")
    with pytest.raises(AuthError, match="'bluewren'"):
        TokenIssuer(SECRET, issuer="bluewren").verify(token)


def test_garbage_is_refused_not_crashed_on() -> None:
    for junk in ["", "a.b.c", "\x00" * 10, "e30.e30.", "x" * 10_000]:
        with pytest.raises(AuthError):
            TokenIssuer(SECRET).verify(junk)


def test_short_secret_is_refused_with_a_hint() -> None:
    with pytest.raises(AuthError, match="at least 32"):
        TokenIssuer("short")


@pytest.mark.parametrize(
    ("user", "device", "reason"),
    [
        ("", "d", "non-empty"),
        ("u" * (MAX_ID_LENGTH + 1), "d", "longer than"),
        ("u", "d\n", "control characters"),
    ],
)
def test_bad_ids_are_refused_at_mint(user: str, device: str, reason: str) -> None:
    with pytest.raises(AuthError, match=reason):
        TokenIssuer(SECRET).mint(user, device)


def test_ttl_outside_its_bounds_is_refused() -> None:
    issuer = TokenIssuer(SECRET, max_ttl=3600)
    issuer.mint("a", ttl=3600)
    for ttl in (0, -1, 3601):
        with pytest.raises(AuthError, match="ttl"):
            issuer.mint("a", ttl=ttl)
