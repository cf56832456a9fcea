"""Connecting to Redis 8 (a single server or a Redis Cluster) and turning its errors into ours.

``connect(url)`` returns a ``redis.Redis`` or, when the server is a Redis Cluster node, a
``redis.cluster.RedisCluster`` (detected with ``INFO cluster``; ``redis+cluster://`` insists on a
cluster). Either way the caller gets a client that is reachable, authorised and has vector sets,
or a ``ServiceUnavailable`` / ``ConfigError`` with one clear line.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit

import redis
from redis.cluster import RedisCluster

from twinstream.errors import (
    ConfigError,
    IndexMismatchError,
    InputError,
    NotFoundError,
    ServiceUnavailable,
    TwinstreamError,
)

Client = redis.Redis | RedisCluster
CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}


def safe_url(url: str) -> str:
    """The URL without its password, for messages."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.rsplit('@', 1)[1]}"
    return url


def connect(url: str, timeout_s: float = 5.0) -> Client:
    """A client for ``url`` after checking it is reachable, authorised and has vector sets."""
    if not url:
        raise ServiceUnavailable(
            "no Redis configured: set TWINSTREAM_REDIS_URL or pass --redis-url "
            "(or run 'twinstream up' for a local one)")
    scheme = url.split("://", 1)[0] if "://" in url else ""
    wants_cluster = scheme in CLUSTER_SCHEMES
    plain_url = CLUSTER_SCHEMES[scheme] + url[len(scheme):] if wants_cluster else url
    options = {"socket_timeout": timeout_s, "socket_connect_timeout": timeout_s}
    where = f"Redis at {safe_url(url)}"
    try:
        client: Client = redis.Redis.from_url(plain_url, **options)
        client.ping()
        is_cluster = str(client.info("cluster").get("cluster_enabled", 0)) == "1"
        if wants_cluster and not is_cluster:
            raise ConfigError(f"{where} is not a Redis Cluster node (cluster_enabled:0); "
                              "use a redis:// URL")
        if is_cluster:
            client.close()
            client = RedisCluster.from_url(plain_url, **options)
    except (redis.AuthenticationError, redis.ResponseError) as exc:
        text = str(exc)
        if not _has_password(plain_url) and ("NOAUTH" in text or "authenticated" in text
                                             or isinstance(exc, redis.AuthenticationError)):
            raise ServiceUnavailable(
                f"{where} needs a password (redis://:PASSWORD@host:port)") from exc
        if isinstance(exc, redis.AuthenticationError) or "WRONGPASS" in text:
            raise ServiceUnavailable(f"{where} refused the credentials: {text}") from exc
        raise ServiceUnavailable(f"{where}: {text}") from exc
    except (redis.ConnectionError, redis.TimeoutError, ValueError) as exc:
        raise ServiceUnavailable(
            f"cannot reach {where} ({exc}); is it running and is the URL right?") from exc
    except redis.RedisError as exc:  # e.g. a cluster whose slots are not all served
        raise ServiceUnavailable(f"{where}: {type(exc).__name__}: {exc}") from exc
    require_vector_sets(client, url)
    return client


def _has_password(url: str) -> bool:
    try:
        return bool(urlsplit(url).password)
    except ValueError:
        return False


def is_cluster(client: Client) -> bool:
    return isinstance(client, RedisCluster)


def require_vector_sets(client: Client, url: str = "") -> None:
    try:
        client.execute_command("VCARD", "twinstream:probe:no-such-key")
    except redis.ResponseError as exc:
        info = client.info("server")
        if "redis_version" not in info:  # a cluster answers per node
            info = next(iter(info.values()), {})
        version = str(info.get("redis_version", "?"))
        raise ServiceUnavailable(
            f"Redis {version} at {safe_url(url)} has no vector sets: twinstream needs Redis >= 8.0 "
            "vector sets (VADD/VSIM)") from exc


def _reason(exc: Exception) -> str:
    """The server's message; a pipeline's error also quotes the command (with binary vectors)."""
    text = str(exc)
    return text.split("caused error: ", 1)[1] if "caused error: " in text else text


# Server states that pass (a restart loading its AOF, a failover, memory pressure): a caller that
# retries will succeed later, so they map to ServiceUnavailable like a lost connection.
# redis-py turns some of those replies into classes of their own and drops the prefix from the
# message ("OOM command not allowed" arrives as OutOfMemoryError("command not allowed ...")).
TRANSIENT_ERRORS = (redis.exceptions.BusyLoadingError, redis.exceptions.ReadOnlyError,
                    redis.exceptions.OutOfMemoryError, redis.exceptions.MasterDownError,
                    redis.exceptions.TryAgainError, redis.exceptions.ClusterDownError)
TRANSIENT_REPLIES = ("OOM", "LOADING", "READONLY", "MASTERDOWN", "TRYAGAIN", "CLUSTERDOWN",
                     "NOREPLICAS", "MISCONF", "BUSY")


@contextmanager
def translate_errors(context: str, wrongtype: Callable[[], str] | None = None) -> Iterator[None]:
    """Redis exceptions raised inside become one-line ``TwinstreamError``s about ``context``.

    ``wrongtype`` explains a WRONGTYPE error (which key holds what); it runs only then.
    """
    try:
        yield
    except TwinstreamError:
        raise
    except redis.AuthenticationError as exc:
        raise ServiceUnavailable(f"{context}: Redis refused the credentials ({exc})") from exc
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        raise ServiceUnavailable(f"{context}: lost the connection to Redis ({exc})") from exc
    except redis.ResponseError as exc:
        reason = _reason(exc)
        if isinstance(exc, TRANSIENT_ERRORS) or reason.startswith(TRANSIENT_REPLIES):
            raise ServiceUnavailable(f"{context}: Redis is not ready ({reason})") from exc
        if "WRONGTYPE" in reason:
            detail = wrongtype() if wrongtype else "a key holds another type of value"
            raise ConfigError(f"{context}: {detail}; the index name is taken by something "
                              "else: choose another --index or delete those keys") from exc
        if "NOAUTH" in reason or "WRONGPASS" in reason:
            raise ServiceUnavailable(f"{context}: Redis needs a password ({reason})") from exc
        if "FILTER" in reason:
            raise InputError(f"{context}: Redis refused the filter ({reason})") from exc
        if "dimension mismatch" in reason or "quantization mismatch" in reason:
            raise IndexMismatchError(f"{context}: {reason}") from exc
        if "element not found" in reason:
            raise NotFoundError(f"{context}: no such id in the index") from exc
        raise TwinstreamError(f"{context}: Redis refused the command: {reason}") from exc
    except redis.RedisError as exc:
        raise ServiceUnavailable(f"{context}: {type(exc).__name__}: {_reason(exc)}") from exc
