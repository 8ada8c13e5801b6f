"""The nemesis's own parts: the schedule a seed gives, and the invariant
checks, fed what a run would record (each check must be able to fail)."""

import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from tests.chaos.clients import Client, Op, Ops, Segment
from tests.chaos.nemesis import GAP, KINDS, Planned, Window, schedule
from tests.chaos.run import Report, check_clients


def test_a_seed_gives_the_same_schedule_and_another_seed_another() -> None:
    assert schedule(7, 300) == schedule(7, 300)
    assert schedule(7, 300) != schedule(8, 300)


def test_a_schedule_never_overlaps_two_faults_of_one_class() -> None:
    plan = schedule(11, 3000)
    seen = {(f.cls, f.kind) for f in plan}
    assert seen == {(cls, kind) for cls, kinds in KINDS.items() for kind in kinds}
    last_end: dict[str, float] = {}
    for fault in plan:
        assert fault.at >= last_end.get(fault.cls, 0.0), fault
        last_end[fault.cls] = fault.at + fault.seconds + GAP[fault.cls]
    assert all(f.at <= 3000 - 8 for f in plan)


@dataclass
class Run:
    """What `check_clients` reads of a workload."""

    rooms: dict[str, list[Client]]
    gone: list[Client] = field(default_factory=list)
    ops: Ops = field(default_factory=Ops)
    probe: Any = None
    probe_sent: list[Any] = field(default_factory=list)
    probes: list[Any] = field(default_factory=list)
    started: float = 0.0


def client(name: str, connected: tuple[float, float] = (0.0, 100.0)) -> Client:
    c = Client("room", name, "token", f"{name}-pid", lambda: [], random.Random(0))
    c.segments.append(Segment("http://edge-0", connected[0], 1, connected[1]))
    return c


def window(cls: str, began: float, ended: float, edge_url: str = "") -> Window:
    return Window(Planned(began, cls, "pause", 0, ended - began), began, ended, edge_url=edge_url)


def checked(run: Run, windows: list[Window] | None = None) -> Report:
    report = Report(seed=0, seconds=60)
    check_clients(run, windows or [], report)
    return report


def test_a_clean_run_has_no_violation() -> None:
    a, b = client("a"), client("b")
    a.sent_chats.append((1, 10.0))
    b.broadcasts[a.pid, 1] = 1
    report = checked(Run({"room": [a, b]}))
    assert report.violation_count == 0
    assert report.deliveries["broadcasts delivered"] == 1


def test_a_broadcast_twice_is_a_violation() -> None:
    a, b = client("a"), client("b")
    a.sent_chats.append((1, 10.0))
    b.broadcasts[a.pid, 1] = 2
    assert "no broadcast twice" in checked(Run({"room": [a, b]})).violations


def test_a_loss_is_excused_only_inside_a_fault_window() -> None:
    a, b = client("a"), client("b")
    a.sent_chats.append((1, 50.0))
    assert "losses only in fault windows" in checked(Run({"room": [a, b]})).violations
    excused = checked(Run({"room": [a, b]}), [window("worker", 48.0, 51.0)])
    assert excused.violation_count == 0
    assert excused.deliveries["broadcasts lost in fault windows"] == 1
    # A dispatcher's fault, or another edge's, cannot lose a broadcast.
    assert checked(Run({"room": [a, b]}), [window("dispatcher", 48.0, 51.0)]).violation_count
    other_edge = [window("edge", 48.0, 51.0, edge_url="http://edge-1")]
    assert checked(Run({"room": [a, b]}), other_edge).violation_count
    own_edge = [window("edge", 48.0, 51.0, edge_url="http://edge-0")]
    assert checked(Run({"room": [a, b]}), own_edge).violation_count == 0


def test_room_seq_going_back_within_a_connection_is_a_violation() -> None:
    a = client("a")
    a.segments[0].seqs = [3, 4, 4]
    assert "room_seq increases" in checked(Run({"room": [a]})).violations


def test_a_resume_announced_as_a_leave_is_a_violation_outside_edge_faults() -> None:
    a, b = client("a"), client("b")
    a.drops.append((20.0, 22.0))
    b.leaves.append((21.0, a.pid))
    assert "a resume is not a leave" in checked(Run({"room": [a, b]})).violations
    assert checked(Run({"room": [a, b]}), [window("edge", 15.0, 21.0)]).violation_count == 0


def test_a_hanging_operation_or_a_500_is_a_violation() -> None:
    run = Run({"room": [client("a")]})
    run.ops.done += [Op("join", 0.0, 31.0, "200"), Op("get", 0.0, 0.1, "500")]
    assert len(checked(run).violations["no operation hangs"]) == 2


def test_a_client_closed_for_good_is_a_violation() -> None:
    a = client("a")
    a.closed_for_good = 4000
    a.errors = Counter({"unavailable": 2})
    report = checked(Run({"room": [a]}))
    assert "clients stay connected" in report.violations
    assert report.deliveries["error frames unavailable"] == 2


def test_a_refusal_to_a_connected_client_is_excused_only_by_its_own_edges_fault() -> None:
    """Found in a 300-second run: a client's edge was paused 3.4 s (past
    EDGE_TIMEOUT), the room made its participants leave, and when the edge
    woke up the client was closed with 4003 (documented behaviour). The check
    took no edge fault into account."""
    a = client("a", (0.0, 70.0))
    a.closed_for_good, a.closed_at = 4003, 70.0
    assert "clients stay connected" in checked(Run({"room": [a]})).violations
    other_edge = [window("edge", 66.7, 70.1, edge_url="http://edge-1")]
    assert "clients stay connected" in checked(Run({"room": [a]}), other_edge).violations
    own_edge = [window("edge", 66.7, 70.1, edge_url="http://edge-0")]
    report = checked(Run({"room": [a]}), own_edge)
    assert report.violation_count == 0
    assert report.deliveries["resumes refused after the grace or a fault"] == 1


def test_a_fresh_welcome_on_the_same_connection_begins_a_new_stretch() -> None:
    """Found in the nemesis's own bookkeeping: a resync's welcome left the
    previous stretch open, so a client that had left still counted as present."""
    c = Client("room", "c", "token", "pid", lambda: [], random.Random(0))
    c._see({"type": "welcome", "participants": [], "room_seq": 5}, "http://edge-0")
    c._see({"type": "welcome", "participants": [], "room_seq": 9}, "http://edge-0")
    assert c.segments[0].ended_at is not None
    assert c.segments[0].ended_at == c.segments[1].welcomed_at
    assert c.present(c.segments[1].welcomed_at) is c.segments[1]
