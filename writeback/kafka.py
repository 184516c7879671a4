"""Publishes events to Kafka with an idempotent producer (acks=all), keyed by SKU, and waits for delivery.

Delivery reports arrive on a background thread that polls the producer; ``publish`` returns once every
message of the batch is acknowledged by the broker (the worker trims the stream only after that), and
raises if any was not, so the caller publishes the batch again: at least once, in order per SKU (the
idempotent producer keeps order within a Kafka partition across its own retries).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Sequence
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]
from flashsale.engine.events import Event, stream_id_key
from flashsale.writeback.messages import Topics, messages

log = logging.getLogger("flashsale.writeback.kafka")


# Delivery errors no retry cures: the broker refuses the message itself (writeback.stalls).
_PERMANENT = {
    KafkaError.MSG_SIZE_TOO_LARGE,
    KafkaError.INVALID_RECORD,
    KafkaError.INVALID_MSG,
    KafkaError.INVALID_MSG_SIZE,
    KafkaError.RECORD_LIST_TOO_LARGE,
    KafkaError.TOPIC_AUTHORIZATION_FAILED,
    KafkaError.UNSUPPORTED_VERSION,
}


class PublishFailed(RuntimeError):
    """Some messages of a batch were not acknowledged. ``permanent``: the broker refused a message itself
    (retrying cannot help: the worker stops the partition); otherwise the batch is published again."""

    def __init__(self, message: str, *, permanent: bool = False, first_failed: str | None = None) -> None:
        super().__init__(message)
        self.permanent = permanent
        self.first_failed = first_failed  # the stream id of the first event a permanent error refused


def producer_config(bootstrap: str, message_timeout_ms: int) -> dict[str, Any]:
    return {
        "bootstrap.servers": bootstrap,
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 5,
        "batch.num.messages": 10_000,
        "queue.buffering.max.messages": 500_000,
        "message.timeout.ms": message_timeout_ms,
        # The Java client's partitioner: the same SKU lands on the same partition as for JVM producers.
        "partitioner": "murmur2_random",
        "client.id": "flashsale-writeback",
    }


def ensure_topics(
    bootstrap: str, wanted: Sequence[tuple[str, int]], *, replication: int = -1, timeout_s: float = 10.0
) -> None:
    """Creates the topics that do not exist yet; replication -1 takes the broker's default."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    existing = admin.list_topics(timeout=timeout_s).topics
    missing = [NewTopic(name, partitions, replication) for name, partitions in wanted if name not in existing]
    if not missing:
        return
    for name, future in admin.create_topics(missing, request_timeout=timeout_s).items():
        try:
            future.result(timeout=timeout_s)
            log.info("event=topic_created topic=%s", name)
        except KafkaException as error:
            if error.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise


class _Delivery:
    """Counts the acknowledgements of one batch and resolves a future when all are in."""

    def __init__(self, loop: asyncio.AbstractEventLoop, expected: int) -> None:
        self.loop = loop
        self.pending = expected
        self.errors: list[str] = []
        self.refused: list[str] = []  # stream ids of events whose message the broker refused for good
        self.done: asyncio.Future[None] = loop.create_future()
        self._lock = threading.Lock()

    def report(self, error: KafkaError | None, stream_id: str) -> None:
        with self._lock:
            if error is not None:
                if len(self.errors) < 5:
                    self.errors.append(str(error))
                if error.code() in _PERMANENT:
                    self.refused.append(stream_id)
            self.pending -= 1
            finished = self.pending == 0
        if finished:
            self.loop.call_soon_threadsafe(self._finish)

    def _finish(self) -> None:
        if not self.done.done():
            self.done.set_result(None)


class Publisher:
    """One idempotent producer shared by all partitions of a worker."""

    def __init__(self, bootstrap: str, topics: Topics, *, message_timeout_ms: int = 30_000) -> None:
        self.bootstrap = bootstrap
        self.topics = topics
        self.message_timeout_ms = message_timeout_ms
        config = {**producer_config(bootstrap, message_timeout_ms), "error_cb": self._on_error}
        self._producer = Producer(config, logger=log)
        # Set when the producer can no longer be trusted (fatal error, or a batch that timed out, after
        # which some brokers fence the producer id): the worker then replaces it.
        self.broken = False
        self._running = True
        self._poller = threading.Thread(target=self._poll, name="kafka-delivery", daemon=True)
        self._poller.start()

    def _on_error(self, error: KafkaError) -> None:
        if error.fatal():
            self.broken = True
        log.warning("event=kafka_client_error fatal=%s error=%r", error.fatal(), str(error))

    def _poll(self) -> None:
        while self._running:
            self._producer.poll(0.05)

    async def publish(self, events: Sequence[Event]) -> int:
        """Sends every event to its topics and waits until the broker acknowledged all; returns the count."""
        loop = asyncio.get_running_loop()
        outgoing = [
            (topic, event.sku, body, event.stream_id)
            for event in events
            for topic, body in messages(event, self.topics)
        ]
        if not outgoing:
            return 0
        delivery = _Delivery(loop, len(outgoing))
        produce = self._producer.produce
        for topic, key, body, stream_id in outgoing:

            def report(error: KafkaError | None, _message: Any, stream_id: str = stream_id) -> None:
                delivery.report(error, stream_id)

            while True:
                try:
                    produce(topic, body, key, on_delivery=report)
                    break
                except BufferError:
                    # The local queue is full (broker slow or away): let deliveries drain, then go on.
                    await asyncio.sleep(0.05)
                except KafkaException as error:
                    # A fatal producer error (e.g. the idempotence sequence was broken): start over.
                    delivery.report(error.args[0], stream_id)
                    break
        await delivery.done
        if delivery.errors:
            self.broken = True
            refused = sorted(delivery.refused, key=stream_id_key)
            raise PublishFailed(
                "; ".join(delivery.errors),
                permanent=bool(refused),
                first_failed=refused[0] if refused else None,
            )
        return len(outgoing)

    def close(self, timeout_s: float = 5.0) -> None:
        """Delivers what is queued (up to ``timeout_s``), then stops; a broken producer drops its queue."""
        self._running = False
        self._poller.join(timeout=2)
        if self.broken:
            self._producer.purge()
        self._producer.flush(timeout_s)
