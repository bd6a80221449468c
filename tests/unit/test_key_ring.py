"""The ZAP answers of the broker's key ring, without sockets."""

from pathlib import Path

import pytest
import zmq

from plugboard.broker.security import REFUSAL_LOG_S, KeyRing


def zap_request(public: bytes) -> list[bytes]:
    return [b"1.0", b"7", b"plugboard", b"10.0.0.9", b"", b"CURVE", public]


def test_a_refused_key_retried_all_the_time_is_logged_once_a_minute(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    now = [100.0]
    ring = KeyRing(tmp_path, clock=lambda: now[0])
    public, _ = zmq.curve_keypair()
    stranger = zmq.utils.z85.decode(public)
    for _ in range(100):  # a client retrying every 100 ms for 10 s
        assert ring.zap_reply(zap_request(stranger))[2] == b"400"
        now[0] += 0.1
    refusals = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert refusals == [f"refused a CURVE connection from 10.0.0.9: key {public.decode()} "
                        "is not authorized"]
    now[0] += REFUSAL_LOG_S
    ring.zap_reply(zap_request(stranger))
    refusals = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert refusals[1].endswith("is not authorized (99 more refusals of it since)")
    ring.allow_launch(public.decode(), "p")
    assert ring.zap_reply(zap_request(stranger))[2] == b"200"
