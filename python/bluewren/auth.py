"""Signed access tokens: who a connection is, on which device, until when.

A token is a JWT (HS256 by default) with the claims

``sub``  user id            ``dev``  device id           ``jti``  unique token id
``iat``  issued at (s)      ``exp``  expiry (s)          ``iss``  issuer (optional)

The node verifies a token once at connect and then keeps its ``exp``: a
connection whose token expires is closed (the client reconnects with a fresh
one), so expiry holds during a connection and not only at its start.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass

import jwt

from bluewren.errors import AuthError

__all__ = ["Identity", "TokenIssuer"]

#: Longest user or device id accepted in a token, in characters.
MAX_ID_LENGTH = 128
_ALGORITHMS = ("HS256", "HS384", "HS512")


@dataclass(frozen=True, slots=True)
class Identity:
    """The verified claims of a token."""

    user: str
    device: str
    token_id: str
    issued_at: int
    expires_at: int

    def seconds_left(self, now: float | None = None) -> float:
        """Seconds until the token expires (negative once it has)."""
        return self.expires_at - (time.time() if now is None else now)


def _check_id(kind: str, value: object) -> str:
    if not isinstance(value, str) or not value:
        raise AuthError(f"token claim {kind!r} must be a non-empty string")
    if len(value) > MAX_ID_LENGTH:
        raise AuthError(f"token claim {kind!r} is longer than {MAX_ID_LENGTH} characters")
    if not value.isprintable():
        raise AuthError(f"token claim {kind!r} contains control characters")
    return value


class TokenIssuer:
    """Mints and verifies tokens with one shared secret.

    ``leeway`` tolerates clock skew between the minting host and the node, in
    seconds; ``max_ttl`` caps what :meth:`mint` will sign.
    """

    def __init__(
        self,
        secret: str | bytes,
        *,
        algorithm: str = "HS256",
        issuer: str | None = None,
        leeway: float = 5.0,
        max_ttl: float = 30 * 24 * 3600,
    ) -> None:
        if len(secret) < 32:
            raise AuthError(
                f"the token secret is {len(secret)} bytes; use at least 32 random bytes "
                "(e.g. `python -c 'import secrets; print(secrets.token_urlsafe(48))'`)"
            )
        if algorithm not in _ALGORITHMS:
            raise AuthError(f"token algorithm {algorithm!r} unsupported; use one of {_ALGORITHMS}")
        self._secret = secret
        self._algorithm = algorithm
        self._issuer = issuer
        self._leeway = leeway
        self._max_ttl = max_ttl

    def mint(self, user: str, device: str = "default", *, ttl: float = 3600.0) -> str:
        """A signed token for ``user`` on ``device``, valid for ``ttl`` seconds."""
        _check_id("sub", user)
        _check_id("dev", device)
        if not 0 < ttl <= self._max_ttl:
            raise AuthError(f"token ttl must be in (0, {self._max_ttl:g}] seconds, got {ttl:g}")
        now = int(time.time())
        claims: dict[str, object] = {
            "sub": user,
            "dev": device,
            "jti": secrets.token_urlsafe(12),
            "iat": now,
            "exp": now + int(ttl),
        }
        if self._issuer is not None:
            claims["iss"] = self._issuer
        return jwt.encode(claims, self._secret, algorithm=self._algorithm)

    def verify(self, token: str) -> Identity:
        """The identity in ``token``; raises :class:`AuthError` saying what is wrong."""
        try:
            claims = jwt.decode(
                token,
                self._secret,
                algorithms=[self._algorithm],
                issuer=self._issuer,
                leeway=self._leeway,
                options={"require": ["sub", "dev", "jti", "iat", "exp"]},
            )
        except jwt.ExpiredSignatureError:
            raise AuthError("token expired; request a new one") from None
        except jwt.MissingRequiredClaimError as exc:
            raise AuthError(f"token lacks the {exc.claim!r} claim") from None
        except jwt.InvalidIssuerError:
            raise AuthError(f"token was not issued by {self._issuer!r}") from None
        except jwt.ImmatureSignatureError:
            raise AuthError("token is not valid yet (issued in the future)") from None
        except jwt.InvalidTokenError as exc:
            raise AuthError(f"invalid token: {exc}") from None
        return Identity(
            user=_check_id("sub", claims["sub"]),
            device=_check_id("dev", claims["dev"]),
            token_id=_check_id("jti", claims["jti"]),
            issued_at=int(claims["iat"]),
            expires_at=int(claims["exp"]),
        )
