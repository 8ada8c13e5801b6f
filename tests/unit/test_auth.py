"""edge.auth.TokenService: HS256 only, expiry with a small leeway, claims, rotation."""

import time

import jwt
import pytest

from edge.auth import InvalidToken, TokenService

SECRET = "s" * 64
OLD = "o" * 64
ROOM = "11111111-1111-4111-8111-111111111111"
PID = "aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa"


def claims(**changes: object) -> dict[str, object]:
    now = int(time.time())
    return {
        "room_id": ROOM,
        "participant_id": PID,
        "participant_name": "A",
        "iat": now,
        "exp": now + 60,
    } | changes


def test_issue_and_verify_roundtrip() -> None:
    tokens = TokenService(SECRET, ttl=3600)
    issued, _ = tokens.issue(room_id=ROOM, participant_id=PID, participant_name="Ann")
    verified = tokens.verify(issued)
    assert (verified.room_id, verified.participant_id, verified.participant_name) == (
        ROOM,
        PID,
        "Ann",
    )
    assert verified.exp - verified.iat == 3600


@pytest.mark.parametrize(
    "token",
    [
        jwt.encode(claims(), SECRET, algorithm="HS512"),
        jwt.encode(claims(), None, algorithm="none"),
        jwt.encode(claims(exp=int(time.time()) - 120), SECRET, algorithm="HS256"),
        jwt.encode({k: v for k, v in claims().items() if k != "exp"}, SECRET, algorithm="HS256"),
        jwt.encode(claims(room_id="a.b.*"), SECRET, algorithm="HS256"),
        jwt.encode(claims(participant_id=">"), SECRET, algorithm="HS256"),
        jwt.encode(claims(participant_name=5), SECRET, algorithm="HS256"),
        "",
        "a.b.c",
    ],
    ids=[
        "hs512",
        "none",
        "expired",
        "no-exp",
        "room-wildcard",
        "pid-wildcard",
        "name-type",
        "empty",
        "junk",
    ],
)
def test_refused(token: str) -> None:
    with pytest.raises(InvalidToken):
        TokenService(SECRET, ttl=60).verify(token)


def test_leeway_forgives_a_little_clock_skew() -> None:
    late = jwt.encode(claims(exp=int(time.time()) - 10), SECRET, algorithm="HS256")
    assert TokenService(SECRET, ttl=60).verify(late).room_id == ROOM


def test_rotation_accepts_the_previous_secret_and_signs_with_the_new_one() -> None:
    old_token = jwt.encode(claims(), OLD, algorithm="HS256")
    with pytest.raises(InvalidToken):
        TokenService(SECRET, ttl=60).verify(old_token)
    rotating = TokenService(SECRET, ttl=60, previous=OLD)
    assert rotating.verify(old_token).participant_id == PID
    fresh, _ = rotating.issue(room_id=ROOM, participant_id=PID, participant_name="A")
    jwt.decode(fresh, SECRET, algorithms=["HS256"])
    assert SECRET not in repr(rotating)
