"""Access control as the pure parts decide it (docs/access.md): grants and
identities in tokens, the room actor's rules (bans, revocation, identities,
hidden participants, room admins), and the client frames that ask for them."""

import time

import jwt
import msgspec
import pytest

from bus_schema.access import FULL, Grants, identity_problem, secret_hash, secret_matches
from bus_schema.commands import (
    BanIdentity,
    Broadcast,
    CheckMember,
    CreateRoom,
    Join,
    Leave,
    MuteTrack,
    PublishSession,
    Rejected,
    RemoveParticipant,
    RevokeTokens,
    SetJoinSecret,
    SetTrackState,
    Snapshot,
)
from bus_schema.control import KICKED
from bus_schema.events import ParticipantLeft, TrackMuted
from bus_schema.state import RoomState
from edge import protocol
from edge.auth import InvalidToken, TokenService
from room_actors.state import Decision, decide
from tests.unit.test_state import ANN, BEN, FRAME, LIMITS, NOW, ROOM, created, join

CAROL = "cccccccc-cccc-4ccc-8ccc-cccccccccccc"
SECRET = "s" * 64
VIEWER = Grants(can_publish=False, can_send=False)
HIDDEN = Grants(hidden=True, can_publish=False, can_send=False)
ADMIN = Grants(room_admin=True)


_joins = iter(range(1_000_000))


def enter(
    state: RoomState,
    who: str,
    *,
    identity: str | None = None,
    grants: Grants | None = None,
    issued_at: int = int(NOW.epoch),
    conn: str = "conn",
) -> Decision:
    command = Join(
        cmd_id=f"j{next(_joins)}",
        room_id=ROOM,
        participant_id=who,
        name=who[:3],
        edge_id="e1",
        conn_id=conn,
        identity=identity,
        grants=grants,
        issued_at=issued_at,
    )
    return decide(state, command, NOW, LIMITS)


def code(decision: Decision) -> str:
    return decision.reply.code if isinstance(decision.reply, Rejected) else "ack"


def inside(decision: Decision) -> RoomState:
    assert decision.state is not None, decision.reply
    return decision.state


# --- what a token may carry -----------------------------------------------------------


def test_grants_default_to_full_rights_and_refuse_unknown_names_and_other_types() -> None:
    assert msgspec.convert({}, Grants) == FULL
    assert msgspec.convert({"can_send": False}, Grants).can_send is False
    bad: object
    for bad in ({"can_fly": True}, {"can_send": "no"}, {"hidden": 1}, []):
        with pytest.raises(msgspec.ValidationError):
            msgspec.convert(bad, Grants)


def test_identities_are_1_to_128_bytes_of_printable_text() -> None:
    assert identity_problem("user-42") is None
    assert identity_problem("a" * 128) is None
    assert identity_problem("é" * 64) is None  # 128 bytes
    for bad in ("", "a" * 129, "é" * 65, "tab\there", "nul\x00"):
        assert identity_problem(bad) is not None


def test_a_join_secret_matches_only_its_hash() -> None:
    stored = secret_hash("correct horse")
    assert secret_matches("correct horse", stored)
    assert not secret_matches("correct hors", stored)
    assert not secret_matches("", stored)
    assert not secret_matches("anything", "")  # no secret kept: nothing matches


def test_tokens_carry_identity_and_grants_and_verification_refuses_bad_ones() -> None:
    tokens = TokenService(SECRET, ttl=3600)
    token, expires = tokens.issue(
        room_id=ROOM, participant_id=ANN, participant_name="Ann", identity="u1", grants=VIEWER
    )
    claims = tokens.verify(token)
    assert (claims.identity, claims.grants, claims.exp) == ("u1", VIEWER, expires)
    # A join token: neither claim, every grant.
    plain, _ = tokens.issue(room_id=ROOM, participant_id=ANN, participant_name="Ann")
    payload = jwt.decode(plain, SECRET, algorithms=["HS256"])
    assert "grants" not in payload
    assert "identity" not in payload
    assert tokens.verify(plain).grants == FULL
    now = int(time.time())
    base = {"room_id": ROOM, "participant_id": ANN, "participant_name": "A", "iat": now}
    base["exp"] = now + 60
    for bad in (
        {"grants": {"can_fly": True}},
        {"grants": {"can_send": "false"}},
        {"grants": ["can_send"]},
        {"identity": "x" * 129},
        {"identity": ""},
        {"identity": 42},
    ):
        with pytest.raises(InvalidToken):
            tokens.verify(jwt.encode(base | bad, SECRET, algorithm="HS256"))


def test_a_token_issued_in_the_second_of_a_revocation_is_dated_after_it() -> None:
    tokens = TokenService(SECRET, ttl=60)
    now = int(time.time())
    token, _ = tokens.issue(room_id=ROOM, participant_id=ANN, participant_name="A", dated_after=now)
    assert tokens.verify(token).iat == now + 1  # within verification's leeway


# --- the room actor: who gets in ------------------------------------------------------


def test_a_banned_identity_a_removed_participant_and_a_revoked_token_stay_out() -> None:
    room = inside(enter(created(), ANN, identity="ann"))
    banned = inside(
        decide(
            room,
            RemoveParticipant(cmd_id="r", room_id=ROOM, participant_id=ANN, ban=True),
            NOW,
            LIMITS,
        )
    )
    assert banned.banned == ["ann"]
    assert code(enter(banned, ANN, identity="ann")) == "kicked"  # the same participant id
    assert code(enter(banned, BEN, identity="ann")) == "banned"  # any token of the identity
    assert code(enter(banned, BEN, identity="ben")) == "ack"
    assert code(enter(banned, CAROL)) == "ack"  # no identity: only the id was removed
    lifted = inside(
        decide(
            banned, BanIdentity(cmd_id="l", room_id=ROOM, identity="ann", lift=True), NOW, LIMITS
        )
    )
    assert code(enter(lifted, BEN, identity="ann")) == "ack"


def test_a_ban_by_identity_removes_who_is_present_and_holds_for_the_calls_proxy() -> None:
    room = inside(enter(inside(enter(created(), ANN, identity="ann")), BEN, identity="ben"))
    ban = decide(room, BanIdentity(cmd_id="b", room_id=ROOM, identity="ann"), NOW, LIMITS)
    after = inside(ban)
    assert ANN not in after.participants
    assert BEN in after.participants
    assert [(e.participant_id, e.reason) for e in ban.events if isinstance(e, ParticipantLeft)] == [
        (ANN, "banned")
    ]
    ((_, close),) = ban.control
    assert (close.code, close.notice) == (4003, KICKED)
    check = CheckMember(
        cmd_id="c", room_id=ROOM, participant_id=CAROL, issued_at=int(NOW.epoch), identity="ann"
    )
    assert code(decide(after, check, NOW, LIMITS)) == "banned"


def test_revocation_removes_everyone_and_refuses_tokens_issued_until_that_second() -> None:
    room = inside(enter(inside(enter(created(), ANN)), BEN, grants=HIDDEN))
    revoke = decide(room, RevokeTokens(cmd_id="rv", room_id=ROOM), NOW, LIMITS)
    after = inside(revoke)
    assert after.participants == {}
    assert after.tokens_revoked_at == int(NOW.epoch)
    assert revoke.write
    assert {close.code for _, close in revoke.control} == {4003}
    assert len(revoke.control) == 2  # the hidden one's socket too
    assert code(enter(after, CAROL, issued_at=int(NOW.epoch))) == "token_revoked"
    assert code(enter(after, CAROL, issued_at=int(NOW.epoch) + 1)) == "ack"
    stale = CheckMember(cmd_id="c", room_id=ROOM, participant_id=CAROL, issued_at=int(NOW.epoch))
    assert code(decide(after, stale, NOW, LIMITS)) == "token_revoked"


def test_one_participant_per_identity_the_newer_token_takes_the_place() -> None:
    room = inside(enter(inside(enter(created(), ANN, identity="u1")), CAROL))
    again = enter(room, BEN, identity="u1", conn="c2")
    after = inside(again)
    assert set(after.participants) == {BEN, CAROL}
    assert [(type(e).__name__, e.participant_id) for e in again.events] == [
        ("ParticipantLeft", ANN),
        ("ParticipantJoined", BEN),
    ]
    assert [e.seq for e in again.events] == [room.seq + 1, room.seq + 2]
    assert isinstance(again.events[0], ParticipantLeft)
    assert again.events[0].reason == "replaced"
    ((edge, close),) = again.control
    assert (edge, close.conn_id, close.code) == ("e1", "conn", 4000)


def test_the_old_join_tokens_keep_full_rights() -> None:
    room = join(created(), ANN, "j1")
    assert room.participants[ANN].grants is None
    assert room.participants[ANN].identity is None
    for command in (
        SetTrackState(
            cmd_id="t",
            room_id=ROOM,
            participant_id=ANN,
            conn_id="conn",
            frame=FRAME,
            kind="audio",
            enabled=False,
        ),
        Broadcast(cmd_id="b", room_id=ROOM, participant_id=ANN, conn_id="conn", frame=FRAME),
        PublishSession(
            cmd_id="p",
            room_id=ROOM,
            participant_id=ANN,
            conn_id="conn",
            frame=FRAME,
            session_id="s" * 32,
            tracks=[],
        ),
    ):
        assert code(decide(room, command, NOW, LIMITS)) == "ack"


def test_the_actor_checks_publish_and_send_grants_again() -> None:
    room = inside(enter(created(), ANN, grants=VIEWER))
    assert room.participants[ANN].grants == VIEWER
    for command in (
        SetTrackState(
            cmd_id="t",
            room_id=ROOM,
            participant_id=ANN,
            conn_id="conn",
            frame=FRAME,
            kind="audio",
            enabled=False,
        ),
        Broadcast(cmd_id="b", room_id=ROOM, participant_id=ANN, conn_id="conn", frame=FRAME),
        PublishSession(
            cmd_id="p",
            room_id=ROOM,
            participant_id=ANN,
            conn_id="conn",
            frame=FRAME,
            session_id="s" * 32,
            tracks=[],
        ),
    ):
        refused = decide(room, command, NOW, LIMITS)
        assert code(refused) == "grant_denied"
        assert refused.state is room
        assert refused.events == ()


# --- hidden participants --------------------------------------------------------------


def test_a_hidden_participant_takes_no_number_and_is_only_in_the_log() -> None:
    room = join(created(), ANN, "j1")
    came = enter(room, BEN, grants=HIDDEN, identity="rec")
    after = inside(came)
    assert came.events == ()
    assert after.seq == room.seq
    assert came.write
    (entry,) = came.log
    assert (entry.event, entry.participant_id, entry.hidden, entry.identity) == (
        "participant_joined",
        BEN,
        True,
        "rec",
    )
    assert entry.id == f"{ROOM}.{room.seq}.{BEN}.participant_joined"
    # Others' welcome leaves it out; its own shows it.
    snapshot = came.reply
    assert isinstance(snapshot, Snapshot)
    others = msgspec.json.decode(protocol.welcome(ANN, snapshot))["participants"]
    assert [p["id"] for p in others] == [ANN]
    own = msgspec.json.decode(protocol.welcome(BEN, snapshot))["participants"]
    assert {p["id"] for p in own} == {ANN, BEN}
    gone = decide(
        after, Leave(cmd_id="l", room_id=ROOM, participant_id=BEN, conn_id="conn"), NOW, LIMITS
    )
    assert gone.events == ()
    assert inside(gone).seq == room.seq
    (left,) = gone.log
    assert (left.event, left.hidden, left.reason) == ("participant_left", True, "closed")


def test_room_admins_moderate_like_operators_but_only_from_their_socket() -> None:
    room = inside(enter(inside(enter(created(), ANN, grants=ADMIN)), BEN, identity="ben"))
    room = inside(enter(room, CAROL, grants=HIDDEN))
    mute = MuteTrack(
        cmd_id="m", room_id=ROOM, participant_id=BEN, kind="audio", by=ANN, by_conn_id="conn"
    )
    muted = decide(room, mute, NOW, LIMITS)
    (event,) = muted.events
    assert isinstance(event, TrackMuted)
    assert event.by == ANN
    # Not an admin, or not from its current socket: refused, nothing changes.
    as_ben = msgspec.structs.replace(mute, cmd_id="m2", by=BEN)
    assert code(decide(room, as_ben, NOW, LIMITS)) == "grant_denied"
    stale = msgspec.structs.replace(mute, cmd_id="m3", by_conn_id="old")
    assert code(decide(room, stale, NOW, LIMITS)) == "grant_denied"
    # A hidden participant is invisible to a room admin (not to an operator).
    hidden = msgspec.structs.replace(mute, cmd_id="m4", participant_id=CAROL)
    assert code(decide(room, hidden, NOW, LIMITS)) == "not_in_room"
    remove = RemoveParticipant(
        cmd_id="r", room_id=ROOM, participant_id=BEN, ban=True, by=ANN, by_conn_id="conn"
    )
    removed = decide(room, remove, NOW, LIMITS)
    assert inside(removed).banned == ["ben"]
    ((_, close),) = removed.control
    assert (close.code, close.notice, close.by) == (4003, KICKED, ANN)
    (left,) = removed.events
    assert isinstance(left, ParticipantLeft)
    assert (left.reason, left.by) == ("banned", ANN)
    assert msgspec.json.decode(protocol.kicked(ROOM, ANN))["by"] == ANN


def test_rotating_a_join_secret_shuts_out_the_join_tokens_got_with_the_old_one() -> None:
    """Join tokens fetched with the old secret but not used yet would let a
    removed person back in: after a rotation they no longer enter. Whoever is
    in the room stays, and minted tokens (with an identity) are not concerned."""
    secret_room = inside(
        decide(
            None,
            CreateRoom(
                cmd_id="c",
                room_id=ROOM,
                name="r",
                created_by="me",
                created_at=NOW.iso,
                max_participants=5,
                join_policy="secret",
                join_secret_hash=secret_hash("one"),
            ),
            NOW,
            LIMITS,
        )
    )
    assert secret_room.meta.join_policy == "secret"
    rotated = inside(
        decide(
            secret_room,
            SetJoinSecret(cmd_id="s", room_id=ROOM, join_secret_hash=secret_hash("two")),
            NOW,
            LIMITS,
        )
    )
    assert secret_matches("two", rotated.join_secret_hash)
    assert not secret_matches("one", rotated.join_secret_hash)
    before = int(NOW.epoch)
    assert code(enter(rotated, ANN, issued_at=before)) == "token_revoked"
    assert code(enter(rotated, BEN, issued_at=before, identity="ben")) == "ack"
    assert code(enter(rotated, CAROL, issued_at=before + 1)) == "ack"
    present = inside(enter(secret_room, ANN, issued_at=before))
    rotated_with_ann = inside(
        decide(
            present,
            SetJoinSecret(cmd_id="s", room_id=ROOM, join_secret_hash=secret_hash("two")),
            NOW,
            LIMITS,
        )
    )
    assert code(enter(rotated_with_ann, ANN, issued_at=before, conn="c2")) == "ack"  # resumes
    refused = decide(
        created(), SetJoinSecret(cmd_id="s", room_id=ROOM, join_secret_hash="x"), NOW, LIMITS
    )
    assert code(refused) == "bad_command"


# --- client frames --------------------------------------------------------------------

WHO = protocol.Identity(room_id=ROOM, participant_id=ANN, participant_name="Ann")


def test_mute_and_remove_are_requests_never_relayed() -> None:
    mute = protocol.parse(f'{{"type":"mute","participant_id":"{BEN}","kind":"video"}}', WHO)
    assert isinstance(mute, protocol.MuteFrame)
    assert (mute.participant_id, mute.kind, mute.muted) == (BEN, "video", True)
    remove = protocol.parse(f'{{"type":"remove","participant_id":"{BEN}","ban":true}}', WHO)
    assert isinstance(remove, protocol.RemoveFrame)
    assert remove.ban
    for bad in (
        '{"type":"mute","participant_id":1,"kind":"video"}',
        '{"type":"remove","participant_id":"not-a-participant"}',
        '{"type":"remove"}',
    ):
        with pytest.raises(protocol.ProtocolError):
            protocol.parse(bad, WHO)
    # Another edge may never hand a client one as a targeted message.
    forged = f'{{"type":"mute","from":"{BEN}","to":"{ANN}"}}'.encode()
    with pytest.raises(protocol.RefusedPeerFrame):
        protocol.peer_frame(forged, ANN, {ANN, BEN})


def test_a_hidden_participant_is_told_it_cannot_send_to_one_participant() -> None:
    from edge.socket import _denied

    direct = protocol.parse(f'{{"type":"offer","to":"{BEN}"}}', WHO)
    broadcast = protocol.parse('{"type":"note"}', WHO)
    assert _denied(HIDDEN, direct) is not None  # nobody could check its sender
    assert _denied(Grants(hidden=True), broadcast) is None
    assert _denied(FULL, direct) is None


def test_the_event_log_names_the_identity_that_joined_and_the_admin_who_removed() -> None:
    came = enter(created(), ANN, identity="user-7", grants=ADMIN)
    (joined,) = came.log
    assert (joined.event, joined.identity) == ("participant_joined", "user-7")
    room = inside(enter(inside(came), BEN))
    remove = RemoveParticipant(
        cmd_id="r", room_id=ROOM, participant_id=BEN, by=ANN, by_conn_id="conn"
    )
    (left,) = decide(room, remove, NOW, LIMITS).log
    assert (left.event, left.reason, left.by) == ("participant_left", "kicked", ANN)


def test_tokens_minted_offline_have_names_as_bounded_as_the_endpoints() -> None:
    tokens = TokenService(SECRET, ttl=60, max_name_length=100)
    now = int(time.time())
    base = {"room_id": ROOM, "participant_id": ANN, "iat": now, "exp": now + 60}
    ok = jwt.encode(base | {"participant_name": "n" * 100}, SECRET, algorithm="HS256")
    assert tokens.verify(ok).participant_name == "n" * 100
    for name in ("n" * 101, "", "bell\x07"):
        bad = jwt.encode(base | {"participant_name": name}, SECRET, algorithm="HS256")
        with pytest.raises(InvalidToken):
            tokens.verify(bad)
