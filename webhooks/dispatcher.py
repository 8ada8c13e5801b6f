"""Deliver the event log to ``WEBHOOK_URL``: signed, at least once, per-room order.

The log's subjects carry one of `subjects.LOG_PARTITIONS` partitions of the
room. Each partition has one durable pull consumer (``webhooks-<n>``) with at
most one unacknowledged event: whichever dispatcher fetched it holds it until
the receiver accepted it (or it went to the dead-letter stream), so events of a
room are delivered in order, one at a time, and several dispatchers share the
partitions without delivering anything twice while they are healthy. A
dispatcher that dies loses nothing: JetStream hands its event to another after
``WEBHOOK_ACK_WAIT``; one stopped with SIGTERM gives it back at once.
"""

import asyncio
import contextlib
import logging
import time

import httpx
import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, StorageType, StreamConfig
from nats.js.client import JetStreamContext
from nats.js.errors import NotFoundError

from bus_schema import codec, subjects
from bus_schema.log import DEAD_LETTER_STREAM, LOG_STREAM, log_entry
from bus_schema.status import DispatcherStatus
from signaling.natsconn import connect, until_ready
from signaling.services import MicroService, version
from webhooks import signing
from webhooks.settings import WebhookSettings

log = logging.getLogger(__name__)

CONSUMER_PREFIX = "webhooks-"


def consumer_name(partition: int) -> str:
    return f"{CONSUMER_PREFIX}{partition}"


class Dispatcher:
    def __init__(self, settings: WebhookSettings) -> None:
        self.settings = settings
        self.delivered = 0
        self.dead = 0
        self.failed_attempts = 0
        self.holding = 0
        self._http: httpx.AsyncClient | None = None
        self._js: JetStreamContext | None = None

    async def run(self, stop: asyncio.Event) -> None:
        settings = self.settings
        nc = await connect(
            list(settings.nats_servers),
            name=f"webhooks-{settings.dispatcher_id}",
            role="webhooks",
            credentials=settings.nats_credentials,
        )
        http = httpx.AsyncClient(
            timeout=settings.timeout,
            follow_redirects=False,
            headers={"user-agent": f"signaling-webhooks ({settings.dispatcher_id})"},
        )
        self._http = http
        service: MicroService | None = None
        try:
            js = nc.jetstream()
            self._js = js
            await until_ready(lambda: self._prepare(js), what="event log stream")
            subscribed = [asyncio.Event() for _ in range(subjects.LOG_PARTITIONS)]
            tasks = [
                asyncio.create_task(self._partition(js, p, subscribed[p]), name=f"webhooks-{p}")
                for p in range(subjects.LOG_PARTITIONS)
            ]
            await asyncio.gather(*(event.wait() for event in subscribed))
            # Registered once every partition is being fetched: answering
            # status means taking work.
            service = await MicroService.start(
                nc,
                name="signaling-webhooks",
                instance=settings.dispatcher_id,
                description="Webhook dispatchers: the room event log, POSTed signed",
            )
            await service.add_status(
                subjects.dispatcher_status(settings.dispatcher_id), self.status
            )
            log.info(
                "dispatcher %s delivering to %s", settings.dispatcher_id, _origin(settings.url)
            )
            await stop.wait()
            log.info("dispatcher %s stopping", settings.dispatcher_id)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            if service is not None:
                await service.stop()
            await http.aclose()
            await _close(nc)

    def status(self) -> DispatcherStatus:
        return DispatcherStatus(
            dispatcher_id=self.settings.dispatcher_id,
            version=version(),
            delivered=self.delivered,
            dead_lettered=self.dead,
            failed_attempts=self.failed_attempts,
            holding=self.holding,
        )

    async def _prepare(self, js: JetStreamContext) -> None:
        """The log must exist (the actors create it); the dead-letter stream and
        the consumers are ours."""
        await js.stream_info(LOG_STREAM)
        dead = StreamConfig(
            name=DEAD_LETTER_STREAM,
            description="webhook deliveries that kept failing (docs/admin.md)",
            subjects=[subjects.WEBHOOK_DEAD_ALL],
            storage=StorageType.FILE,
            max_age=self.settings.dead_letter_max_age,
        )
        try:
            await js.stream_info(DEAD_LETTER_STREAM)
        except NotFoundError:
            await js.add_stream(dead)
        for partition in range(subjects.LOG_PARTITIONS):
            config = ConsumerConfig(
                durable_name=consumer_name(partition),
                filter_subject=subjects.log_partition(partition),
                ack_policy=AckPolicy.EXPLICIT,
                deliver_policy=DeliverPolicy.ALL,
                max_ack_pending=1,
                ack_wait=self.settings.ack_wait,
                max_deliver=-1,
                description="webhook deliveries, one event at a time (per-room order)",
            )
            try:
                await js.add_consumer(LOG_STREAM, config)
            except nats.js.errors.BadRequestError as e:
                # Exists with other settings (another dispatcher's): use it as it is.
                log.info("consumer %s kept as it is: %s", config.durable_name, e.description)

    async def _partition(
        self, js: JetStreamContext, partition: int, subscribed: asyncio.Event
    ) -> None:
        sub = await js.pull_subscribe_bind(consumer_name(partition), LOG_STREAM)
        subscribed.set()
        while True:
            try:
                msgs = await sub.fetch(1, timeout=5.0)
            except (nats.errors.TimeoutError, TimeoutError):
                continue
            except nats.errors.Error as e:
                log.warning("fetch from partition %d failed: %s", partition, type(e).__name__)
                await asyncio.sleep(1.0)
                continue
            for msg in msgs:
                await self._deliver(msg)

    async def _deliver(self, msg: Msg) -> None:
        settings = self.settings
        try:
            entry = log_entry.decode(msg.data)
        except codec.DecodeError:
            log.error("undecodable log entry on %s: dead-lettered", msg.subject)
            await self._dead_letter(msg, "", "undecodable", 0)
            return
        keepalive = asyncio.create_task(self._keep_holding(msg))
        self.holding += 1
        try:
            started = time.monotonic()
            delay = settings.backoff_initial
            attempts = 0
            while True:
                attempts += 1
                error = await self._post(entry.id, msg.data)
                if error is None:
                    await msg.ack_sync()
                    self.delivered += 1
                    return
                self.failed_attempts += 1
                if time.monotonic() - started + delay > settings.retry_for:
                    log.warning(
                        "webhook %s failed %d times (%s): dead-lettered",
                        entry.id,
                        attempts,
                        error,
                        extra={"room_id": entry.room_id},
                    )
                    await self._dead_letter(msg, entry.room_id, error, attempts)
                    return
                log.info("webhook %s failed (%s); retrying in %.1f s", entry.id, error, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, settings.backoff_max)
        except asyncio.CancelledError:
            # Stopping: give the event back now rather than after the ack wait.
            with contextlib.suppress(Exception):
                await asyncio.shield(msg.nak())
            raise
        finally:
            self.holding -= 1
            keepalive.cancel()

    async def _post(self, event_id: str, body: bytes) -> str | None:
        """One attempt; ``None`` when the receiver accepted it (any 2xx)."""
        assert self._http is not None
        headers = signing.headers(self.settings.secret, event_id, body)
        try:
            response = await self._http.post(self.settings.url, content=body, headers=headers)
        except httpx.HTTPError as e:
            return type(e).__name__
        if 200 <= response.status_code < 300:
            return None
        return f"HTTP {response.status_code}"

    async def _keep_holding(self, msg: Msg) -> None:
        """Tell JetStream we are still working on the event while we retry."""
        while True:
            await asyncio.sleep(self.settings.ack_wait / 3)
            with contextlib.suppress(nats.errors.Error):
                await msg.in_progress()

    async def _dead_letter(self, msg: Msg, room_id: str, error: str, attempts: int) -> None:
        assert self._js is not None
        headers = {
            "Nats-Msg-Id": f"dead.{msg.header.get('Nats-Msg-Id', '') if msg.header else ''}",
            "Signaling-Webhook-Error": error,
            "Signaling-Webhook-Attempts": str(attempts),
            "Signaling-Log-Subject": msg.subject,
        }
        subject = (
            subjects.webhook_dead_letter(room_id) if room_id else subjects.WEBHOOK_DEAD_UNREADABLE
        )
        await self._js.publish(subject, msg.data, headers=headers, timeout=5.0)
        await msg.ack_sync()
        self.dead += 1


def _origin(url: str) -> str:
    """The URL without path or query, for logs (a query may carry a token)."""
    parsed = httpx.URL(url)
    return f"{parsed.scheme}://{parsed.host}{':' + str(parsed.port) if parsed.port else ''}"


async def _close(nc: Client) -> None:
    with contextlib.suppress(Exception):
        await nc.drain()
