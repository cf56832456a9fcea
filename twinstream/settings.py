"""Typed settings, read once at the edge from ``TWINSTREAM_*`` variables and CLI flags.

Each section is a frozen dataclass; a field ``url`` of section ``redis`` is the environment variable
``TWINSTREAM_REDIS_URL`` and, where the field names a ``flag``, a command-line option. Flags beat
variables, variables beat defaults. Nothing below the CLI reads the environment: the resulting
``Settings`` (or one of its sections) is passed down explicitly.

The README's configuration table is generated from these declarations (``settings_table``), so
the documentation cannot drift from the code.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from twinstream.errors import ConfigError
from twinstream.providers import parse_providers

ENV_PREFIX = "TWINSTREAM_"
QUANTIZATIONS = ("q8", "noquant", "bin")
LOG_FORMATS = ("text", "json")
DURABILITY_LEVELS = ("auto", "none", "local", "replicas")


def setting(default: Any, help: str, flag: str | None = None) -> Any:
    """Declare one setting: its default, a one-line meaning, and optionally its CLI flag."""
    return field(default=default, metadata={"help": help, "flag": flag})


@dataclass(frozen=True)
class KafkaSettings:
    bootstrap: str = setting(
        "", "Kafka bootstrap servers (host:port,...). Empty: commands that need a broker "
        "start the embedded one (demo) or fail with a hint.", flag="--bootstrap")
    topic: str = setting("images", "Topic that carries images (key = image id).", flag="--topic")
    group: str = setting("twinstream-workers", "Consumer group of the workers.", flag="--group")
    partitions: int = setting(
        8, "Partitions created for a new images topic; the upper bound on useful workers.",
        flag="--partitions")
    session_timeout_ms: int = setting(
        10000, "Consumer session timeout; a dead worker's partitions move after this long.")
    inline_max_bytes: int = setting(
        900_000, "Largest image ingest puts inside a record; a larger file is sent by reference "
        "(empty value, a `uri` header naming its path on a volume the workers share).",
        flag="--inline-max-bytes")
    publish_timeout_s: float = setting(
        30.0, "Longest anything waits for the broker to take what it publishes (ingest, "
        "delete, dead letters, replay, the API's ingest); then it reports Kafka unavailable.")

    @property
    def dlq_topic(self) -> str:
        """Dead letters live beside their topic, so every topic has exactly one DLQ."""
        return f"{self.topic}.dlq"


@dataclass(frozen=True)
class RedisSettings:
    url: str = setting(
        "", "Redis 8 URL (redis://[:password@]host:port/db). Empty: as for the broker.",
        flag="--redis-url")
    index: str = setting("images", "Name of the vector index inside Redis.", flag="--index")
    quant: str = setting(
        "q8", "Vector quantization of a new index version: q8 (4x smaller), noquant (exact "
        "float32) or bin (1 bit per dimension).", flag="--quant")
    shards: int = setting(
        1, "Vector-set shards of a new index version; more than 1 spreads a big index over the "
        "masters of a Redis Cluster (queries fan out and merge).", flag="--shards")
    ef: int = setting(
        0, "Search exploration factor (HNSW EF): higher finds more of the true nearest "
        "neighbours, slower; 0 uses Redis's default (100, or k when larger).", flag="--ef")
    durability: str = setting(
        "auto", "What a worker waits for before it commits offsets: none, local (Redis's "
        "append-only file fsynced: WAITAOF), replicas (also TWINSTREAM_REDIS_MIN_REPLICAS "
        "replicas: WAIT) or auto (local when Redis has AOF on, else none).")
    durability_timeout_ms: int = setting(
        5000, "Longest a worker waits for Redis to confirm a batch durable before it writes "
        "the batch again and retries (nothing is committed meanwhile).")
    min_replicas: int = setting(
        1, "Replicas that must acknowledge a batch when TWINSTREAM_REDIS_DURABILITY is "
        "replicas.")


@dataclass(frozen=True)
class ModelSettings:
    path: str = setting("", "ONNX encoder file (with its model card) used to embed images.",
                        flag="--model")
    threads: int = setting(0, "onnxruntime intra-op threads; 0 lets onnxruntime choose.",
                           flag="--threads")
    inter_threads: int = setting(
        1, "onnxruntime inter-op threads: operators run side by side when above 1 (the "
        "encoders are chains of operators, so 1 is usually best).", flag="--inter-threads")
    spin: bool = setting(
        False, "Let onnxruntime's idle threads spin-wait for the next batch: a little lower "
        "latency on a quiet machine, but CPU taken from everyone else on a shared one.")
    providers: str = setting(
        "cpu", "onnxruntime execution providers in order of preference, e.g. cuda,cpu or "
        "openvino,cpu (short names or onnxruntime's own); one this onnxruntime build lacks is "
        "skipped with a warning and CPU is always the last resort.", flag="--providers")


@dataclass(frozen=True)
class WorkerSettings:
    batch: int = setting(64, "Images embedded per onnxruntime call.", flag="--batch")
    max_wait_ms: int = setting(
        50, "Longest a partial batch waits for more records before it is embedded.",
        flag="--max-wait-ms")
    processes: int = setting(
        0, "Worker processes (consumers in the group); 0 = one per CPU core.",
        flag="--processes")
    decode_threads: int = setting(
        2, "Threads per worker that decode and preprocess images (Pillow releases the GIL).",
        flag="--decode-threads")
    max_in_flight: int = setting(
        3, "Batches a worker holds between polling and committing (decoding, embedding, "
        "writing); bounds its memory and its replay after a crash.")
    max_awaiting_durability: int = setting(
        9, "Batches written and waiting for Redis to confirm them durable, on top of "
        "max_in_flight (only when TWINSTREAM_REDIS_DURABILITY waits): with appendfsync everysec a "
        "confirmation takes up to a second, and these keep the worker writing meanwhile "
        "(measured: 3 batches in all gave 0.28x the throughput of no waiting, 12 gave 1.02x).")
    thumbnails: bool = setting(
        True, "Keep a thumbnail per indexed image (a JPEG of at most 128 px, or the image itself "
        "when it is a small PNG or JPEG), so that result pages show it wherever the original "
        "lives; false saves the worker the encoding and Redis the bytes (result pages then "
        "show those items without a picture).")
    max_image_pixels: int = setting(
        40_000_000, "Largest image (width x height) a worker decodes; larger ones are dead "
        "letters, which guards against decompression bombs (also Pillow's own limit).")
    max_image_bytes: int = setting(
        20_000_000, "Largest encoded image a worker accepts, inline or by `uri`; larger records "
        "are dead letters.")
    uri_roots: str = setting(
        "", "Absolute folders (separated by ':') that a record's `uri` may point into (the "
        "volume shared with the producers); empty: no by-reference images are read at all.")
    uri_read_timeout_s: float = setting(
        10.0, "Longest a worker waits to read one by-reference image; a slower read (a hung "
        "mount) makes that record a dead letter.")
    stall_timeout_s: float = setting(
        60.0, "A batch that stays this long in one step makes the worker's health `degraded` "
        "(it keeps waiting; the health report names the step).")
    commit_interval_ms: int = setting(
        500, "Shortest time between two offset commits of a worker (it commits only what is "
        "written).")
    shutdown_timeout_s: float = setting(
        30.0, "On SIGTERM/SIGINT: longest a worker spends writing its in-flight batches before "
        "it exits without committing them.")
    metrics_port: int = setting(
        0, "Port of a worker's Prometheus /metrics and /health endpoint (process i of a pool "
        "uses port + i); 0: off.", flag="--metrics-port")
    log_format: str = setting("text", "Worker log lines: text or json (one object a line).",
                              flag="--log-format")
    unassigned_alarm_s: float = setting(
        120.0, "A worker that owns no partition for this long reports itself degraded in "
        "/health and `twinstream status` (more workers than partitions, or a group that does "
        "not assign).")


@dataclass(frozen=True)
class ApiSettings:
    host: str = setting("127.0.0.1", "Address the HTTP API listens on.", flag="--host")
    port: int = setting(8000, "Port of the HTTP API.", flag="--port")
    token: str = setting(
        "", "Bearer token required by write endpoints (ingest, enroll, delete); empty: no auth.")
    max_upload_bytes: int = setting(10_000_000, "Largest accepted upload; larger ones get 413.")
    cors_origins: str = setting("", "Comma-separated origins allowed by CORS; empty: CORS off.")
    request_timeout_s: float = setting(
        30.0, "Longest a request may take (reading the upload included); slower ones get 504.")
    max_k: int = setting(1000, "Largest k a search or recognition may ask for; larger ones get "
                         "422.")
    token_file: str = setting(
        "", "File whose first line is the bearer token (a Docker or Kubernetes secret); "
        "used when TWINSTREAM_API_TOKEN is empty.", flag="--token-file")
    decode_concurrency: int = setting(
        4, "Uploads decoded at the same time; more wait a moment, then get 503 with "
        "Retry-After.")
    decode_pixel_budget: int = setting(
        80_000_000, "Pixels (width x height) of all uploads being decoded at once; an upload "
        "that does not fit gets 503 with Retry-After (bounds the API's memory).")


@dataclass(frozen=True)
class RecognizeSettings:
    target_fpir: float = setting(
        0.05, "Share of strangers that recognition may accept as someone (the false-positive "
        "identification rate): with it and the number of identities enrolled, the model card "
        "gives the threshold, unless --threshold is given.", flag="--target-fpir")


@dataclass(frozen=True)
class Settings:
    kafka: KafkaSettings = field(default_factory=KafkaSettings)
    redis: RedisSettings = field(default_factory=RedisSettings)
    model: ModelSettings = field(default_factory=ModelSettings)
    worker: WorkerSettings = field(default_factory=WorkerSettings)
    api: ApiSettings = field(default_factory=ApiSettings)
    recognize: RecognizeSettings = field(default_factory=RecognizeSettings)


@dataclass(frozen=True)
class SettingSpec:
    """Where one setting lives and how a user sets it (one row of the README table)."""

    section: str
    name: str
    type: type
    default: Any
    help: str
    flag: str | None

    @property
    def key(self) -> str:
        return f"{self.section}.{self.name}"

    @property
    def env(self) -> str:
        return f"{ENV_PREFIX}{self.section.upper()}_{self.name.upper()}"


def setting_specs() -> list[SettingSpec]:
    """Every setting of every section, in declaration order."""
    specs = []
    for section_field in dataclasses.fields(Settings):
        section_cls = section_field.default_factory  # type: ignore[misc]
        hints = typing.get_type_hints(section_cls)
        for f in dataclasses.fields(section_cls):
            specs.append(SettingSpec(section_field.name, f.name, hints[f.name], f.default,
                                     f.metadata.get("help", ""), f.metadata.get("flag")))
    return specs


def _coerce(spec: SettingSpec, raw: Any, source: str) -> Any:
    if not isinstance(raw, str):
        return raw  # a flag argparse already typed
    text = raw.strip()
    try:
        if spec.type is bool:
            lowered = text.lower()
            if lowered in {"1", "true", "yes", "on"}:
                return True
            if lowered in {"0", "false", "no", "off", ""}:
                return False
            raise ValueError(text)
        if spec.type is int:
            return int(text.replace("_", ""))
        if spec.type is float:
            value = float(text)
            if not math.isfinite(value):
                raise ValueError(text)
            return value
        text.encode("utf-8")  # argv and the environment hold undecodable bytes as surrogates
        if spec.type is Path:
            return Path(text)
        return text
    except (ValueError, UnicodeEncodeError) as exc:
        shown = raw.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        raise ConfigError(f"{source}={shown!r} is not a valid {spec.type.__name__} "
                          f"({spec.help})") from exc


def load_settings(environ: Mapping[str, str] | None = None,
                  overrides: Mapping[str, Any] | None = None) -> Settings:
    """Build ``Settings`` from defaults, then ``TWINSTREAM_*`` variables, then overrides.

    ``overrides`` maps ``"section.name"`` to a value (typically CLI flags that were given).
    An unknown ``TWINSTREAM_*`` variable is an error: a typo must not silently fall back to a
    default.
    """
    environ = environ or {}
    overrides = overrides or {}
    specs = setting_specs()
    by_env = {s.env: s for s in specs}
    by_key = {s.key: s for s in specs}

    unknown = [name for name in environ if name.startswith(ENV_PREFIX) and name not in by_env]
    if unknown:
        name = sorted(unknown)[0]
        close = difflib.get_close_matches(name, list(by_env), n=1)
        hint = f"; did you mean {close[0]}?" if close else f"; known: {', '.join(sorted(by_env))}"
        raise ConfigError(f"unknown setting {name}{hint}")

    values: dict[str, dict[str, Any]] = {s.section: {} for s in specs}
    for spec in specs:
        if spec.env in environ:
            values[spec.section][spec.name] = _coerce(spec, environ[spec.env], spec.env)
    for key, value in overrides.items():
        if key not in by_key:
            raise ConfigError(f"unknown setting {key!r}")
        if value is not None:
            spec = by_key[key]
            values[spec.section][spec.name] = _coerce(spec, value, spec.flag or key)

    sections = {}
    for section_field in dataclasses.fields(Settings):
        section_cls = section_field.default_factory  # type: ignore[misc]
        sections[section_field.name] = section_cls(**values[section_field.name])
    settings = Settings(**sections)
    _validate(settings)
    return settings


def _validate(settings: Settings) -> None:
    positive = {
        "TWINSTREAM_KAFKA_PARTITIONS": settings.kafka.partitions,
        "TWINSTREAM_KAFKA_INLINE_MAX_BYTES": settings.kafka.inline_max_bytes,
        "TWINSTREAM_KAFKA_PUBLISH_TIMEOUT_S": settings.kafka.publish_timeout_s,
        "TWINSTREAM_WORKER_BATCH": settings.worker.batch,
        "TWINSTREAM_WORKER_DECODE_THREADS": settings.worker.decode_threads,
        "TWINSTREAM_WORKER_MAX_IN_FLIGHT": settings.worker.max_in_flight,
        "TWINSTREAM_WORKER_MAX_AWAITING_DURABILITY": settings.worker.max_awaiting_durability,
        "TWINSTREAM_WORKER_MAX_IMAGE_PIXELS": settings.worker.max_image_pixels,
        "TWINSTREAM_WORKER_MAX_IMAGE_BYTES": settings.worker.max_image_bytes,
        "TWINSTREAM_WORKER_SHUTDOWN_TIMEOUT_S": settings.worker.shutdown_timeout_s,
        "TWINSTREAM_WORKER_UNASSIGNED_ALARM_S": settings.worker.unassigned_alarm_s,
        "TWINSTREAM_WORKER_URI_READ_TIMEOUT_S": settings.worker.uri_read_timeout_s,
        "TWINSTREAM_WORKER_STALL_TIMEOUT_S": settings.worker.stall_timeout_s,
        "TWINSTREAM_API_DECODE_CONCURRENCY": settings.api.decode_concurrency,
        "TWINSTREAM_API_DECODE_PIXEL_BUDGET": settings.api.decode_pixel_budget,
    }
    for name, value in positive.items():
        if value <= 0:
            raise ConfigError(f"{name} must be positive, got {value}")
    if not 0 < settings.recognize.target_fpir < 1:
        raise ConfigError(f"TWINSTREAM_RECOGNIZE_TARGET_FPIR must be between 0 and 1 "
                          f"(exclusive), got {settings.recognize.target_fpir}")
    for root in filter(None, (r.strip() for r in settings.worker.uri_roots.split(":"))):
        if not Path(root).is_absolute():
            raise ConfigError(f"TWINSTREAM_WORKER_URI_ROOTS must name absolute folders, "
                              f"got {root!r}")
    _validate_bootstrap(settings.kafka.bootstrap)
    if settings.redis.quant not in QUANTIZATIONS:
        raise ConfigError(f"TWINSTREAM_REDIS_QUANT must be one of {', '.join(QUANTIZATIONS)}, "
                          f"got {settings.redis.quant!r}")
    if not 1 <= settings.redis.shards <= 1024:
        raise ConfigError(f"TWINSTREAM_REDIS_SHARDS must be between 1 and 1024, "
                          f"got {settings.redis.shards}")
    if settings.redis.durability not in DURABILITY_LEVELS:
        raise ConfigError(f"TWINSTREAM_REDIS_DURABILITY must be one of "
                          f"{', '.join(DURABILITY_LEVELS)}, got {settings.redis.durability!r}")
    if settings.redis.durability_timeout_ms <= 0 or settings.redis.min_replicas < 1:
        raise ConfigError("TWINSTREAM_REDIS_DURABILITY_TIMEOUT_MS and "
                          "TWINSTREAM_REDIS_MIN_REPLICAS must be positive")
    if not 0 <= settings.redis.ef <= 1_000_000:
        raise ConfigError(f"TWINSTREAM_REDIS_EF must be between 0 and 1000000, "
                          f"got {settings.redis.ef}")
    non_negative = {
        "TWINSTREAM_WORKER_MAX_WAIT_MS": settings.worker.max_wait_ms,
        "TWINSTREAM_WORKER_PROCESSES": settings.worker.processes,
        "TWINSTREAM_WORKER_COMMIT_INTERVAL_MS": settings.worker.commit_interval_ms,
    }
    for name, value in non_negative.items():
        if value < 0:
            raise ConfigError(f"{name} must be >= 0, got {value}")
    if not 0 <= settings.worker.metrics_port <= 65535:
        raise ConfigError(f"TWINSTREAM_WORKER_METRICS_PORT must be a port number (0: off), "
                          f"got {settings.worker.metrics_port}")
    if settings.worker.log_format not in LOG_FORMATS:
        raise ConfigError(f"TWINSTREAM_WORKER_LOG_FORMAT must be one of "
                          f"{', '.join(LOG_FORMATS)}, got {settings.worker.log_format!r}")
    parse_providers(settings.model.providers)  # an unknown name is a ConfigError now
    if settings.model.threads < 0:
        raise ConfigError("TWINSTREAM_MODEL_THREADS must be >= 0")
    if settings.model.inter_threads < 1:
        raise ConfigError("TWINSTREAM_MODEL_INTER_THREADS must be >= 1")
    if not 0 < settings.api.port < 65536:
        raise ConfigError(f"TWINSTREAM_API_PORT must be 1-65535, got {settings.api.port}")
    for name, value in {"TWINSTREAM_API_MAX_UPLOAD_BYTES": settings.api.max_upload_bytes,
                        "TWINSTREAM_API_REQUEST_TIMEOUT_S": settings.api.request_timeout_s,
                        "TWINSTREAM_API_MAX_K": settings.api.max_k}.items():
        if value <= 0:
            raise ConfigError(f"{name} must be positive, got {value}")


def _validate_bootstrap(bootstrap: str) -> None:
    """``host:port[,host:port...]``, checked here so that a typo is one clear line rather than
    an error from inside the Kafka client."""
    for item in filter(None, (part.strip() for part in bootstrap.split(","))):
        host, sep, port = item.rpartition(":")
        host = host.strip("[]")  # an IPv6 literal in brackets
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536 \
                or any(c.isspace() or c in "/@?#" for c in host) \
                or (":" in host and not item.startswith("[")):
            raise ConfigError(f"TWINSTREAM_KAFKA_BOOTSTRAP / --bootstrap must be host:port "
                              f"pairs separated by commas, got {bootstrap!r}")


def settings_env(settings: Settings) -> dict[str, str]:
    """``settings`` as the ``TWINSTREAM_*`` variables that give a child process exactly them."""
    return {spec.env: str(getattr(getattr(settings, spec.section), spec.name))
            for spec in setting_specs()}


def child_env(settings: Settings, base: Mapping[str, str]) -> dict[str, str]:
    """``base`` (the caller's environment) without its ``TWINSTREAM_*`` variables, plus the
    variables of ``settings``: the environment for a ``twinstream`` child process."""
    env = {k: v for k, v in base.items() if not k.startswith(ENV_PREFIX)}
    env.update(settings_env(settings))
    return env


def flag_specs(keys: Iterable[str]) -> list[SettingSpec]:
    """The specs of the given ``section.name`` keys, for a command that exposes them as flags."""
    by_key = {s.key: s for s in setting_specs()}
    missing = [k for k in keys if k not in by_key or not by_key[k].flag]
    assert not missing, f"settings without a flag: {missing}"  # programming error, not user error
    return [by_key[k] for k in keys]


def settings_table() -> str:
    """The configuration table of the README, as Markdown."""
    rows = ["| variable | flag | default | meaning |", "| --- | --- | --- | --- |"]
    for spec in setting_specs():
        default = "(empty)" if spec.default == "" else f"`{spec.default}`"
        flag = f"`{spec.flag}`" if spec.flag else ""
        rows.append(f"| `{spec.env}` | {flag} | {default} | {spec.help} |")
    return "\n".join(rows)
