"""One publisher: every record twinstream writes to Kafka (images, tombstones, dead letters and
replays, from the CLI, the workers and the API) goes through ``Publisher``, with one timeout
(``TWINSTREAM_KAFKA_PUBLISH_TIMEOUT_S``) and one way of reporting a broker that is not there.
"""

from __future__ import annotations

from collections.abc import Iterable

from kafka.errors import KafkaError

from twinstream.errors import ServiceUnavailable
from twinstream.messages import Headers, ImageMessage
from twinstream.settings import KafkaSettings
from worker.kafka_io import ensure_topics, make_producer


class Publisher:
    """A Kafka producer for one topic family (``<topic>`` and ``<topic>.dlq``).

    ``send``/``send_message`` return the producer's future (to wait on, or to hang callbacks
    on); ``publish`` sends and waits until the broker has every record.
    """

    def __init__(self, settings: KafkaSettings, client_id: str = "twinstream-producer", *,
                 linger_ms: int = 5, create_topics: bool = True):
        if create_topics:
            ensure_topics(settings)
        self.settings = settings
        self.timeout_s = settings.publish_timeout_s
        self.producer = make_producer(settings, client_id=client_id, linger_ms=linger_ms)

    def send(self, topic: str, key: bytes | None, value: bytes | None, headers: Headers):
        """One raw record (a dead letter, a replay): raises ``KafkaError`` when refused at
        once (too large, say); the returned future raises the broker's error."""
        return self.producer.send(topic, key=key, value=value, headers=headers)

    def send_message(self, message: ImageMessage):
        """One image or tombstone to the images topic; raises ``InputError`` for a message a
        worker would refuse (our producers never publish a poison pill)."""
        key, value, headers = message.to_record()
        return self.send(self.settings.topic, key, value, headers)

    def publish(self, messages: Iterable[ImageMessage]) -> list[str]:
        """Send and wait until the broker has all of them; their ids, in order."""
        messages = list(messages)
        try:
            futures = [self.send_message(m) for m in messages]
            self.flush()
            for future in futures:
                self.wait(future)
        except KafkaError as exc:
            raise ServiceUnavailable(f"could not publish to {self.settings.topic}: "
                                     f"{type(exc).__name__}: {exc}") from exc
        return [m.id for m in messages]

    def wait(self, future):
        return future.get(timeout=self.timeout_s)

    def flush(self) -> None:
        self.producer.flush(timeout=self.timeout_s)

    def close(self) -> None:
        self.producer.close(timeout=self.timeout_s)

    def __enter__(self) -> Publisher:
        return self

    def __exit__(self, *_exc) -> None:
        self.close()
