"""The resolved-digest cache: entries expire by the clock passed in, and the size is bounded."""

from __future__ import annotations

import math

import pytest

from imgrep.admission.cache import TTLCache

NOW = 1000.0


@pytest.mark.parametrize(
    ("ttl", "asked_at", "found"),
    [
        (300, NOW, True),
        (300, NOW + 299.9, True),
        (300, NOW + 300, False),
        (math.inf, NOW + 1e12, True),
        (0, NOW, False),
        (-1, NOW, False),
    ],
)
def test_entry_lives_for_its_ttl(ttl, asked_at, found):
    cache: TTLCache[str] = TTLCache()
    cache.put("docker.io/library/nginx:latest", "sha256:a", ttl, NOW)
    assert (cache.get("docker.io/library/nginx:latest", asked_at) == "sha256:a") is found


def test_expired_entry_is_dropped():
    cache: TTLCache[str] = TTLCache()
    cache.put("k", "v", 10, NOW)
    assert cache.get("k", NOW + 10) is None
    assert len(cache) == 0


def test_put_replaces_and_restarts_the_ttl():
    cache: TTLCache[str] = TTLCache()
    cache.put("k", "old", 10, NOW)
    cache.put("k", "new", 10, NOW + 5)
    assert cache.get("k", NOW + 12) == "new"


def test_least_recently_used_entry_is_evicted_first():
    cache: TTLCache[str] = TTLCache(max_entries=2)
    cache.put("a", "1", 100, NOW)
    cache.put("b", "2", 100, NOW)
    assert cache.get("a", NOW) == "1"  # "a" is now the most recently used
    cache.put("c", "3", 100, NOW)
    assert (cache.get("a", NOW), cache.get("b", NOW), cache.get("c", NOW)) == ("1", None, "3")
    assert len(cache) == 2
