"""Attribute filters such as ``.label == "cat" and .source == "cam1"``: checked here, run by Redis.

The language is the one of vector-set ``FILTER`` expressions: selectors ``.field`` (top-level JSON
attributes), numbers, strings, ``[lists]``, ``null``, ``+ - * / % **``, ``== != > >= < <=``,
``in``, ``and or not`` (also ``&& || !``) and parentheses. A small recursive-descent parser checks
a filter before it reaches Redis, so a malformed one is an ``InputError`` that names the column,
never a Redis error, and the parsed filter is rendered back fully parenthesised. Rendering fixes
three things Redis would otherwise do surprisingly:

- ``not`` binds like Python's: ``not .a == 1`` is ``not (.a == 1)`` (in Redis ``!`` binds tightest);
- ``true`` / ``false`` are accepted (Redis only knows 1 / 0, which is what JSON booleans become);
- escapes in strings mean what they say: ``"a\\"b"`` is ``a"b`` (Redis compares the raw text
  between the quotes, so we pick a quote character the string does not contain instead).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from twinstream.errors import InputError
from twinstream.fields import check_text

MAX_FILTER_CHARS = 4096
MAX_DEPTH = 64
_SELECTOR = re.compile(r"[A-Za-z0-9_-]+")
_NUMBER = re.compile(r"\d+(\.\d*)?([eE][+-]?\d+)?")
_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Longest first, so '**' wins over '*' and '>=' over '>'.
_SYMBOLS = ("**", "==", "!=", ">=", "<=", "&&", "||", ">", "<", "+", "-", "*", "/", "%", "!",
            "(", ")", "[", "]", ",")
_WORDS = {"and": "and", "or": "or", "not": "not", "in": "in"}
_ALIASES = {"&&": "and", "||": "or", "!": "not"}
_COMPARISONS = ("==", "!=", ">=", "<=", ">", "<")
_NUMERIC_LIMIT = 1e15  # Redis parses numbers into a 256-byte buffer, without exponents after '-'


@dataclass(frozen=True)
class _Token:
    kind: str  # num, str, sel, op, lit (null/true/false), end
    value: Any
    col: int  # 1-based column, for messages


def _tokenize(text: str) -> list[_Token]:
    tokens, i = [], 0
    while i < len(text):
        ch = text[i]
        if ch.isspace():
            i += 1
        elif ch in "0123456789":  # not str.isdigit: '¹' is a digit to Python, not to Redis
            m = _NUMBER.match(text, i)
            tokens.append(_Token("num", float(m.group()), i + 1))
            i = m.end()
        elif ch in "\"'":
            value, end = _string(text, i)
            tokens.append(_Token("str", value, i + 1))
            i = end
        elif ch == "." and i + 1 < len(text) and _SELECTOR.match(text, i + 1):
            m = _SELECTOR.match(text, i + 1)
            tokens.append(_Token("sel", m.group(), i + 1))
            i = m.end()
        elif ch.isascii() and (ch.isalpha() or ch == "_"):
            word = _WORD.match(text, i).group()
            lowered = word.lower()
            if lowered in _WORDS:
                tokens.append(_Token("op", _WORDS[lowered], i + 1))
            elif lowered in ("null", "true", "false"):
                tokens.append(_Token("lit", lowered, i + 1))
            else:
                _fail(text, i + 1, f"unknown word {word!r} (write attributes as .{word} "
                                   "and strings in quotes)")
            i += len(word)
        else:
            symbol = next((s for s in _SYMBOLS if text.startswith(s, i)), None)
            if symbol is None:
                _fail(text, i + 1, f"unexpected character {ch!r}")
            tokens.append(_Token("op", _ALIASES.get(symbol, symbol), i + 1))
            i += len(symbol)
    tokens.append(_Token("end", None, len(text) + 1))
    return tokens


def _string(text: str, start: int) -> tuple[str, int]:
    quote, out, i = text[start], [], start + 1
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text):
            out.append(text[i + 1])
            i += 2
        elif ch == quote:
            return "".join(out), i + 1
        else:
            out.append(ch)
            i += 1
    _fail(text, start + 1, "string is not closed")
    raise AssertionError  # unreachable: _fail raises


def _fail(text: str, col: int, what: str) -> None:
    raise InputError(f"malformed filter {text!r}: {what} at column {col}")


class _Parser:
    """Precedence, loosest first: or, and, not, comparison/in, + -, * / %, unary -, **."""

    def __init__(self, text: str):
        self.text = text
        self.tokens = _tokenize(text)
        self.pos = 0
        self.depth = 0

    @property
    def token(self) -> _Token:
        return self.tokens[self.pos]

    def at(self, *ops: str) -> bool:
        return self.token.kind == "op" and self.token.value in ops

    def take(self) -> _Token:
        token = self.token
        self.pos += 1
        return token

    def fail(self, what: str) -> None:
        token = self.token
        found = "the end" if token.kind == "end" else repr(self.text[token.col - 1:][:12])
        _fail(self.text, token.col, f"{what}, found {found}")

    def parse(self) -> tuple:
        node = self.or_expr()
        if self.token.kind != "end":
            self.fail("expected an operator such as 'and', '==' or ')'")
        return node

    def binary(self, operand, ops: tuple[str, ...]) -> tuple:
        node = operand()
        while self.at(*ops):
            op = self.take().value
            node = ("bin", op, node, operand())
        return node

    def or_expr(self) -> tuple:
        return self.binary(self.and_expr, ("or",))

    def and_expr(self) -> tuple:
        return self.binary(self.not_expr, ("and",))

    def not_expr(self) -> tuple:
        if self.at("not"):
            self.take()
            return ("not", self.nested(self.not_expr))
        return self.comparison()

    def comparison(self) -> tuple:
        left = self.sum_expr()
        if self.at("in"):
            self.take()
            if self.at("["):
                return ("bin", "in", left, self.tuple_literal())
            if self.token.kind == "sel":
                return ("bin", "in", left, ("sel", self.take().value))
            self.fail("'in' needs a [list] or an .attribute on its right")
        if self.at(*_COMPARISONS):
            op = self.take().value
            node = ("bin", op, left, self.sum_expr())
            if self.at(*_COMPARISONS, "in"):
                self.fail("comparisons cannot be chained; join them with 'and'")
            return node
        return left

    def sum_expr(self) -> tuple:
        return self.binary(self.product, ("+", "-"))

    def product(self) -> tuple:
        return self.binary(self.unary, ("*", "/", "%"))

    def unary(self) -> tuple:
        if self.at("-"):
            self.take()
            # "-" as the last token leaves only the end marker: no token follows it
            following = self.tokens[min(self.pos + 1, len(self.tokens) - 1)]
            if self.token.kind == "num" and following.value != "**":  # literal, as Redis writes
                return ("num", -self.take().value)
            return ("neg", self.nested(self.unary))
        return self.power()

    def power(self) -> tuple:
        base = self.atom()
        if self.at("**"):
            self.take()
            return ("bin", "**", base, self.nested(self.unary))  # right-associative
        return base

    def nested(self, rule) -> tuple:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            self.fail(f"nested more than {MAX_DEPTH} levels deep")
        try:
            return rule()
        finally:
            self.depth -= 1

    def atom(self) -> tuple:
        token = self.token
        if token.kind in ("num", "str", "sel"):
            self.take()
            return (token.kind, token.value)
        if token.kind == "lit":
            self.take()
            return ("null",) if token.value == "null" else ("num", float(token.value == "true"))
        if self.at("["):
            return self.tuple_literal()
        if self.at("("):
            self.take()
            node = self.nested(self.or_expr)
            if not self.at(")"):
                self.fail("expected ')'")
            self.take()
            return node
        self.fail("expected a value (an .attribute, a number, a \"string\" or '(')")
        raise AssertionError  # unreachable

    def tuple_literal(self) -> tuple:
        self.take()  # '['
        items = []
        while not self.at("]"):
            negative = self.at("-")
            if negative:
                self.take()
            token = self.token
            if token.kind == "num" or (token.kind == "lit" and token.value != "null"):
                value = token.value if token.kind == "num" else float(token.value == "true")
                items.append(("num", -value if negative else value))
            elif token.kind == "str" and not negative:
                items.append(("str", token.value))
            else:
                self.fail("a [list] holds numbers, strings, true or false")
            self.take()
            if self.at(","):
                self.take()
            elif not self.at("]"):
                self.fail("expected ',' or ']' in a list")
        self.take()  # ']'
        return ("tuple", items)


def _render(node: tuple, text: str) -> str:
    kind = node[0]
    if kind == "num":
        return _number(node[1], text)
    if kind == "str":
        return _quoted(node[1], text)
    if kind == "sel":
        return f".{node[1]}"
    if kind == "null":
        return "null"
    if kind == "tuple":
        return "[" + ", ".join(_render(item, text) for item in node[1]) + "]"
    if kind == "not":
        return f"(not {_render(node[1], text)})"
    if kind == "neg":
        return f"(0 - {_render(node[1], text)})"
    _, op, left, right = node
    return f"({_render(left, text)} {op} {_render(right, text)})"


def _number(value: float, text: str) -> str:
    if not math.isfinite(value) or abs(value) >= _NUMERIC_LIMIT:
        raise InputError(f"malformed filter {text!r}: number {value:g} is out of range "
                         f"(|x| < {_NUMERIC_LIMIT:.0e})")
    if value == int(value):
        return str(int(value))
    return f"{value:.15f}".rstrip("0")


def _quoted(value: str, text: str) -> str:
    """Redis takes the raw text between two quotes; a backslash escapes the next character."""
    quote = '"' if '"' not in value else "'"
    trailing = len(value) - len(value.rstrip("\\"))
    if quote in value or trailing % 2 or "\x00" in value:
        raise InputError(f"filter {text!r}: the string {value!r} cannot be matched by a Redis "
                         "filter (it holds both quote characters, a NUL or ends in a backslash)")
    return f"{quote}{value}{quote}"


def parse_filter(text: str | None) -> str | None:
    """The filter checked and rendered for Redis; None for no filter (None or blank)."""
    if text is None or not text.strip():
        return None
    check_text(text, "filter")
    if len(text) > MAX_FILTER_CHARS:
        raise InputError(f"filter is {len(text)} characters long; the limit is "
                         f"{MAX_FILTER_CHARS}")
    return _render(_Parser(text).parse(), text)


def where(**equals: str | int | float | bool) -> str | None:
    """A filter that all of ``field == value`` hold (``where(label="cat", source="cam1")``)."""
    parts = []
    for field, value in equals.items():
        if not _SELECTOR.fullmatch(field):
            raise InputError(f"attribute name {field!r} cannot be filtered on (letters, digits, "
                             "'_' and '-' only)")
        literal = ("num", float(value)) if isinstance(value, (bool, int, float)) \
            else ("str", str(value))
        parts.append(f"(.{field} == {_render(literal, field)})")
    return " and ".join(parts) or None
