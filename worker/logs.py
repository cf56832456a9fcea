"""Structured worker logs: one line per event, as text (``key=value``) or JSON.

Call ``event(log, "batch written", size=32, ...)``: the fields become JSON keys or ``k=v`` pairs,
so a log shipper can index them without parsing prose.
"""

from __future__ import annotations

import json
import logging
import sys
import time

from twinstream.fields import printable

_FIELDS = "fields"


def event(log: logging.Logger, message: str, level: int = logging.INFO, **fields) -> None:
    if log.isEnabledFor(level):
        log.log(level, message, extra={_FIELDS: fields})


class JsonFormatter(logging.Formatter):
    def __init__(self, worker_id: str):
        super().__init__()
        self.worker_id = worker_id

    def format(self, record: logging.LogRecord) -> str:
        data = {"ts": round(record.created, 3), "level": record.levelname.lower(),
                "logger": record.name, "worker": self.worker_id, "msg": record.getMessage()}
        data.update(getattr(record, _FIELDS, {}))
        if record.exc_info:
            data["exc"] = self.formatException(record.exc_info)
        return json.dumps(data, default=str)


class TextFormatter(logging.Formatter):
    def __init__(self, worker_id: str):
        super().__init__()
        self.worker_id = worker_id

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
        fields = " ".join(f"{k}={_text(v)}" for k, v in getattr(record, _FIELDS, {}).items())
        line = (f"{stamp} {record.levelname.lower():7s} [{self.worker_id}] "
                f"{printable(record.getMessage())}" + (f"  {fields}" if fields else ""))
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def _text(value) -> str:
    """A field's value for a text line: quoted (JSON, which also escapes control characters)
    when it holds spaces or anything unprintable, since reasons and ids come from producers."""
    if isinstance(value, float):
        return f"{value:.4g}"
    text = str(value)
    return json.dumps(text) if (" " in text or not text or not text.isprintable()) else text


def configure(fmt: str, worker_id: str, quiet: bool = False) -> None:
    """Route twinstream's loggers to stderr in the chosen format (once per process)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(worker_id) if fmt == "json" else TextFormatter(worker_id))
    root = logging.getLogger("twinstream")
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING if quiet else logging.INFO)
    root.propagate = False
    # kafka-python is chatty at INFO (every rebalance step); its warnings still matter.
    logging.getLogger("kafka").setLevel(logging.ERROR if quiet else logging.WARNING)
