"""Hostile input over the wire: fuzzed bodies and malformed HTTP against the real TLS server."""

from __future__ import annotations

import http.client
import json
import random
import socket
import ssl

from tests.e2e.conftest import SERVICE_NAME
from tests.helpers.fuzz import mutate, valid_review

SEED = 77
WIRE_CASES = 300


def well_formed_answer(webhook) -> dict:
    review = valid_review(random.Random(1))
    review["request"]["namespace"] = "kube-system"  # excluded: answered without a registry
    return webhook.admit(review)["response"]


def test_fuzzed_bodies_get_answers_or_one_line_4xx_and_never_5xx(webhook):
    rng = random.Random(SEED)
    statuses: dict[int, int] = {}
    connection = webhook.connect()
    try:
        for case in range(WIRE_CASES):
            body = mutate(rng, valid_review(rng))
            try:
                status, answer = webhook.post(body, connection=connection)
            except (http.client.HTTPException, OSError):
                connection.close()  # the server closed after a 4xx: carry on as a client would
                connection = webhook.connect()
                status, answer = webhook.post(body, connection=connection)
            statuses[status] = statuses.get(status, 0) + 1
            assert status < 500, (case, answer[:300])
            text = answer.decode()
            assert "Traceback" not in text and "\n" not in text.strip()
            json.loads(text)
    finally:
        connection.close()
    print(f"\nfuzzed {WIRE_CASES} bodies over TLS: {statuses}")
    assert well_formed_answer(webhook)["allowed"] is True


def raw_exchange(webhook, payload: bytes) -> bytes:
    context = ssl.create_default_context(cafile=str(webhook.certs.ca_cert))
    with socket.create_connection(("127.0.0.1", webhook.port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname=SERVICE_NAME) as tls:
            tls.sendall(payload)
            received = b""
            while chunk := tls.recv(65536):
                received += chunk
                if b"\r\n\r\n" in received and len(received) > received.index(b"\r\n\r\n") + 4:
                    break
            return received


def test_malformed_http_gets_a_4xx_and_the_server_stays_up(webhook):
    cases = {
        b"NOT-HTTP\r\n\r\n": 400,
        b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\n\r\n": 414,
        b"POST /validate HTTP/1.1\r\nX-Big: " + b"b" * 70_000 + b"\r\n\r\n": 431,
        b"POST /validate HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: abc\r\n\r\n": 411,
        b"POST /validate HTTP/1.1\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n": 411,
        b"DELETE /validate HTTP/1.1\r\nContent-Length: 0\r\n\r\n": 501,
        b"GET /nowhere HTTP/1.1\r\n\r\n": 404,
        b"GET /validate HTTP/1.1\r\n\r\n": 405,
    }
    for payload, expected in cases.items():
        answer = raw_exchange(webhook, payload)
        status = int(answer.split(b" ", 2)[1])
        assert status == expected, (payload[:60], answer[:200])
        body = answer.split(b"\r\n\r\n", 1)[1]
        assert b"Traceback" not in body and json.loads(body)["error"]
    assert well_formed_answer(webhook)["allowed"] is True
