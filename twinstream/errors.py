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
    """A file, folder, image or argument given by the user cannot be used.

    ``field`` names the request field or flag at fault, when there is one (the API answers 422
    with it; without one, 400)."""

    exit_code = 2

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


class TooLargeError(InputError):
    """An input above a size limit (the API answers 413)."""


class ImageDecodeError(InputError):
    """Bytes that the shared preprocessing cannot turn into an encoder input.

    ``not_an_image``: the bytes do not even start like an image of a known format (the API
    answers 415 then, 400 for an image that is broken)."""

    def __init__(self, message: str, field: str | None = None, not_an_image: bool = False):
        super().__init__(message, field)
        self.not_an_image = not_an_image


class ModelError(TwinstreamError):
    """A model file or checkpoint is missing, unreadable or inconsistent."""

    exit_code = 3


class ServiceUnavailable(TwinstreamError):
    """Kafka or Redis cannot be reached, or does not offer what we need."""

    exit_code = 69  # EX_UNAVAILABLE from sysexits.h


class StackStartError(ServiceUnavailable):
    """A local broker or Redis server did not start (the message carries its log tail)."""


class OverloadedError(ServiceUnavailable):
    """Busy right now (the decode budget is spent): worth retrying after ``retry_after_s``."""

    def __init__(self, message: str, retry_after_s: int = 1):
        super().__init__(message)
        self.retry_after_s = retry_after_s


class IndexMismatchError(TwinstreamError):
    """An embedding's dimension or model version does not match the index it is written to."""

    exit_code = 4


class NotFoundError(TwinstreamError):
    """An id, index version or topic asked for does not exist."""

    exit_code = 5


class IndexNotReadyError(NotFoundError):
    """The index has no live version yet (no worker has filled it): for a server, not ready."""


class InternalError(TwinstreamError):
    """A bug: reported as such, with the traceback on request (``--debug``)."""

    exit_code = 70  # EX_SOFTWARE from sysexits.h


class Interrupted(TwinstreamError):
    """Stopped by Ctrl-C."""

    exit_code = 130  # 128 + SIGINT, as shells report it

