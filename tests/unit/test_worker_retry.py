"""Backoff with full jitter, and the retry loop's three ways out (pure, fast)."""

import random
import threading

import pytest

from worker.retry import Backoff, GaveUp, retry


def test_backoff_grows_is_capped_and_jittered():
    b = Backoff(first_s=0.1, cap_s=1.0)
    rng = random.Random(0)
    delays = {n: [b.delay(n, rng) for _ in range(200)] for n in (1, 2, 3, 10)}
    assert max(delays[1]) <= 0.1 and max(delays[2]) <= 0.2 and max(delays[3]) <= 0.4
    assert max(delays[10]) <= 1.0 and max(delays[10]) > 0.8  # capped, still spread
    assert min(delays[10]) < 0.2  # full jitter: workers do not return in lockstep
    assert len(set(delays[3])) > 100


def test_retries_transient_errors_until_success():
    calls, reported = [], []

    def flaky():
        calls.append(1)
        if len(calls) < 4:
            raise ConnectionError("down")
        return "written"

    result = retry(flaky, lambda e: isinstance(e, ConnectionError), threading.Event(),
                   Backoff(0.001, 0.002), lambda exc, n, d: reported.append(n))
    assert result == "written" and len(calls) == 4 and reported == [1, 2, 3]


def test_other_errors_propagate_at_once():
    def bug():
        raise KeyError("bug")

    with pytest.raises(KeyError):
        retry(bug, lambda e: isinstance(e, ConnectionError), threading.Event())


def test_gives_up_when_told():
    stop = threading.Event()

    def down():
        stop.set()  # e.g. the shutdown deadline passed while we were failing
        raise ConnectionError("down")

    with pytest.raises(GaveUp):
        retry(down, lambda e: True, stop, Backoff(0.001, 0.001))
