"""Fixtures shared by the integration tests of the index (on the session's real Redis 8)."""

import pytest

from index.store import connect


@pytest.fixture
def client(stack):
    """A checked client of the session's Redis 8."""
    return connect(stack.redis_url)


@pytest.fixture
def name(settings):
    """An index name of this test's own."""
    return settings.redis.index
