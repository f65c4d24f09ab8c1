"""The status a gRPC caller sees when the upstream fails for good: Sluice's one mapping
(UpstreamFailure.grpcStatus), end to end through the simulator's fault injection. A failure that can
never succeed on retry must not end as UNAVAILABLE, which tells callers to retry."""

import pytest

from streaming_testlib import SluiceClient, send_request

CASES = [
    ({"kind": "error_event", "after_events": 3, "error_type": "invalid_request_error"}, "INVALID_ARGUMENT"),
    ({"kind": "http_status", "status": 400}, "INVALID_ARGUMENT"),
    ({"kind": "http_status", "status": 402}, "INTERNAL"),
    ({"kind": "http_status", "status": 404}, "NOT_FOUND"),
    ({"kind": "http_status", "status": 409}, "ABORTED"),
    ({"kind": "http_status", "status": 429, "retry_after_s": 0}, "RESOURCE_EXHAUSTED"),
    ({"kind": "http_status", "status": 529}, "UNAVAILABLE"),
    ({"kind": "error_event", "after_events": 3}, "UNAVAILABLE"),
]


@pytest.mark.parametrize("fault,code", CASES, ids=[f"{fault['kind']}-{fault.get('status') or fault.get('error_type', 'overloaded')}" for fault, _ in CASES])
def test_final_upstream_failures_map_to_one_status(start_server, fault, code):
    # One retry keeps the retried cases short; the status is the same after any number.
    server = start_server("--max-retries", "1")
    with SluiceClient(server.port) as client:
        outcome = client.send_message(send_request(seed=4, fault=fault))
    assert outcome.code == code, outcome.details
    assert "the upstream failed" in outcome.details
