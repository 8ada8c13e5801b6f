"""Join tokens: HS256 JWTs carrying the room and participant a client speaks as."""

import re
import time

import jwt
import msgspec

from bus_schema.access import FULL, Grants, identity_problem
from bus_schema.ids import is_uuid

ALGORITHM = "HS256"
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class InvalidToken(Exception):
    """The token is malformed, expired, badly signed or carries bad claims."""


class NotAdmin(Exception):
    """A valid token, but not an admin's (a participant's join token)."""


class Claims(msgspec.Struct, frozen=True, kw_only=True):
    """A participant token's claims (docs/access.md): join tokens carry the
    first five; minted tokens may add ``identity`` and ``grants``."""

    room_id: str
    participant_id: str
    participant_name: str
    iat: int
    exp: int
    identity: str | None = None
    grants: Grants = FULL


class AdminClaims(msgspec.Struct, frozen=True, kw_only=True):
    admin: bool
    iat: int
    exp: int
    sub: str = "admin"


class TokenService:
    def __init__(
        self,
        secret: str,
        *,
        ttl: int,
        previous: str | None = None,
        leeway: float = 30.0,
        max_name_length: int = 100,
    ) -> None:
        self._secret = secret
        self._max_name = max_name_length
        """A token minted offline carries any name its minter chose: the same
        bound as the HTTP endpoints', or every ``welcome`` would carry it."""
        self._keys = [secret] if previous is None else [secret, previous]
        """New tokens are signed with the first; verification also accepts the
        previous one during a rotation."""
        self._ttl = ttl
        self._leeway = leeway

    def __repr__(self) -> str:
        return "TokenService(<secret hidden>)"

    def issue(
        self,
        *,
        room_id: str,
        participant_id: str,
        participant_name: str,
        identity: str | None = None,
        grants: Grants = FULL,
        ttl: int | None = None,
        dated_after: int = 0,
    ) -> tuple[str, int]:
        """A participant token and when it expires (Unix seconds). A token
        issued in the very second of a revocation (or a secret's rotation)
        would be refused, as those go by whole seconds: its ``iat`` is then
        ``dated_after + 1``, which verification's leeway accepts."""
        now = max(int(time.time()), dated_after + 1)
        expires = now + (self._ttl if ttl is None else ttl)
        claims: dict[str, object] = {
            "room_id": room_id,
            "participant_id": participant_id,
            "participant_name": participant_name,
            "iat": now,
            "exp": expires,
        }
        if identity is not None:
            claims["identity"] = identity
        if grants != FULL:
            claims["grants"] = msgspec.to_builtins(grants)
        return jwt.encode(claims, self._secret, algorithm=ALGORITHM), expires

    def issue_admin(self, *, ttl: int = 3600, subject: str = "admin") -> str:
        """A token for the room service API (``admin: true``), never a participant's."""
        now = int(time.time())
        claims = {"admin": True, "sub": subject, "iat": now, "exp": now + ttl}
        return jwt.encode(claims, self._secret, algorithm=ALGORITHM)

    def verify_admin(self, token: str) -> AdminClaims:
        """Verify an admin token: HS256, ``exp`` required, ``admin: true``.

        Raises `InvalidToken` for a bad token and `NotAdmin` for a valid token
        without the claim (a participant's)."""
        payload = self._decode(token, ["exp", "iat"])
        if payload.get("admin") is not True:
            raise NotAdmin()
        try:
            return msgspec.convert(payload, AdminClaims)
        except msgspec.ValidationError as e:
            raise InvalidToken(type(e).__name__) from None

    def _decode(self, token: str, required: list[str]) -> dict[str, object]:
        for key in self._keys:
            try:
                decoded: dict[str, object] = jwt.decode(
                    token,
                    key,
                    algorithms=[ALGORITHM],
                    options={"require": required},
                    leeway=self._leeway,
                )
                return decoded
            except jwt.InvalidSignatureError:
                continue
            except jwt.PyJWTError as e:
                raise InvalidToken(type(e).__name__) from None
        raise InvalidToken("InvalidSignatureError")

    def verify(self, token: str) -> Claims:
        """Verify signature (HS256 only), expiry and claim shapes."""
        payload = None
        for key in self._keys:
            try:
                payload = jwt.decode(
                    token,
                    key,
                    algorithms=[ALGORITHM],
                    options={"require": ["exp", "iat", "room_id", "participant_id"]},
                    leeway=self._leeway,
                )
                break
            except jwt.InvalidSignatureError:
                continue
            except jwt.PyJWTError as e:
                raise InvalidToken(type(e).__name__) from None
        if payload is None:
            raise InvalidToken("InvalidSignatureError")
        try:
            claims = msgspec.convert(payload, Claims)
        except msgspec.ValidationError as e:
            raise InvalidToken(type(e).__name__) from None
        if not (is_uuid(claims.room_id) and is_uuid(claims.participant_id)):
            raise InvalidToken("bad ids")
        if claims.identity is not None and identity_problem(claims.identity) is not None:
            raise InvalidToken("bad identity")
        name = claims.participant_name
        if not name or len(name) > self._max_name or _CONTROL.search(name):
            raise InvalidToken("bad name")
        return claims
