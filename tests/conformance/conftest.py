"""Point the conformance suite at any broker: PLUGBOARD_CONFORMANCE_ENDPOINT (and, for the
admin checks, PLUGBOARD_CONFORMANCE_TOKEN). Without it, a broker of this project is
started for the suite."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import zmq

from tests.integration.processes import FIXTURE_PLUGINS, BrokerProcess

from .raw import RawPeer

CALC = FIXTURE_PLUGINS / "calc"


@dataclass
class Target:
    endpoint: str
    admin_token: str | None
    broker: BrokerProcess | None
    """Set when the suite started the broker itself (then it may also stop it)."""


@pytest.fixture
def target() -> Iterator[Target]:
    endpoint = os.environ.get("PLUGBOARD_CONFORMANCE_ENDPOINT")
    if endpoint:
        yield Target(endpoint, os.environ.get("PLUGBOARD_CONFORMANCE_TOKEN"), None)
        return
    # The suite's broker runs the calc plugin, whose methods the call checks need.
    broker = BrokerProcess(None, "--plugins", str(CALC))
    try:
        yield Target(broker.tcp, broker.admin_token, broker)
    finally:
        broker.stop()


class Peers:
    def __init__(self, endpoint: str) -> None:
        self.ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self.endpoint = endpoint
        self.made: list[RawPeer] = []

    def __call__(self) -> RawPeer:
        peer = RawPeer(self.ctx, self.endpoint)
        self.made.append(peer)
        return peer


@pytest.fixture
def peer(target: Target) -> Iterator[Peers]:
    peers = Peers(target.endpoint)
    yield peers
    for made in peers.made:
        made.close()
    peers.ctx.term()
