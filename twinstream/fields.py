"""Ids, labels and attributes: checked and normalised once, where a record or request enters.

Producers on the images topic, API clients and files named on the command line are untrusted
(DESIGN.md, "Trust boundaries"). Whatever they send is checked here, by the message contract
(``twinstream.messages``), the API and the CLI alike, so that nothing that passes can fail further
down: every string is encodable as UTF-8 (no lone surrogates), every number is finite (JSON has no
NaN and Redis refuses it), nesting and sizes are bounded, and ids and labels hold no control
characters (they end up in terminals, logs and Redis keys).

Messages quote what they refuse only through ``quote``: escaped and cut short, so an error never
echoes a long or terminal-hostile value back in full.
"""

from __future__ import annotations

import json
import math
import unicodedata
from typing import Any

from twinstream.errors import InputError

MAX_ID_BYTES = 512
MAX_LABEL_CHARS = 200
MAX_ATTRIBUTES_BYTES = 16_384
MAX_ATTRIBUTE_DEPTH = 16
QUOTE_CHARS = 40


def quote(value: Any, limit: int = QUOTE_CHARS) -> str:
    """A short, printable, quoted rendering of an untrusted value for a message."""
    text = value if isinstance(value, str) else str(value)
    shown = printable(text[:limit])
    return f"'{shown}...' ({len(text)} characters)" if len(text) > limit else f"'{shown}'"


def printable(text: str, keep: str = "") -> str:
    """``text`` with control characters, lone surrogates and other invisible format characters
    escaped (``\\x1b``, ``\\udc80``), so that printing it cannot move a terminal's cursor, clear
    its screen or hide text. Characters in ``keep`` (e.g. newline) are left alone."""
    if text.isprintable() and not keep:
        return text
    out = []
    for ch in text:
        if ch in keep or ch.isprintable() or ch == " ":
            out.append(ch)
        else:
            out.append(ch.encode("unicode_escape", "backslashreplace").decode("ascii")
                       if ord(ch) < 0x10000 else f"\\U{ord(ch):08x}")
    return "".join(out)


def _has_lone_surrogate(text: str) -> bool:
    if text.isascii():  # the common case, at C speed
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _has_control(text: str) -> bool:
    # Cc: C0/C1 controls and DEL; Cs: surrogates; Zl/Zp: line and paragraph separators. All
    # of them are non-printable, so the common printable text is cleared at C speed (this runs
    # for every id, label and attribute of every record).
    if text.isprintable():
        return False
    return any(unicodedata.category(ch) in ("Cc", "Cs", "Zl", "Zp") for ch in text)


def check_text(value: Any, what: str, error: type[InputError] = InputError) -> str:
    """A string that can be stored and sent anywhere: a ``str`` without lone surrogates."""
    if not isinstance(value, str):
        raise error(f"{what} must be text, got {type(value).__name__}")
    if _has_lone_surrogate(value):
        raise error(f"{what} is not valid Unicode (it holds a lone surrogate, as a file name "
                    f"that is not UTF-8 does): {quote(value)}")
    return value


def check_id(image_id: Any, error: type[InputError] = InputError) -> str:
    """An image id: non-empty text of at most ``MAX_ID_BYTES`` UTF-8 bytes, no control
    characters. Returned unchanged: ids are keys, so they are never rewritten."""
    check_text(image_id, "image id", error)
    if not image_id:
        raise error("image id must not be empty")
    if len(image_id.encode("utf-8")) > MAX_ID_BYTES:
        raise error(f"image id is longer than {MAX_ID_BYTES} bytes: {quote(image_id)}")
    if _has_control(image_id):
        raise error(f"image id contains control characters: {quote(image_id)}")
    return image_id


def check_label(label: Any, error: type[InputError] = InputError) -> str:
    """A label (an identity's name): stripped, non-empty, at most ``MAX_LABEL_CHARS``
    characters, no control characters."""
    check_text(label, "label", error)
    label = label.strip()
    if not label:
        raise error("label must not be empty")
    if len(label) > MAX_LABEL_CHARS:
        raise error(f"label is longer than {MAX_LABEL_CHARS} characters: {quote(label)}")
    if _has_control(label):
        raise error(f"label contains control characters: {quote(label)}")
    return label


def check_attributes(attributes: Any, error: type[InputError] = InputError) -> dict[str, Any]:
    """An attribute object as the index stores it: a JSON object of at most
    ``MAX_ATTRIBUTES_BYTES``, nested at most ``MAX_ATTRIBUTE_DEPTH`` deep, with finite numbers,
    valid Unicode everywhere, and a valid ``label`` when it has one. Returns a copy with the
    label normalised (stripped)."""
    return checked_attributes_json(attributes, error)[0]


def checked_attributes_json(attributes: Any, error: type[InputError] = InputError
                            ) -> tuple[dict[str, Any], str]:
    """``check_attributes`` and the JSON text the index stores (keys sorted, raw UTF-8: Redis
    filters compare the decoded text byte by byte), serialised once for both."""
    if not isinstance(attributes, dict):
        raise error(f"attributes must be a JSON object, got {type(attributes).__name__}")
    _check_value(attributes, (), 0, error)
    out = dict(attributes)
    if "label" in out:
        out["label"] = check_label(out["label"], error)
    # The checks above guarantee this cannot fail (finite numbers, valid Unicode).
    text = json.dumps(out, sort_keys=True, ensure_ascii=False, allow_nan=False)
    size = len(text.encode("utf-8"))
    if size > MAX_ATTRIBUTES_BYTES:
        raise error(f"attributes are {size:,} bytes as JSON, above {MAX_ATTRIBUTES_BYTES:,}")
    return out, text


def _check_value(value: Any, path: tuple[str, ...], depth: int,
                 error: type[InputError]) -> None:
    # Runs for every attribute of every record: messages (and the path in them) are formatted
    # only when something is refused.
    if depth > MAX_ATTRIBUTE_DEPTH:
        raise error(f"attributes are nested more than {MAX_ATTRIBUTE_DEPTH} levels deep")
    if isinstance(value, str):
        if _has_lone_surrogate(value):
            check_text(value, f"attribute {_where(path)}", error)
    elif isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str) or _has_lone_surrogate(key):
                check_text(key, f"attribute name in {_where(path)}", error)
            if _has_control(key):
                raise error(f"attribute name {quote(key)} contains control characters")
            _check_value(item, (*path, key), depth + 1, error)
    elif isinstance(value, list):
        for item in value:
            _check_value(item, path, depth + 1, error)
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise error(f"attribute {_where(path)} is {value}: JSON numbers must be finite")
    elif not (value is None or isinstance(value, (bool, int))):
        raise error(f"attribute {_where(path)} has type {type(value).__name__}, not a JSON value")


def _where(path: tuple[str, ...]) -> str:
    """``attributes.a.b``: where in the attributes a refused value sits."""
    return ".".join(["attributes", *(printable(key[:QUOTE_CHARS]) for key in path)])


def _refuse_constant(name: str) -> float:
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e999 parses as infinity
        raise ValueError(f"number {text[:QUOTE_CHARS]} is out of range")
    return value


def parse_attributes(raw: bytes | str | None, error: type[InputError] = InputError
                     ) -> dict[str, Any]:
    """Attributes sent as JSON text (a record header, a form field, a CLI flag), checked."""
    if raw is None or raw == b"" or raw == "":
        return {}
    size = len(raw) if isinstance(raw, bytes) else len(raw.encode("utf-8", "surrogatepass"))
    if size > MAX_ATTRIBUTES_BYTES:
        raise error(f"attributes are {size:,} bytes, above {MAX_ATTRIBUTES_BYTES:,}")
    try:
        value = json.loads(raw, parse_constant=_refuse_constant, parse_float=_finite_float)
    except RecursionError as exc:
        raise error("attributes are not JSON: nested too deeply") from exc
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError is a ValueError
        raise error(f"attributes are not JSON: {printable(str(exc)[:100])}") from exc
    return check_attributes(value, error)
