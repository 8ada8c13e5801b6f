"""What operators see and do: NATS micro services, status requests, metrics,
graceful drain of an edge, least-privilege NATS users."""

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

import httpx
import msgspec
import nats
import pytest
import websockets

from bus_schema import buckets, subjects
from bus_schema.log import LOG_STREAM
from bus_schema.status import EdgeStatus, WorkerStatus
from runtime.natsconn import Role, inbox_prefix
from tests.harness import Api, Member, System, WsClient, enter
from tests.system.test_webhooks import FAST, Receiver
from tests.system.traffic import chat, open_rooms, stop_recorders, wait_delivered
from tests.waiting import eventually

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def gather_replies(nc: nats.aio.client.Client, subject: str, instances: int) -> list[Any]:
    """What ``nats micro ls|info|stats`` does: publish with an inbox and collect
    every instance's answer; here until the ``instances`` we started have
    answered, then one round trip more so that an extra answer sent with
    theirs is counted too."""
    inbox = nc.new_inbox()
    replies: list[Any] = []

    async def collect(msg: nats.aio.msg.Msg) -> None:
        replies.append(json.loads(msg.data))

    subscription = await nc.subscribe(inbox, cb=collect)
    try:
        await nc.publish(subject, b"", reply=inbox)
        await eventually(
            lambda: len(replies) >= instances, timeout=10, message=lambda: f"{subject}: {replies}"
        )
        await nc.flush()
    finally:
        await subscription.unsubscribe()
    return replies


async def test_micro_services_describe_the_running_system(
    make_system: Callable[..., System],
) -> None:
    system = make_system()
    await system.start(actors=2, edges=2)
    bus = await system.bus()
    workers = [a.env["WORKER_ID"] for a in system.actors]
    owned = await bus.balanced(workers)
    nc = bus.nc

    pings = await gather_replies(nc, "$SRV.PING", 4)
    assert sorted(p["name"] for p in pings) == [
        "signaling-actors",
        "signaling-actors",
        "signaling-edge",
        "signaling-edge",
    ]
    infos = await gather_replies(nc, "$SRV.INFO.signaling-actors", 2)
    assert len(infos) == 2
    for info in infos:
        worker = info["metadata"]["instance"]
        assert info["version"]
        assert info["description"]
        endpoints = {e["name"]: e["subject"] for e in info["endpoints"]}
        assert endpoints["status"] == subjects.worker_status(worker)
        partitions = sorted(int(n.split("-")[1]) for n in endpoints if n.startswith("partition-"))
        assert partitions == sorted(owned[worker])
        assert all(
            endpoints[f"partition-{p}"] == subjects.partition_commands(p) for p in partitions
        )

    api = Api(system.edges[0].url)
    room_id = await api.create_room("stats")
    await enter(api, system.edges[0].ws_url, room_id, "Ann")
    stats = await gather_replies(nc, "$SRV.STATS.signaling-actors", 2)
    handled = sum(
        e["num_requests"]
        for s in stats
        for e in s["endpoints"]
        if e["name"].startswith("partition-")
    )
    assert handled >= 2  # the create and the join

    edge_infos = await gather_replies(nc, "$SRV.INFO.signaling-edge", 2)
    assert {i["metadata"]["instance"].rsplit("-", 1)[0] for i in edge_infos} == {
        e.env["EDGE_ID"] for e in system.edges
    }
    # Each answers a status request with its own view.
    for info in edge_infos:
        status_subject = next(e["subject"] for e in info["endpoints"] if e["name"] == "status")
        reply = await nc.request(status_subject, b"", timeout=5)
        status = msgspec.json.decode(reply.data, type=EdgeStatus)
        assert status.version == info["version"]
        assert not status.draining
    edge0 = next(
        i
        for i in edge_infos
        if i["metadata"]["instance"].startswith(system.edges[0].env["EDGE_ID"])
    )
    reply = await nc.request(subjects.edge_status(edge0["metadata"]["instance"]), b"", timeout=5)
    assert msgspec.json.decode(reply.data, type=EdgeStatus).connections == 1
    worker_status = msgspec.json.decode(
        (await nc.request(subjects.worker_status(workers[0]), b"", timeout=5)).data,
        type=WorkerStatus,
    )
    assert worker_status.partitions == owned[workers[0]]
    await bus.close()
    await api.close()


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus' text format (0 when absent)."""
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        sample, _, raw_labels = key.partition("{")
        found = dict(part.split("=", 1) for part in raw_labels.rstrip("}").split(",") if part)
        if sample == name and {k: v.strip('"') for k, v in found.items()} == labels:
            return float(value)
    return 0.0


async def test_metrics_change_with_traffic(make_system: Callable[..., System]) -> None:
    system = make_system()
    await system.start()
    edge_metrics = f"{system.edges[0].url}/metrics"
    actor_metrics = f"http://127.0.0.1:{system.actors[0].env['METRICS_PORT']}/metrics"
    async with httpx.AsyncClient() as http:
        before_edge = (await http.get(edge_metrics)).text
        before_actor = (await http.get(actor_metrics)).text
        api = Api(system.edges[0].url)
        room_id = await api.create_room("metrics")
        ann = await enter(api, system.edges[0].ws_url, room_id, "Ann")
        ben = await enter(api, system.edges[0].ws_url, room_id, "Ben")
        await ann.recv_type("join")
        await ann.send({"type": "track-state", "kind": "audio", "enabled": False})
        await ben.recv_type("track-state")
        await ann.send("garbage")
        await ann.recv_type("error")
        after_edge = (await http.get(edge_metrics)).text
        after_actor = (await http.get(actor_metrics)).text
    assert metric(before_edge, "signaling_edge_connections") == 0
    assert metric(after_edge, "signaling_edge_connections") == 2
    assert metric(after_edge, "signaling_edge_rooms") == 1
    assert metric(after_edge, "signaling_edge_nats_connected") == 1
    assert metric(after_edge, "signaling_edge_messages_in_total", type="track-state") == 1
    assert metric(after_edge, "signaling_edge_messages_out_total", type="track-state") == 1
    assert metric(after_edge, "signaling_edge_errors_total", code="invalid_json") == 1
    assert metric(after_edge, "signaling_edge_relay_seconds_count", route="track-state") == 1
    joins = metric(after_actor, "signaling_actor_commands_total", type="join", outcome="snapshot")
    assert (
        joins
        - metric(before_actor, "signaling_actor_commands_total", type="join", outcome="snapshot")
        == 2
    )
    assert metric(after_actor, "signaling_actor_rooms_active") >= 1
    assert metric(after_actor, "signaling_actor_partitions_owned") == subjects.PARTITIONS
    assert (
        metric(after_actor, "signaling_actor_ownership_changes_total", change="acquired")
        >= subjects.PARTITIONS
    )
    assert metric(after_actor, "signaling_actor_command_seconds_count", type="set_track_state") == 1
    await api.close()


async def test_sigterm_drains_an_edge_and_clients_resume_elsewhere(
    make_system: Callable[..., System],
) -> None:
    system = make_system()
    await system.start(edges=2)
    draining, staying = system.edges
    draining.env["DRAIN_DELAY"] = "1"  # restart it with a delay we can observe
    draining.stop()
    system.edges.remove(draining)
    draining = system.start_edge(DRAIN_DELAY="1.5")
    await asyncio.to_thread(system.wait_edge_ready, draining)

    api = Api(staying.url)
    room_id = await api.create_room("drain")
    observer = await enter(api, staying.ws_url, room_id, "Observer")
    movers = [await enter(api, draining.ws_url, room_id, f"m{i}") for i in range(3)]
    for _ in movers:
        await observer.recv_type("join")

    assert draining.process is not None
    started = time.monotonic()
    draining.process.terminate()
    async with httpx.AsyncClient() as http:

        async def draining_reported() -> bool:
            return (await http.get(f"{draining.url}/ready")).status_code == 503

        await eventually(draining_reported, timeout=5, message="never reported draining")
        # Draining: new sockets are refused, so the load balancer moves them on.
        late = await api.join(room_id, "late")
        with pytest.raises(websockets.InvalidStatus):
            await websockets.connect(f"{draining.ws_url}?token={late['token']}", open_timeout=5)
    for mover in movers:
        code, _ = await mover.client.closed(timeout=15)
        assert code == 1012
    assert await asyncio.to_thread(draining.process.wait, 20) == 0
    assert time.monotonic() - started < 12
    resumed = []
    for mover in movers:
        client = await WsClient.connect(staying.ws_url, mover.token)
        await client.recv_type("welcome")
        resumed.append(Member(mover.token, mover.participant_id, mover.name, client))
    # The observer saw no leave and no join: the next thing it sees is this.
    await resumed[0].send({"type": "marker", "to": "all"})
    message = await observer.recv()
    assert (message["type"], message["from"]) == ("marker", resumed[0].participant_id)
    await api.close()


async def test_an_edge_user_cannot_write_room_state_or_act_as_an_actor(
    make_system: Callable[..., System],
) -> None:
    system = make_system()
    await system.start()
    api = Api(system.edges[0].url)
    room_id = await api.create_room("permissions")
    errors: list[Exception] = []

    async def on_error(error: Exception) -> None:
        errors.append(error)

    edge_nc = await system.connect("edge", error_cb=on_error)
    js = edge_nc.jetstream()
    kv = await js.key_value(buckets.ROOM_STATE)
    assert (await kv.get(room_id)).value  # reading is allowed
    with pytest.raises(
        (nats.errors.TimeoutError, nats.errors.NoRespondersError, nats.js.errors.Error)
    ):
        await js.publish(f"$KV.{buckets.ROOM_STATE}.{room_id}", b"{}", timeout=2)
    await edge_nc.subscribe(subjects.partition_commands(0))  # pretending to be an actor
    forged = b'{"type":"closed","room_id":"%s","seq":99,"participant_id":"","reason":"x"}'
    await edge_nc.publish(subjects.room_events(room_id), forged % room_id.encode())
    await edge_nc.flush()
    await eventually(
        lambda: all(
            any(what in str(e).lower() for e in errors)
            for what in ("subscription to", 'publish to "signal.room.')
        ),
        timeout=5,
        message=lambda: str(errors),
    )
    await edge_nc.close()
    bus = await system.bus()
    state = await bus.room_state(room_id)
    assert state is not None
    assert state.meta.name == "permissions"  # untouched
    await bus.close()
    # And the system still works with the edge's own permissions.
    rooms = await open_rooms(api, [system.edges[0].ws_url], rooms=1, size=2)
    await chat(rooms, 2)
    await wait_delivered(rooms, 2)
    await stop_recorders(rooms)
    await api.close()


ROLES: tuple[Role, ...] = ("edge", "actors", "webhooks")


async def own_request(role: Role, nc: nats.aio.client.Client) -> None:
    """A request each role makes in service: its answer comes to the role's inbox."""
    js = nc.jetstream()
    if role == "webhooks":
        assert (await js.stream_info(LOG_STREAM)).config.name == LOG_STREAM
    else:
        kv = await js.key_value(buckets.ROOM_STATE if role == "edge" else buckets.LEASES)
        assert (await kv.status()).bucket


async def until_refused(
    nc: nats.aio.client.Client, errors: list[Exception], subjects: list[str]
) -> None:
    """Subscribe to each subject and wait until the server has refused every one
    (a permissions violation names the subject)."""
    for subject in subjects:
        await nc.subscribe(subject)
    await nc.flush()

    def refused(subject: str) -> bool:
        return any(f'subscription to "{subject.lower()}"' in str(e).lower() for e in errors)

    await eventually(
        lambda: all(refused(s) for s in subjects),
        timeout=10,
        message=lambda: str((subjects, errors)),
    )


async def test_each_role_reads_only_its_own_replies(make_system: Callable[..., System]) -> None:
    receiver = await Receiver().start()
    system = make_system()
    await system.start()
    system.start_webhooks(WEBHOOK_URL=receiver.url, **FAST)
    api = Api(system.edges[0].url)
    try:
        for role in ROLES:
            errors: list[Exception] = []

            async def on_error(error: Exception, errors: list[Exception] = errors) -> None:
                errors.append(error)

            nc = await system.connect(role, error_cb=on_error)
            others = ["_INBOX.>", *(f"{inbox_prefix(r)}.>" for r in ROLES if r != role)]
            await until_refused(nc, errors, others)
            await own_request(role, nc)  # its own replies still arrive
            assert not any(inbox_prefix(role) in str(e) for e in errors), errors
            await nc.close()
        # Every role works with its own prefix: rooms, relays, webhooks.
        rooms = await open_rooms(api, [system.edges[0].ws_url], rooms=1, size=2)
        await chat(rooms, 2)
        await wait_delivered(rooms, 2)
        await stop_recorders(rooms)
        await receiver.until(lambda: len(receiver.accepted()) >= 3)  # created, 2 joined
        # An operator keeps the default prefix and sees everything.
        bus = await system.bus()
        assert await bus.room_state(rooms[0].room_id) is not None
        assert (await bus.status(system.actors[0].env["WORKER_ID"])).partitions
        await bus.close()
    finally:
        await api.close()
        await receiver.stop()


async def test_nats_refuses_clients_without_credentials(make_system: Callable[..., System]) -> None:
    """Spoken in the NATS protocol itself: CONNECT without a user, or with a
    wrong password, is answered with an authorization error."""
    system = make_system()
    system.start_nats()
    host, port = system.nats.url.removeprefix("nats://").split(":")
    for auth in ({}, {"user": "edge", "pass": "not-the-password"}):
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            greeting = await asyncio.wait_for(reader.readline(), 5)
            assert greeting.startswith(b"INFO ")
            options = {"verbose": False, "pedantic": False, "protocol": 1, **auth}
            writer.write(b"CONNECT " + json.dumps(options).encode() + b"\r\nPING\r\n")
            answer = await asyncio.wait_for(reader.readline(), 5)
            assert b"authorization violation" in answer.lower(), answer
        finally:
            writer.close()
            await writer.wait_closed()


async def test_an_actor_cannot_make_a_stream_that_captures_other_roles_traffic(
    make_system: Callable[..., System],
) -> None:
    """The actors' JetStream rights cover their own buckets and the event log:
    a stream that would record edges' replies (or anything else) is refused."""
    system = make_system()
    await system.start()
    errors: list[Exception] = []

    async def on_error(error: Exception) -> None:
        errors.append(error)

    actors = await system.connect("actors", error_cb=on_error)
    js = actors.jetstream(timeout=2)
    for name, captured in (("CAPTURE", f"{inbox_prefix('edge')}.>"), ("EVERYTHING", "signal.>")):
        with pytest.raises((nats.errors.TimeoutError, nats.js.errors.Error)):
            await js.add_stream(name=name, subjects=[captured])
    assert any("permissions violation" in str(e).lower() for e in errors), errors
    await actors.close()
    bus = await system.bus()
    for name in ("CAPTURE", "EVERYTHING"):
        with pytest.raises(nats.js.errors.NotFoundError):
            await bus.js.stream_info(name)
    await bus.close()


async def test_an_edge_stops_in_time_while_its_rooms_have_no_owner(
    make_system: Callable[..., System],
) -> None:
    """Found in the node-partition test's logs: an edge stopped while the
    room service could not answer. Its sockets' farewells were retried for the
    whole command deadline (10 s), past the 5 s uvicorn gives the handlers, so
    uvicorn cancelled them and logged an ERROR with a traceback. While the
    edge stops, a farewell is tried only as long as the handlers have (the
    workers' edge-liveness sweep does the rest)."""
    system = make_system()
    await system.start(edges=1)
    edge = system.edges[0]
    api = Api(edge.url)
    room_id = await api.create_room("orphaned")
    members = [await enter(api, edge.ws_url, room_id, f"m{i}") for i in range(2)]
    for actor in system.actors:
        actor.kill()
    assert edge.process is not None
    edge.process.terminate()
    for member in members:
        code, _ = await member.client.closed(timeout=15)
        assert code == 1012
    assert await asyncio.to_thread(edge.process.wait, 20) == 0
    log = edge.log()
    assert "not acknowledged" in log  # the farewells were tried, and gave up
    assert '"level": "ERROR"' not in log, log
    assert "Traceback" not in log, log
    await api.close()
