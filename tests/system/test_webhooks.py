"""Webhooks from the durable event log: a receiver on loopback that fails for a
while, dispatchers killed and restarted, two dispatchers sharing the work, and
dead letters. All real processes."""

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import msgspec
import nats
import nats.js.errors
import pytest
from nats.aio.msg import Msg
from nats.js.api import DeliverPolicy, DiscardPolicy
from prometheus_client.parser import text_string_to_metric_families
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from bus_schema import log, subjects
from bus_schema.status import DispatcherStatus
from tests.harness import Api, Proc, System, enter
from tests.waiting import eventually
from webhooks import signing
from webhooks.dispatcher import consumer_name

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.timeout(180)]

SECRET = "whsec_d2ViaG9vay1zZWNyZXQtZm9yLXRlc3RzLTAxMjM0NTY="
FAST = {
    "WEBHOOK_SECRET": SECRET,
    "WEBHOOK_BACKOFF_INITIAL": "0.1",
    "WEBHOOK_BACKOFF_MAX": "0.5",
    "WEBHOOK_ACK_WAIT": "3",
    "WEBHOOK_TIMEOUT": "2",
}


@dataclass
class Delivery:
    headers: dict[str, str]
    body: bytes
    status: int

    @property
    def entry(self) -> dict[str, Any]:
        parsed: dict[str, Any] = json.loads(self.body)
        return parsed


@dataclass
class Receiver:
    """A webhook receiver on loopback: HTTP/1.1 with keep-alive, answering 503
    while ``failing`` is set (or to ``fail_status`` always); ``answers`` lists
    the statuses to give an event id's next attempts, before the usual answer."""

    failing: bool = False
    fail_status: int = 0
    answers: dict[str, list[int]] = field(default_factory=dict)
    attempts: list[Delivery] = field(default_factory=list)
    server: asyncio.Server | None = None
    port: int = 0
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks?token=not-for-logs"

    async def start(self) -> "Receiver":
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode().split("\r\n")
                headers = {}
                for line in lines[1:]:
                    if ":" in line:
                        name, _, value = line.partition(":")
                        headers[name.strip().lower()] = value.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                planned = self.answers.get(json.loads(body)["id"])
                status = (
                    planned.pop(0)
                    if planned
                    else (self.fail_status or (503 if self.failing else 200))
                )
                self.attempts.append(Delivery(headers, body, status))
                self.arrived.set()
                reason = "OK" if status == 200 else "Error"
                writer.write(f"HTTP/1.1 {status} {reason}\r\ncontent-length: 0\r\n\r\n".encode())
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    def accepted(self) -> list[Delivery]:
        return [d for d in self.attempts if d.status == 200]

    async def until(self, check: Callable[[], bool], timeout: float = 60.0) -> None:
        """Until ``check`` holds, looked at again as each attempt arrives."""
        try:
            async with asyncio.timeout(timeout):
                while not check():
                    self.arrived.clear()
                    await self.arrived.wait()
        except TimeoutError:
            raise AssertionError(f"timed out; {len(self.accepted())} accepted") from None


async def room_story(api: Api, ws_url: str, room_id: str | None = None) -> tuple[str, int]:
    """A room (new, or ``room_id`` just created) where three things happen to
    two people; the number of events."""
    if room_id is None:
        room_id = await api.create_room("hooked", departure_timeout=0)
    ann = await enter(api, ws_url, room_id, "Ann")
    bob = await enter(api, ws_url, room_id, "Bob")
    await ann.recv_type("join")
    await ann.send({"type": "track-state", "kind": "video", "enabled": False})
    await bob.recv_type("track-state")
    await bob.client.ws.close()
    await ann.recv_type("leave")
    await ann.client.ws.close()
    return room_id, 6  # created, 2 joined, track state, 2 left


async def stored_ids(system: System, count: int, timeout: float = 15.0) -> list[str]:
    """The ids of the first ``count`` entries of the event log."""
    nc = await system.connect()
    try:
        sub = await nc.jetstream().subscribe(
            subjects.LOG_ALL, ordered_consumer=True, deliver_policy=DeliverPolicy.ALL
        )
        out = []
        while len(out) < count:
            msg = await sub.next_msg(timeout=timeout)
            out.append(log.log_entry.decode(msg.data).id)
        return out
    finally:
        await nc.close()


async def dispatchers_ready(system: System, timeout: float = 30.0) -> None:
    """Until every running dispatcher answers its status request (it then
    fetches work)."""
    nc = await system.connect()
    try:
        for dispatcher in filter(Proc.alive, system.dispatchers):
            subject = subjects.dispatcher_status(dispatcher.env["DISPATCHER_ID"])
            await eventually(
                lambda subject=subject: nc.request(subject, b"", timeout=1),
                timeout=timeout,
                interval=0.1,
                message=dispatcher.log,
                retry_on=(nats.errors.NoRespondersError, nats.errors.TimeoutError),
            )
    finally:
        await nc.close()


async def dead_letters(system: System, count: int, timeout: float = 30.0) -> list[Msg]:
    """The first ``count`` letters of the dead-letter stream, as stored (the
    stream appears once a dispatcher started)."""
    nc = await system.connect()
    try:
        js = nc.jetstream()
        async with asyncio.timeout(timeout):
            sub = await eventually(
                lambda: js.subscribe(
                    subjects.WEBHOOK_DEAD_ALL,
                    ordered_consumer=True,
                    deliver_policy=DeliverPolicy.ALL,
                ),
                timeout=timeout,
                interval=0.2,
                message="no dead-letter stream",
                retry_on=(nats.js.errors.NotFoundError,),
            )
            return [await sub.next_msg(timeout=timeout) for _ in range(count)]
    finally:
        await nc.close()


async def settled(system: System, timeout: float = 30.0) -> None:
    """Until no running dispatcher holds an event and every log partition's
    consumer has nothing pending or unacknowledged: nothing more will be POSTed."""
    nc = await system.connect()
    js = nc.jetstream()

    async def idle() -> bool:
        for partition in range(subjects.LOG_PARTITIONS):
            info = await js.consumer_info(log.LOG_STREAM, consumer_name(partition))
            if info.num_pending or info.num_ack_pending:
                return False
        for dispatcher in filter(Proc.alive, system.dispatchers):
            subject = subjects.dispatcher_status(dispatcher.env["DISPATCHER_ID"])
            reply = await nc.request(subject, b"", timeout=5)
            if msgspec.json.decode(reply.data, type=DispatcherStatus).holding:
                return False
        return True

    try:
        await eventually(
            idle,
            timeout=timeout,
            interval=0.1,
            message="dispatchers still busy",
            retry_on=(nats.errors.Error,),
        )
    finally:
        await nc.close()


async def scrape(dispatcher: Proc) -> dict[tuple[str, str], float]:
    """A dispatcher's Prometheus metrics over HTTP: (sample name, its
    ``partition`` or ``reason`` label) -> value."""
    url = f"http://127.0.0.1:{dispatcher.env['METRICS_PORT']}/metrics"
    async with httpx.AsyncClient(timeout=5.0) as http:
        response = await http.get(url)
    assert response.status_code == 200
    values = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            label = sample.labels.get("partition") or sample.labels.get("reason") or ""
            values[(sample.name, label)] = sample.value
    return values


async def metrics_until(
    dispatcher: Proc, check: Callable[[dict[tuple[str, str], float]], bool], timeout: float = 30.0
) -> dict[tuple[str, str], float]:
    """Scrape until ``check`` holds (the gauges are refreshed in the background)."""
    values: dict[tuple[str, str], float] = {}

    async def holds() -> dict[tuple[str, str], float] | None:
        values.update(await scrape(dispatcher))
        return dict(values) if check(values) else None

    return await eventually(
        holds,
        timeout=timeout,
        interval=0.1,
        message=lambda: str((values, dispatcher.log()[-3000:])),
        retry_on=(httpx.HTTPError,),
    )


def check_signed(delivery: Delivery) -> str:
    event_id = signing.verify(SECRET, delivery.headers, delivery.body)
    assert event_id == delivery.entry["id"]
    # The official Standard Webhooks library, given the same secret string,
    # verifies it too (it decodes the body as JSON).
    assert Webhook(SECRET).verify(delivery.body, delivery.headers) == delivery.entry
    with pytest.raises(signing.InvalidSignature):
        signing.verify(SECRET, delivery.headers, delivery.body + b" ")
    with pytest.raises(signing.InvalidSignature):
        signing.verify(signing.new_secret(), delivery.headers, delivery.body)
    with pytest.raises(signing.InvalidSignature):  # replayed much later
        signing.verify(SECRET, delivery.headers, delivery.body, now=time.time() + 3600)
    return event_id


def assert_in_room_order(deliveries: list[Delivery]) -> dict[str, list[int]]:
    """Per room, the first delivery of each event comes in ``room_seq`` order."""
    by_room: dict[str, list[int]] = {}
    seen: set[str] = set()
    for delivery in deliveries:
        entry = delivery.entry
        if entry["id"] in seen:
            continue
        seen.add(entry["id"])
        by_room.setdefault(entry["room_id"], []).append(entry["room_seq"])
    for room_id, seqs in by_room.items():
        assert seqs == sorted(seqs), (room_id, seqs)
    return by_room


async def test_a_failing_receiver_gets_every_event_in_order_signed(
    make_system: Callable[..., System],
) -> None:
    receiver = await Receiver(failing=True).start()
    system = make_system()
    await system.start()
    api = Api(system.edges[0].url)
    try:
        system.start_webhooks(WEBHOOK_URL=receiver.url, **FAST)
        stories = [await room_story(api, system.edges[0].ws_url) for _ in range(3)]
        total = sum(n for _, n in stories)
        await receiver.until(lambda: len(receiver.attempts) >= 6)  # retried while down
        receiver.failing = False
        await receiver.until(lambda: len(receiver.accepted()) >= total)
        accepted = receiver.accepted()
        ids = [check_signed(d) for d in accepted]
        assert len(ids) == len(set(ids)) == total, "each event exactly once"
        by_room = assert_in_room_order(accepted)
        assert {room_id: seqs for room_id, seqs in by_room.items()} == {
            room_id: list(range(n)) for room_id, n in stories
        }
        events = [d.entry["event"] for d in accepted if d.entry["room_id"] == stories[0][0]]
        assert events == [
            log.ROOM_CREATED,
            log.PARTICIPANT_JOINED,
            log.PARTICIPANT_JOINED,
            log.TRACK_STATE_CHANGED,
            log.PARTICIPANT_LEFT,
            log.PARTICIPANT_LEFT,
        ]
        assert sorted(ids) == sorted(await stored_ids(system, total))
        # The URL's query (it may carry a token) never reaches a log line.
        assert "not-for-logs" not in system.logs()
        assert SECRET not in system.logs()
    finally:
        await api.close()
        await receiver.stop()


async def test_a_killed_dispatcher_loses_nothing(make_system: Callable[..., System]) -> None:
    receiver = await Receiver().start()
    system = make_system()
    await system.start()
    api = Api(system.edges[0].url)
    try:
        first = system.start_webhooks(WEBHOOK_URL=receiver.url, **FAST)
        stories = [await room_story(api, system.edges[0].ws_url) for _ in range(2)]
        await receiver.until(lambda: len(receiver.accepted()) >= 3)
        first.kill()  # SIGKILL mid-stream
        stories += [await room_story(api, system.edges[0].ws_url) for _ in range(2)]
        total = sum(n for _, n in stories)
        system.start_webhooks(WEBHOOK_URL=receiver.url, **FAST)
        await receiver.until(lambda: len({d.entry["id"] for d in receiver.accepted()}) >= total)
        accepted = receiver.accepted()
        for delivery in accepted:
            check_signed(delivery)
        by_room = assert_in_room_order(accepted)
        assert by_room == {room_id: list(range(n)) for room_id, n in stories}
        # At least once: the only repeats are the events the killed dispatcher
        # held when it died, at most one per log partition (it holds one event
        # of each partition at a time), each delivered at most twice.
        ids = [d.entry["id"] for d in accepted]
        repeated = {i for i in ids if ids.count(i) > 1}
        assert all(ids.count(i) == 2 for i in repeated), ids
        partitions = [subjects.log_partition_of(i.split(".")[0]) for i in repeated]
        assert len(partitions) == len(set(partitions)), repeated
    finally:
        await api.close()
        await receiver.stop()


async def test_two_dispatchers_share_the_work_without_duplicates(
    make_system: Callable[..., System],
) -> None:
    receiver = await Receiver().start()
    system = make_system()
    await system.start()
    api = Api(system.edges[0].url)
    try:
        for _ in range(2):
            system.start_webhooks(WEBHOOK_URL=receiver.url, **FAST)
        await dispatchers_ready(system)
        stories = [await room_story(api, system.edges[0].ws_url) for _ in range(8)]
        total = sum(n for _, n in stories)
        await receiver.until(lambda: len(receiver.accepted()) >= total)
        await settled(system)  # no delivery in flight, none to come: a duplicate would be here
        accepted = receiver.accepted()
        ids = [d.entry["id"] for d in accepted]
        assert len(ids) == len(set(ids)) == total
        assert_in_room_order(accepted)
        agents = {d.headers.get("user-agent") for d in accepted}
        assert len(agents) == 2, agents  # both dispatchers delivered
        # Each says so itself, as `nats req signal.webhooks.<id>.status ''` shows.
        nc = await system.connect()
        try:
            delivered = []
            for dispatcher in system.dispatchers:
                subject = subjects.dispatcher_status(dispatcher.env["DISPATCHER_ID"])
                reply = await nc.request(subject, b"", timeout=5)
                status = msgspec.json.decode(reply.data, type=DispatcherStatus)
                assert status.dead_lettered == 0
                assert status.holding == 0
                delivered.append(status.delivered)
            assert sum(delivered) == total
            assert min(delivered) > 0
        finally:
            await nc.close()
    finally:
        await api.close()
        await receiver.stop()


async def test_undeliverable_events_become_dead_letters(
    make_system: Callable[..., System],
) -> None:
    receiver = await Receiver(fail_status=500).start()
    system = make_system()
    await system.start()
    api = Api(system.edges[0].url)
    try:
        system.start_webhooks(WEBHOOK_URL=receiver.url, **FAST, WEBHOOK_RETRY_FOR="1")
        room_id = await api.create_room("unlucky")
        [msg] = await dead_letters(system, 1)
        assert msg.subject == subjects.webhook_dead_letter(room_id)
        entry = log.log_entry.decode(msg.data)
        assert (entry.id, entry.event) == (f"{room_id}.0", log.ROOM_CREATED)
        assert msg.header is not None
        assert msg.header["Signaling-Webhook-Error"] == "HTTP 500"
        assert msg.header["Signaling-Webhook-Reason"] == "gave_up"
        assert int(msg.header["Signaling-Webhook-Attempts"]) >= 2
        # Later events are not stuck behind it.
        receiver.fail_status = 0
        ann = await enter(api, system.edges[0].ws_url, room_id, "Ann")
        await receiver.until(
            lambda: any(d.entry["room_seq"] == 1 for d in receiver.accepted()), timeout=30
        )
        await ann.client.ws.close()
    finally:
        await api.close()
        await receiver.stop()


async def test_a_refused_event_is_dead_lettered_at_once_and_the_next_one_follows(
    make_system: Callable[..., System],
) -> None:
    """A 4xx other than 408/429 is the receiver's final word on that event: one
    attempt, a dead letter, and the partition's next event right after it."""
    receiver = await Receiver().start()
    system = make_system()
    await system.start()
    api = Api(system.edges[0].url)
    try:
        dispatcher = system.start_webhooks(WEBHOOK_URL=receiver.url, **FAST)
        room_id = await api.create_room("picky", departure_timeout=0)
        refusals = {1: 400, 3: 404, 4: 410, 5: 422}
        receiver.answers = {f"{room_id}.{seq}": [status] for seq, status in refusals.items()}
        receiver.answers[f"{room_id}.2"] = [429, 408]  # "later": retried, then accepted
        _, total = await room_story(api, system.edges[0].ws_url, room_id)
        await receiver.until(lambda: len({d.entry["id"] for d in receiver.attempts}) >= total)

        # Each refused event was POSTed once, and the next event came right after it.
        order = [d.entry["room_seq"] for d in receiver.attempts if d.entry["room_id"] == room_id]
        assert order == [0, 1, 2, 2, 2, 3, 4, 5]
        assert [d.entry["room_seq"] for d in receiver.accepted()] == [0, 2]

        letters = await dead_letters(system, len(refusals))
        for letter, (seq, status) in zip(letters, refusals.items(), strict=True):
            assert log.log_entry.decode(letter.data).id == f"{room_id}.{seq}"
            assert letter.header is not None
            assert letter.header["Signaling-Webhook-Error"] == f"HTTP {status}"
            assert letter.header["Signaling-Webhook-Reason"] == "rejected_4xx"
            assert letter.header["Signaling-Webhook-Attempts"] == "1"

        values = await metrics_until(
            dispatcher, lambda v: v[("signaling_webhooks_delivered_total", "")] == 2
        )
        assert values[("signaling_webhooks_dead_lettered_total", "rejected_4xx")] == 4
        assert values[("signaling_webhooks_dead_lettered_total", "gave_up")] == 0
        assert values[("signaling_webhooks_failed_attempts_total", "")] == 6
    finally:
        await api.close()
        await receiver.stop()


async def test_the_dead_letter_stream_keeps_to_its_byte_limit(
    make_system: Callable[..., System],
) -> None:
    """At ``WEBHOOK_DEAD_MAX_BYTES`` the oldest letters go; a dispatcher started
    with another limit brings the existing stream to it."""
    receiver = await Receiver(fail_status=400).start()  # every event refused
    system = make_system()
    await system.start()
    api = Api(system.edges[0].url)
    nc = await system.connect()
    try:
        first = system.start_webhooks(
            WEBHOOK_URL=receiver.url, **FAST, WEBHOOK_DEAD_MAX_BYTES="4096"
        )
        stories = [await room_story(api, system.edges[0].ws_url) for _ in range(3)]
        total = sum(n for _, n in stories)
        await receiver.until(lambda: len(receiver.attempts) >= total)
        await metrics_until(
            first,
            lambda v: v[("signaling_webhooks_dead_lettered_total", "rejected_4xx")] == total,
        )
        js = nc.jetstream()
        info = await js.stream_info(log.DEAD_LETTER_STREAM)
        assert info.config.max_bytes == 4096
        assert info.config.discard == DiscardPolicy.OLD
        assert info.config.max_age == 30 * 24 * 3600
        assert info.state.last_seq == total
        assert info.state.bytes <= 4096
        assert info.state.first_seq > 1, "the oldest letters were discarded"
        newest = await js.get_last_msg(log.DEAD_LETTER_STREAM, subjects.WEBHOOK_DEAD_ALL)
        assert newest.seq == total, "the newest letter kept"
        ids = {f"{room_id}.{seq}" for room_id, n in stories for seq in range(n)}
        assert log.log_entry.decode(newest.data).id in ids

        first.stop()
        system.start_webhooks(WEBHOOK_URL=receiver.url, **FAST, WEBHOOK_DEAD_MAX_BYTES="8192")
        await dispatchers_ready(system)
        info = await js.stream_info(log.DEAD_LETTER_STREAM)
        assert info.config.max_bytes == 8192
        assert info.state.last_seq == total, "the letters kept"
    finally:
        await nc.close()
        await api.close()
        await receiver.stop()


async def test_metrics_show_pending_events_and_lag_while_the_receiver_is_down(
    make_system: Callable[..., System],
) -> None:
    receiver = await Receiver(failing=True).start()
    system = make_system()
    await system.start()
    api = Api(system.edges[0].url)
    try:
        dispatcher = system.start_webhooks(
            WEBHOOK_URL=receiver.url, **FAST, WEBHOOK_METRICS_INTERVAL="0.2"
        )
        room_id, total = await room_story(api, system.edges[0].ws_url)
        partition = str(subjects.log_partition_of(room_id))
        pending = ("signaling_webhooks_pending", partition)
        lag = ("signaling_webhooks_lag_seconds", partition)

        down = await metrics_until(dispatcher, lambda v: v[pending] == total and v[lag] > 0)
        later = await metrics_until(dispatcher, lambda v: v[lag] > down[lag] + 0.5)
        assert later[pending] == total
        assert later[("signaling_webhooks_failed_attempts_total", "")] >= 2
        assert later[("signaling_webhooks_delivered_total", "")] == 0
        others = [
            later[("signaling_webhooks_pending", str(p))]
            for p in range(subjects.LOG_PARTITIONS)
            if str(p) != partition
        ]
        assert others == [0] * (subjects.LOG_PARTITIONS - 1)

        receiver.failing = False
        await receiver.until(lambda: len(receiver.accepted()) >= total)
        after = await metrics_until(dispatcher, lambda v: v[pending] == 0 and v[lag] == 0)
        assert after[("signaling_webhooks_delivered_total", "")] == total
    finally:
        await api.close()
        await receiver.stop()


async def test_a_key_rotation_signs_with_both_secrets_for_the_official_library(
    make_system: Callable[..., System],
) -> None:
    """While a secret is rotated, ``WEBHOOK_SECRET`` holds the new one and the
    old one: every delivery carries a signature by each, so receivers holding
    either one verify it with the official library; any other secret fails."""
    new = signing.new_secret()
    receiver = await Receiver().start()
    system = make_system()
    await system.start()
    api = Api(system.edges[0].url)
    try:
        system.start_webhooks(
            WEBHOOK_URL=receiver.url, **{**FAST, "WEBHOOK_SECRET": f"{new} {SECRET}"}
        )
        _, total = await room_story(api, system.edges[0].ws_url)
        await receiver.until(lambda: len(receiver.accepted()) >= total)
        for delivery in receiver.accepted():
            assert len(delivery.headers[signing.SIGNATURE_HEADER].split()) == 2
            for secret in (new, SECRET):
                assert Webhook(secret).verify(delivery.body, delivery.headers) == delivery.entry
            with pytest.raises(WebhookVerificationError):
                Webhook(signing.new_secret()).verify(delivery.body, delivery.headers)
        assert new not in system.logs()
    finally:
        await api.close()
        await receiver.stop()


async def test_a_plain_secret_is_refused_at_start_with_the_way_to_make_one(
    make_system: Callable[..., System],
) -> None:
    """A secret in the old form (the UTF-8 bytes of any string) would sign
    what no Standard Webhooks receiver verifies: the dispatcher refuses to
    start, says how to make a secret, and never prints the one it was given."""
    plain = "a-plain-webhook-secret-0123456789abcdef"
    system = make_system()
    system.start_nats()
    dispatcher = system.start_webhooks(WEBHOOK_URL="http://127.0.0.1:9/hooks", WEBHOOK_SECRET=plain)
    code = await asyncio.to_thread(dispatcher.process.wait, 15)
    assert code != 0
    said = dispatcher.log()
    assert "WEBHOOK_SECRET" in said
    assert "signaling webhook-secret" in said
    assert plain not in said
    assert "Traceback" not in said
