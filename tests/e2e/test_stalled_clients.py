"""dist/imgrep.pyz under a crowd of TLS connections that never send a request: the API
server's admissions are answered at once, and the crowd is dropped after the head timeout."""

from __future__ import annotations

import socket
import time

from imgrep.serve.io.http import HEAD_TIMEOUT, REAP_SLACK
from tests.helpers.reviews import pod, review

#: more than MAX_CONNECTIONS (256 by default): the last of the crowd find every slot taken
CROWD = 320
QUICK_SECONDS = 1.0
#: a slow machine's scheduling on top of the reaper's slack
DROP_MARGIN_SECONDS = 3.0


def test_a_crowd_of_stalled_tls_connections_neither_delays_admissions_nor_outlives_the_head_timeout(
        start_webhook, present):
    webhook = start_webhook()
    pooled = webhook.connect()
    assert webhook.admit(review(pod(present)), pooled)["response"]["allowed"]  # the cache is warm now

    crowd = [socket.create_connection(("127.0.0.1", webhook.port), timeout=5) for _ in range(CROWD)]
    try:
        crowded = time.monotonic()
        answers, latencies = [], []
        for _round in range(3):
            fresh = webhook.connect()
            try:
                for connection in (fresh, pooled, fresh):
                    start = time.monotonic()
                    answers.append(webhook.admit(review(pod(present)), connection)["response"]["allowed"])
                    latencies.append(time.monotonic() - start)
            finally:
                fresh.close()

        # none of the crowd got further than connecting; every one is closed by the server in time
        limit = crowded + HEAD_TIMEOUT + REAP_SLACK + DROP_MARGIN_SECONDS
        still_open = 0
        for sock in crowd:
            sock.settimeout(max(0.05, limit - time.monotonic()))
            try:
                still_open += sock.recv(1) != b""
            except TimeoutError:
                still_open += 1
            except ConnectionError:
                pass
    finally:
        for sock in crowd:
            sock.close()
    pooled.close()

    assert answers == [True] * len(answers)
    assert max(latencies) < QUICK_SECONDS, sorted(latencies)[-3:]
    assert still_open == 0
