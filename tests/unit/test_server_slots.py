"""Which connection gives up its slot, which ones are overdue, when the reaper looks again: as data, no sockets."""

from __future__ import annotations

import math

import pytest

from imgrep.serve.io.http import REAP_SLACK, Phase, Timeouts, Tracked, eviction_victim, overdue, reap_wait

TIMEOUTS = Timeouts(head=3.0, body=30.0, idle=30.0)


def never_answered(phase: Phase, since: float) -> Tracked:
    return phase, since, False


def answered(phase: Phase, since: float) -> Tracked:
    return phase, since, True


def test_a_never_answered_connection_is_evicted_before_an_older_idle_keep_alive_one():
    connections = {"keep-alive": answered(Phase.IDLE, 100.0), "stalled": never_answered(Phase.NEW, 900.0)}
    assert eviction_victim(connections) == "stalled"


@pytest.mark.parametrize(("connections", "victim"), [
    pytest.param({"young": never_answered(Phase.NEW, 950.0), "old": never_answered(Phase.NEW, 900.0),
                  "old-body": never_answered(Phase.BODY, 920.0)}, "old",
                 id="the oldest never answered first"),
    pytest.param({"idle-long": answered(Phase.IDLE, 800.0), "idle-short": answered(Phase.IDLE, 990.0),
                  "head": answered(Phase.HEAD, 900.0)}, "idle-long",
                 id="then the answered one longest in its phase"),
])
def test_eviction_takes_the_connection_waiting_longest_in_its_group(connections, victim):
    assert eviction_victim(connections) == victim


def test_a_connection_being_answered_is_never_evicted():
    connections = {"busy-old": never_answered(Phase.BUSY, 1.0), "busy-answered": answered(Phase.BUSY, 2.0),
                   "idle": answered(Phase.IDLE, 999.0)}
    assert eviction_victim(connections) == "idle"
    assert eviction_victim({"a": never_answered(Phase.BUSY, 1.0), "b": answered(Phase.BUSY, 2.0)}) is None


def test_no_second_victim_while_one_is_still_closing():
    connections = {"closing": never_answered(Phase.CLOSING, 999.0), "stalled": never_answered(Phase.NEW, 1.0)}
    assert eviction_victim(connections) is None


def test_nobody_to_evict_in_an_empty_table():
    assert eviction_victim({}) is None


@pytest.mark.parametrize(("entry", "deadline"), [
    (never_answered(Phase.NEW, 100.0), 103.0),
    (answered(Phase.HEAD, 100.0), 103.0),
    (answered(Phase.BODY, 100.0), 130.0),
    (answered(Phase.IDLE, 100.0), 130.0),
    (answered(Phase.BUSY, 100.0), math.inf),
    (never_answered(Phase.CLOSING, 100.0), math.inf),
])
def test_each_phase_has_its_deadline(entry, deadline):
    assert TIMEOUTS.deadline(entry) == deadline


def test_overdue_names_the_connections_past_their_deadline_and_the_next_deadline():
    connections = {
        "stalled": never_answered(Phase.NEW, 100.0),       # due 103
        "trickling": answered(Phase.HEAD, 101.5),          # due 104.5
        "keep-alive": answered(Phase.IDLE, 90.0),          # due 120
        "fresh": never_answered(Phase.NEW, 103.5),         # due 106.5
        "busy": never_answered(Phase.BUSY, 0.0),
    }
    stale, earliest = overdue(connections, 105.0, TIMEOUTS)
    assert sorted(stale) == ["stalled", "trickling"]
    assert earliest == 106.5


def test_a_connection_exactly_at_its_deadline_is_not_yet_overdue():
    assert overdue({"c": never_answered(Phase.NEW, 100.0)}, 103.0, TIMEOUTS) == ([], 103.0)


def test_only_busy_connections_leave_no_deadline():
    assert overdue({"busy": answered(Phase.BUSY, 0.0)}, 1e6, TIMEOUTS) == ([], math.inf)


@pytest.mark.parametrize(("earliest", "wait"), [
    (math.inf, 3.0 + REAP_SLACK),   # nothing to wait for: a newcomer's deadline is head away at least
    (130.0, 3.0 + REAP_SLACK),      # far deadlines do not keep the reaper asleep past a newcomer's
    (101.0, 1.0 + REAP_SLACK),      # the next deadline, and those due within the slack with it
    (100.0, REAP_SLACK),
])
def test_the_reaper_sleeps_until_the_next_deadline_or_the_head_timeout_plus_the_slack(earliest, wait):
    assert reap_wait(earliest, 100.0, TIMEOUTS) == pytest.approx(wait)
