"""The event log's entries for a room (`bus_schema.log`), built beside
`room_actors.state.decide`: pure, no I/O. The actor appends them after the
state they describe is saved."""

from msgspec.structs import replace

from bus_schema import events as ev
from bus_schema import log as event_log
from bus_schema.log import LogEntry
from bus_schema.state import Participant, RoomState


def room_created(state: RoomState, at: str) -> LogEntry:
    return LogEntry(
        id=f"{state.room_id}.0",
        event=event_log.ROOM_CREATED,
        room_id=state.room_id,
        room_seq=0,
        at=at,
        room=state.meta,
    )


def entries(events: list[ev.Event] | tuple[ev.Event, ...], at: str) -> tuple[LogEntry, ...]:
    """The event log's records of these room events, in order (relayed
    messages, `ev.Broadcasted`, are not logged)."""
    out: list[LogEntry] = []
    for event in events:
        if isinstance(event, ev.Broadcasted):
            continue  # the hot path: nothing to build
        base = LogEntry(
            id=f"{event.room_id}.{event.seq}",
            event="",
            room_id=event.room_id,
            room_seq=event.seq,
            at=at,
            participant_id=event.participant_id or None,
        )
        match event:
            case ev.ParticipantJoined():
                entry = replace(
                    base,
                    event=event_log.PARTICIPANT_JOINED,
                    participant_name=event.name,
                    identity=event.identity or None,
                )
            case ev.ParticipantLeft():
                entry = replace(
                    base,
                    event=event_log.PARTICIPANT_LEFT,
                    reason=event.reason,
                    by=event.by or None,
                )
            case ev.SessionPublished():
                entry = replace(
                    base, event=event_log.SESSION_PUBLISHED, session_id=event.session_id
                )
            case ev.TrackStateChanged() | ev.TrackMuted():
                entry = replace(
                    base,
                    event=event_log.TRACK_STATE_CHANGED,
                    kind=event.kind,
                    enabled=event.enabled,
                    by=event.by if isinstance(event, ev.TrackMuted) else None,
                )
            case ev.RoomClosed():
                entry = replace(base, event=event_log.ROOM_CLOSED, reason=event.reason)
            case _:
                continue
        out.append(entry)
    return tuple(out)


def hidden_entry(
    state: RoomState,
    participant: Participant,
    event: str,
    at: str,
    *,
    reason: str | None = None,
    by: str | None = None,
) -> LogEntry:
    """A hidden participant joined or left: no event of the room (it takes no
    number, so clients see no gap), only this entry, for operators. Its id is
    unique all the same: the room's number at the time, the participant, what."""
    return LogEntry(
        id=f"{state.room_id}.{state.seq}.{participant.id}.{event}",
        event=event,
        room_id=state.room_id,
        room_seq=state.seq,
        at=at,
        participant_id=participant.id,
        participant_name=participant.name if event == event_log.PARTICIPANT_JOINED else None,
        identity=participant.identity,
        reason=reason,
        by=by or None,
        hidden=True,
    )
