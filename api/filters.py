"""Checks on attribute filters before they reach Redis.

A filter is a vector-set FILTER expression over the items' JSON attributes, e.g.
``.label == "red_circle" and .source != "cam1"`` or ``.year >= 2020 and .tag in ["a", "b"]``.
Redis is the final judge of its grammar (its refusal is also a 422), but a tokenizer here gives
the client a precise message (what is wrong, at which position) and keeps arbitrary text, overly
long expressions and control characters away from the server.
"""

from __future__ import annotations

import re

MAX_FILTER_CHARS = 1000

# One alternative per token kind; order matters (longest operators first).
_TOKEN = re.compile(r"""
    (?P<space>\s+)
  | (?P<selector>\.[A-Za-z_][A-Za-z0-9_]*)
  | (?P<number>\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)
  | (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
  | (?P<operator>\*\*|==|!=|>=|<=|&&|\|\||[<>!+\-*/%])
  | (?P<open>[(\[])
  | (?P<close>[)\]])
  | (?P<comma>,)
  | (?P<word>[A-Za-z_][A-Za-z0-9_]*)
""", re.VERBOSE)
KEYWORDS = {"and", "or", "not", "in"}
_PAIRS = {")": "(", "]": "["}


class FilterError(ValueError):
    """The filter expression cannot be right; the message says where and why."""


def validate_filter(expression: str | None) -> str | None:
    """The filter stripped of outer blanks, or None for no filter; raises ``FilterError``."""
    if expression is None:
        return None
    text = expression.strip()
    if not text:
        return None
    if len(text) > MAX_FILTER_CHARS:
        raise FilterError(f"filter is {len(text)} characters long; at most {MAX_FILTER_CHARS}")
    if any(ord(c) < 32 and c not in "\t\n\r" for c in text):
        raise FilterError("filter contains control characters")
    stack: list[tuple[str, int]] = []
    last_kind = ""
    position = 0
    while position < len(text):
        match = _TOKEN.match(text, position)
        if match is None:
            if text[position] in "\"'":
                raise FilterError(f"unterminated string starting at position {position}")
            raise FilterError(f"unexpected character {text[position]!r} at position {position}")
        kind, value = match.lastgroup or "", match.group()
        if kind == "word" and value.lower() not in KEYWORDS:
            raise FilterError(
                f"unknown word {value!r} at position {position}; attribute selectors start "
                f"with a dot (.{value}) and strings are quoted (\"{value}\")")
        if kind == "open":
            stack.append((value, position))
        elif kind == "close":
            if not stack or stack[-1][0] != _PAIRS[value]:
                raise FilterError(f"unbalanced {value!r} at position {position}")
            stack.pop()
        if kind == "word":  # and/or/not/in join expressions
            kind = "operator"
        if kind != "space":
            last_kind = kind
        position = match.end()
    if stack:
        raise FilterError(f"unclosed {stack[-1][0]!r} at position {stack[-1][1]}")
    if last_kind in ("operator", "open", "comma"):
        raise FilterError("filter ends in the middle of an expression")
    return text
