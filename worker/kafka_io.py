"""Kafka connections and topics, with clear errors when the broker is not there."""

from __future__ import annotations

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

from twinstream.errors import ServiceUnavailable
from twinstream.settings import KafkaSettings
from worker.membership import LeaderTrackingRange, keep_finished_joins

# Large enough for an inlined image (TWINSTREAM ingest inlines up to ~900 KB) plus headers.
MAX_REQUEST_BYTES = 4 * 1024 * 1024
# How long a client tries to reach the broker before we say it is unreachable.
BOOTSTRAP_TIMEOUT_MS = 10_000


def _require_bootstrap(settings: KafkaSettings) -> str:
    if not settings.bootstrap:
        raise ServiceUnavailable(
            "no Kafka configured: set TWINSTREAM_KAFKA_BOOTSTRAP or pass --bootstrap "
            "(or run 'twinstream up' for a local broker)")
    return settings.bootstrap


def _unreachable(settings: KafkaSettings, exc: Exception) -> ServiceUnavailable:
    return ServiceUnavailable(
        f"cannot reach Kafka at {settings.bootstrap} ({type(exc).__name__}); is the broker "
        "running and is TWINSTREAM_KAFKA_BOOTSTRAP right?")


def make_producer(settings: KafkaSettings, **overrides) -> KafkaProducer:
    config = dict(bootstrap_servers=_require_bootstrap(settings),
                  bootstrap_timeout_ms=BOOTSTRAP_TIMEOUT_MS, acks="all", linger_ms=5,
                  max_request_size=MAX_REQUEST_BYTES, retries=5, request_timeout_ms=15000,
                  client_id="twinstream-producer")
    config.update(overrides)
    try:
        return KafkaProducer(**config)
    except (KafkaError, OSError) as exc:
        raise _unreachable(settings, exc) from exc


def make_consumer(settings: KafkaSettings, group: str | None = None, **overrides
                  ) -> KafkaConsumer:
    config = dict(bootstrap_servers=_require_bootstrap(settings),
                  bootstrap_timeout_ms=BOOTSTRAP_TIMEOUT_MS, group_id=group or settings.group,
                  enable_auto_commit=False,
                  auto_offset_reset="earliest", session_timeout_ms=settings.session_timeout_ms,
                  heartbeat_interval_ms=max(500, settings.session_timeout_ms // 6),
                  max_partition_fetch_bytes=MAX_REQUEST_BYTES,
                  fetch_max_bytes=4 * MAX_REQUEST_BYTES,
                  # Range, plus knowing whether we lead the group (worker/membership.py).
                  partition_assignment_strategy=[LeaderTrackingRange()],
                  client_id="twinstream-worker")
    config.update(overrides)
    try:
        consumer = KafkaConsumer(**config)
    except (KafkaError, OSError) as exc:
        raise _unreachable(settings, exc) from exc
    keep_finished_joins(consumer)
    return consumer


def make_admin(settings: KafkaSettings) -> KafkaAdminClient:
    try:
        return KafkaAdminClient(bootstrap_servers=_require_bootstrap(settings),
                                bootstrap_timeout_ms=BOOTSTRAP_TIMEOUT_MS,
                                request_timeout_ms=15000, client_id="twinstream-admin")
    except (KafkaError, OSError) as exc:
        raise _unreachable(settings, exc) from exc


def ensure_topics(settings: KafkaSettings) -> None:
    """Create the images topic and its dead-letter topic if they do not exist.

    The images topic is compacted: it keeps the last record of every id (an image, or a
    tombstone for a while), so a re-index that replays it from the beginning rebuilds exactly the
    current index however old the topic is.
    """
    admin = make_admin(settings)
    try:
        existing = set(admin.list_topics())
        wanted = [NewTopic(settings.topic, settings.partitions, 1,
                           topic_configs={"cleanup.policy": "compact"}),
                  NewTopic(settings.dlq_topic, settings.partitions, 1)]
        for topic in wanted:
            if topic.name not in existing:
                try:
                    admin.create_topics([topic])
                except TopicAlreadyExistsError:
                    pass  # another process won the race: fine
    except KafkaError as exc:
        raise _unreachable(settings, exc) from exc
    finally:
        admin.close()
