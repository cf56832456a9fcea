"""The filter language: what is accepted, how it is rendered for Redis, and clear errors."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from index.filters import MAX_DEPTH, MAX_FILTER_CHARS, parse_filter, where
from twinstream.errors import InputError


@pytest.mark.parametrize("text, rendered", [
    ('.label == "cat" and .source == "cam1"', '((.label == "cat") and (.source == "cam1"))'),
    (".year >= 1980 && .rating > 7.5", "((.year >= 1980) and (.rating > 7.5))"),
    ("not .label == 'cat'", '(not (.label == "cat"))'),  # Python precedence, not Redis's
    ("!.flag || .n != null", "((not .flag) or (.n != null))"),
    ('.label in ["cat", "dog", 3, -2, true]', '(.label in ["cat", "dog", 3, -2, 1])'),
    ('"cat" in .tags', '("cat" in .tags)'),
    (".a == true and .b == FALSE", "((.a == 1) and (.b == 0))"),
    (".a + 2 * .b ** 2 ** 3 > -1", "((.a + (2 * (.b ** (2 ** 3)))) > -1)"),
    ("-2 ** 2 == .x", "((0 - (2 ** 2)) == .x)"),
    ("(.a > 1 or .b < 2) and .c", "(((.a > 1) or (.b < 2)) and .c)"),
    ('.label == "it\'s"', """(.label == "it's")"""),
    (r'.label == "say \"hi\""', """(.label == 'say "hi"')"""),
    (".label == 'ünï'", '(.label == "ünï")'),
    (".my-field_2 AND .x", "(.my-field_2 and .x)"),
    (".x == 0.25", "(.x == 0.25)"),
    (".x == 1e3", "(.x == 1000)"),
])
def test_valid_filters_are_rendered_fully_parenthesised(text, rendered):
    assert parse_filter(text) == rendered
    assert parse_filter(rendered) == rendered  # rendering is a fixed point


@pytest.mark.parametrize("text", [None, "", "   \t"])
def test_blank_filter_means_no_filter(text):
    assert parse_filter(text) is None


@pytest.mark.parametrize("text, needle", [
    (".label == ", "expected a value"),
    (".label === 'x'", "unexpected character '='"),
    ('label == "cat"', "write attributes as .label"),
    (".a .b ==", "expected an operator"),  # postfix nonsense Redis itself would accept
    ("(.a == 1", "expected ')'"),
    (".a == 1)", "expected an operator"),
    (".a < .b < .c", "cannot be chained"),
    (".a in 3", "'in' needs a [list]"),
    (".a in [.b]", "a [list] holds"),
    ('.a in ["x" "y"]', "expected ',' or ']'"),
    ('"abc', "string is not closed"),
    (".a == @", "unexpected character '@'"),
    (".x == 1e400", "out of range"),
    (".x == 10000000000000000", "out of range"),
    ("and", "expected a value"),
    (".", "unexpected character '.'"),
])
def test_malformed_filters_are_input_errors_naming_the_problem(text, needle):
    with pytest.raises(InputError) as err:
        parse_filter(text)
    assert needle in err.value.message
    assert "malformed filter" in err.value.message


def test_error_names_the_column():
    with pytest.raises(InputError, match="at column 11"):
        parse_filter('.label == ')


def test_strings_redis_cannot_match_are_refused():
    with pytest.raises(InputError, match="cannot be matched"):
        parse_filter(r""".a == "both \" and ' quotes" """)
    with pytest.raises(InputError, match="cannot be matched"):
        parse_filter(r'.a == "ends in a backslash\\"')


def test_limits_on_size_and_nesting():
    with pytest.raises(InputError, match="limit"):
        parse_filter(".a == 1 and " * (MAX_FILTER_CHARS // 10) + ".a == 1")
    deep = "(" * (MAX_DEPTH + 5) + ".a" + ")" * (MAX_DEPTH + 5)
    with pytest.raises(InputError, match="nested"):
        parse_filter(deep)
    assert parse_filter("(" * 10 + ".a" + ")" * 10) == ".a"


def test_where_builds_equality_filters():
    assert where(label="cat", source="cam1") == '(.label == "cat") and (.source == "cam1")'
    assert where(ok=True, n=3) == "(.ok == 1) and (.n == 3)"
    assert where() is None
    assert parse_filter(where(label='say "hi"')) == """(.label == 'say "hi"')"""
    with pytest.raises(InputError, match="cannot be filtered"):
        where(**{"a.b": 1})


@settings(max_examples=300, deadline=None, database=None)
@given(st.text(max_size=60))
def test_any_text_either_parses_or_raises_a_clear_input_error(text):
    """The HTTP API hands user text straight to the parser: nothing but InputError may escape."""
    try:
        rendered = parse_filter(text)
    except InputError as exc:
        assert str(exc)
    else:
        assert rendered is None or parse_filter(rendered) == rendered
