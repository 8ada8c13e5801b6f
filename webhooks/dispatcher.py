"""Deliver the event log to ``WEBHOOK_URL``: signed, at least once, per-room order.

The log's subjects carry one of `subjects.LOG_PARTITIONS` partitions of the
room. Each partition has one durable pull consumer (``webhooks-<n>``) with at
most one unacknowledged event: whichever dispatcher fetched it holds it until
the receiver accepted it (or it went to the dead-letter stream), so events of a
room are delivered in order, one at a time, and several dispatchers share the
partitions without delivering anything twice while they are healthy. A
dispatcher that dies loses nothing: JetStream hands its event to another after
``WEBHOOK_ACK_WAIT``; one stopped with SIGTERM gives it back at once.

A receiver that answers a 4xx other than 408 and 429 refuses that event: it goes
to the dead letters at once and the partition moves on (retrying would get the
same answer while holding the partition's other rooms back). Timeouts, 408,
429, 5xx and network errors are retried with backoff for ``WEBHOOK_RETRY_FOR``.
"""

import asyncio
import contextlib
import functools
import logging
import time
from dataclasses import dataclass

import httpx
import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.client import JetStreamContext
from prometheus_client import start_http_server

from bus_schema import codec, subjects
from bus_schema.log import DEAD_LETTER_STREAM, LOG_STREAM, LogEntry, log_entry
from bus_schema.status import DispatcherStatus
from runtime.natsconn import close, connect, until_ready
from runtime.services import MicroService, version
from runtime.streams import ensure_stream
from webhooks import metrics, signing
from webhooks.settings import WebhookSettings

log = logging.getLogger(__name__)

CONSUMER_PREFIX = "webhooks-"


RETRIED_4XX = frozenset({408, 429})
"""4xx answers that mean "later" (request timeout, too many requests), not "never"."""


def consumer_name(partition: int) -> str:
    return f"{CONSUMER_PREFIX}{partition}"


def refused(status: int) -> bool:
    """Whether the receiver refuses the event for good: a 4xx other than 408/429."""
    return 400 <= status < 500 and status not in RETRIED_4XX


@dataclass(frozen=True, slots=True)
class Failure:
    """One POST that did not get a 2xx."""

    error: str
    """``HTTP <status>`` or the transport error's name (recorded in the dead letter)."""
    refused: bool = False
    """The receiver refused it for good (`refused`): no retry."""


class Dispatcher:
    def __init__(self, settings: WebhookSettings) -> None:
        self.settings = settings
        self._keys = signing.keys(settings.secret)
        self.delivered = 0
        self.dead = 0
        self.failed_attempts = 0
        self.holding = 0
        self._http: httpx.AsyncClient | None = None
        self._js: JetStreamContext | None = None
        self._oldest: dict[int, float] = {}
        self._stop = asyncio.Event()
        """Set before the loops are cancelled. Every loop ends on it, and every
        wait in a loop is a wait for it: a cancellation can be swallowed by
        nats-py (its requests' `asyncio.wait_for` drops a cancellation that
        arrives as the reply does, in Python 3.11), and a loop that missed it
        would otherwise go on, holding the process's stop up until SIGKILL."""
        """Per partition, the publish time (Unix seconds) of the event this
        dispatcher holds: the partition's oldest undelivered event."""

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
            self._export_metrics()
            subscribed = [asyncio.Event() for _ in range(subjects.LOG_PARTITIONS)]
            tasks = [
                asyncio.create_task(self._partition(js, p, subscribed[p]), name=f"webhooks-{p}")
                for p in range(subjects.LOG_PARTITIONS)
            ]
            tasks.append(asyncio.create_task(self._watch_pending(js), name="webhooks-pending"))
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
            self._stop.set()
            for task in tasks:
                task.cancel()
            _, late = await asyncio.wait(tasks, timeout=_DRAIN_SECONDS)
            if late:  # a bug: every loop ends on the stop flag
                log.warning("%d dispatcher loops did not end; stopping anyway", len(late))
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
            description="webhook deliveries that failed for good (docs/admin.md)",
            subjects=[subjects.WEBHOOK_DEAD_ALL],
            storage=StorageType.FILE,
            max_age=self.settings.dead_letter_max_age,
            max_bytes=self.settings.dead_letter_max_bytes,
            discard=DiscardPolicy.OLD,
        )
        await ensure_stream(js, dead)
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
        while not self._stop.is_set():
            try:
                msgs = await sub.fetch(1, timeout=5.0)
            except (nats.errors.TimeoutError, TimeoutError):
                self._oldest.pop(partition, None)  # nothing for us (another may hold it)
                continue
            except nats.errors.Error as e:
                log.warning("fetch from partition %d failed: %s", partition, type(e).__name__)
                await self._pause(1.0)
                continue
            for msg in msgs:
                self._oldest[partition] = msg.metadata.timestamp.timestamp()
                try:
                    await self._deliver(msg)
                finally:
                    if msg.metadata.num_pending == 0:
                        # Otherwise keep it until the next (newer) event replaces
                        # it, or a fetch finds none: the lag stays visible between
                        # two events of a backlog.
                        self._oldest.pop(partition, None)

    async def _deliver(self, msg: Msg) -> None:
        try:
            entry = log_entry.decode(msg.data)
        except codec.DecodeError:
            log.error("undecodable log entry on %s: dead-lettered", msg.subject)
            await self._dead_letter(msg, "", "undecodable", 0, metrics.UNREADABLE)
            return
        if entry.hidden:
            # A hidden participant came or went: for operators (the log), never
            # for the app's receiver, which speaks for the room's clients.
            await msg.ack()
            return
        keepalive = asyncio.create_task(self._keep_holding(msg))
        self.holding += 1
        try:
            await self._until_done(msg, entry)
        except (asyncio.CancelledError, _Stopping):
            # Stopping: give the event back now rather than after the ack wait.
            with contextlib.suppress(Exception):
                await asyncio.shield(msg.nak())
            if not self._stop.is_set():
                raise
        finally:
            self.holding -= 1
            keepalive.cancel()

    async def _until_done(self, msg: Msg, entry: LogEntry) -> None:
        """POST until accepted, refused, or retried for ``WEBHOOK_RETRY_FOR``."""
        settings = self.settings
        started = time.monotonic()
        delay = settings.backoff_initial
        attempts = 0
        while True:
            attempts += 1
            failure = await self._post(entry.id, msg.data)
            if failure is None:
                await msg.ack_sync()
                self.delivered += 1
                metrics.DELIVERED.inc()
                return
            self.failed_attempts += 1
            metrics.FAILED_ATTEMPTS.inc()
            if failure.refused:
                reason = metrics.REJECTED
            elif time.monotonic() - started + delay > settings.retry_for:
                reason = metrics.GAVE_UP
            else:
                log.info(
                    "webhook %s failed (%s); retrying in %.1f s", entry.id, failure.error, delay
                )
                if await self._pause(delay):
                    raise _Stopping
                delay = min(delay * 2, settings.backoff_max)
                continue
            log.warning(
                "webhook %s failed %d times (%s, %s): dead-lettered",
                entry.id,
                attempts,
                failure.error,
                reason,
                extra={"room_id": entry.room_id},
            )
            await self._dead_letter(msg, entry.room_id, failure.error, attempts, reason)
            return

    async def _post(self, event_id: str, body: bytes) -> Failure | None:
        """One attempt; ``None`` when the receiver accepted it (any 2xx)."""
        assert self._http is not None
        headers = signing.headers(self._keys, event_id, body)
        try:
            response = await self._http.post(self.settings.url, content=body, headers=headers)
        except httpx.HTTPError as e:
            return Failure(type(e).__name__)
        status = response.status_code
        if 200 <= status < 300:
            return None
        return Failure(f"HTTP {status}", refused=refused(status))

    async def _keep_holding(self, msg: Msg) -> None:
        """Tell JetStream we are still working on the event while we retry."""
        while not await self._pause(self.settings.ack_wait / 3):
            with contextlib.suppress(nats.errors.Error):
                await msg.in_progress()

    async def _dead_letter(
        self, msg: Msg, room_id: str, error: str, attempts: int, reason: str
    ) -> None:
        assert self._js is not None
        headers = {
            "Nats-Msg-Id": f"dead.{msg.header.get('Nats-Msg-Id', '') if msg.header else ''}",
            "Signaling-Webhook-Error": error,
            "Signaling-Webhook-Reason": reason,
            "Signaling-Webhook-Attempts": str(attempts),
            "Signaling-Log-Subject": msg.subject,
        }
        subject = (
            subjects.webhook_dead_letter(room_id) if room_id else subjects.WEBHOOK_DEAD_UNREADABLE
        )
        await self._js.publish(subject, msg.data, headers=headers, timeout=5.0)
        await msg.ack_sync()
        self.dead += 1
        metrics.DEAD_LETTERED.labels(reason).inc()

    def _export_metrics(self) -> None:
        for partition, label in enumerate(metrics.PARTITIONS):
            metrics.PENDING.labels(label)
            metrics.LAG.labels(label).set_function(functools.partial(self._lag, partition))
        settings = self.settings
        if settings.metrics_port is not None:
            start_http_server(settings.metrics_port, addr=settings.metrics_host)
            log.info(
                "metrics on http://%s:%d/metrics", settings.metrics_host, settings.metrics_port
            )

    def _lag(self, partition: int) -> float:
        published = self._oldest.get(partition)
        return 0.0 if published is None else max(0.0, time.time() - published)

    async def _watch_pending(self, js: JetStreamContext) -> None:
        """Refresh the pending gauges from the consumers, every ``metrics_interval``."""
        while not self._stop.is_set():
            for partition, label in enumerate(metrics.PARTITIONS):
                try:
                    info = await js.consumer_info(LOG_STREAM, consumer_name(partition))
                except (nats.errors.Error, TimeoutError) as e:
                    log.debug("consumer info of partition %d: %s", partition, type(e).__name__)
                    continue
                metrics.PENDING.labels(label).set(
                    (info.num_pending or 0) + (info.num_ack_pending or 0)
                )
            await self._pause(self.settings.metrics_interval)

    async def _pause(self, seconds: float) -> bool:
        """Wait ``seconds``, or less if the dispatcher stops meanwhile; whether it stops."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)
        return self._stop.is_set()


def _origin(url: str) -> str:
    """The URL without path or query, for logs (a query may carry a token)."""
    parsed = httpx.URL(url)
    return f"{parsed.scheme}://{parsed.host}{':' + str(parsed.port) if parsed.port else ''}"


_DRAIN_SECONDS = 3.0


class _Stopping(Exception):
    """The dispatcher stops while an event waits to be tried again."""


async def _close(nc: Client) -> None:
    """Drain the connection, for a few seconds at most (what we held is
    given back already), then close it."""
    await close(nc, drain_seconds=_DRAIN_SECONDS)
