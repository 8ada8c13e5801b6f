"""Join tokens: HS256 JWTs carrying the room and participant a client speaks as."""

import time

import jwt
import msgspec

from bus_schema.ids import is_uuid

ALGORITHM = "HS256"


class InvalidToken(Exception):
    """The token is malformed, expired, badly signed or carries bad claims."""


class Claims(msgspec.Struct, frozen=True, kw_only=True):
    room_id: str
    participant_id: str
    participant_name: str
    iat: int
    exp: int


class TokenService:
    def __init__(self, secret: str, *, ttl: int, leeway: float = 30.0) -> None:
        self._secret = secret
        self._ttl = ttl
        self._leeway = leeway

    def __repr__(self) -> str:
        return "TokenService(<secret hidden>)"

    def issue(self, *, room_id: str, participant_id: str, participant_name: str) -> str:
        now = int(time.time())
        claims = {
            "room_id": room_id,
            "participant_id": participant_id,
            "participant_name": participant_name,
            "iat": now,
            "exp": now + self._ttl,
        }
        return jwt.encode(claims, self._secret, algorithm=ALGORITHM)

    def verify(self, token: str) -> Claims:
        """Verify signature (HS256 only), expiry and claim shapes."""
        try:
            payload = jwt.decode(
                token,
                self._secret,
                algorithms=[ALGORITHM],
                options={"require": ["exp", "iat", "room_id", "participant_id"]},
                leeway=self._leeway,
            )
            claims = msgspec.convert(payload, Claims)
        except (jwt.PyJWTError, msgspec.ValidationError) as e:
            raise InvalidToken(type(e).__name__) from None
        if not (is_uuid(claims.room_id) and is_uuid(claims.participant_id)):
            raise InvalidToken("bad ids")
        return claims
