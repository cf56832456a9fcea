"""One exception hierarchy for the whole project.

Every error a user can cause or meet (bad input, a service that is down, a model that does not fit
the index) is a ``TwinstreamError``. The CLI prints its message on one line and exits with its
``exit_code``; nothing else reaches the user as a traceback.
"""

from __future__ import annotations


class TwinstreamError(Exception):
    """Base class: a message meant for the user and the exit code the CLI uses."""

    exit_code = 1

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class ConfigError(TwinstreamError):
    """A setting or flag has a value we cannot use."""

    exit_code = 2


class InputError(TwinstreamError):
    """A file, folder, image or argument given by the user cannot be used."""

    exit_code = 2


class ImageDecodeError(InputError):
    """Bytes that the shared preprocessing cannot turn into an encoder input."""


class ModelError(TwinstreamError):
    """A model file or checkpoint is missing, unreadable or inconsistent."""

    exit_code = 3


class ServiceUnavailable(TwinstreamError):
    """Kafka or Redis cannot be reached, or does not offer what we need."""

    exit_code = 69  # EX_UNAVAILABLE from sysexits.h


class StackStartError(ServiceUnavailable):
    """A local broker or Redis server did not start (the message carries its log tail)."""


class IndexMismatchError(TwinstreamError):
    """An embedding's dimension or model version does not match the index it is written to."""

    exit_code = 4


class NotFoundError(TwinstreamError):
    """An id, index version or topic asked for does not exist."""

    exit_code = 5


class Interrupted(TwinstreamError):
    """The user stopped the command (Ctrl-C)."""

    exit_code = 130  # 128 + SIGINT, as shells report it


class InternalError(TwinstreamError):
    """A bug: anything that is not a ``TwinstreamError`` (the CLI says so in one line)."""

    exit_code = 70  # EX_SOFTWARE from sysexits.h
