"""Plugin methods called through the broker: checked both ways, bounded in time, never a hang."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from plugboard.broker import BrokerServer, CoreConfig, ServerConfig
from plugboard.runtime.supervisor import PluginState, Supervisor
from plugboard.sdk import (
    CallFailed,
    Client,
    InvalidRequest,
    InvalidValue,
    NotAllowed,
    NotFound,
    RemoteError,
)

from .processes import make_plugin, short_tmpdir, start_agent, stop_agent

pytestmark = pytest.mark.integration

METHODS = """
[[methods]]
name = "add"
description = "a + b"
params = { a = "int", b = "int" }
result = "int"
callable_by = ["clients"]

[[methods]]
name = "slow"
params = { seconds = "float" }
result = "bool"
callable_by = ["*"]

[[methods]]
name = "wrong"
result = "int"
callable_by = ["*"]

[[methods]]
name = "fail"
result = "any"
callable_by = ["*"]

[[methods]]
name = "unsendable"
result = "any"
callable_by = ["*"]

[[methods]]
name = "int_keys"
result = "any"
callable_by = ["*"]

[[methods]]
name = "private"
result = "any"
"""


@pytest.fixture
async def served() -> AsyncIterator[tuple[str, Supervisor]]:
    state = short_tmpdir()
    endpoint = f"ipc://{state}/b.sock"
    server = BrokerServer(ServerConfig(endpoints=(endpoint,), core=CoreConfig(
        heartbeat_ms=200, session_timeout_ms=1000, admin_token="t")))
    serving = asyncio.create_task(server.serve())
    await server.ready.wait()
    root = short_tmpdir()
    make_plugin(root, "calc", extra=METHODS)
    supervisor = await start_agent(endpoint, root, state, token="t")
    try:
        assert supervisor.plugins["calc"].state is PluginState.READY, supervisor.plugins[
            "calc"].reason
        yield endpoint, supervisor
    finally:
        await stop_agent(supervisor)
        server.stop()
        await serving


async def test_a_call_is_checked_both_ways(served: tuple[str, Supervisor]) -> None:
    endpoint, _ = served
    async with Client(endpoint) as client:
        assert await client.call("calc", "add", a=2, b=3) == 5
        with pytest.raises(InvalidValue, match="parameter 'a'"):
            await client.call("calc", "add", a="two", b=3)
        with pytest.raises(InvalidRequest, match="missing: b"):
            await client.call("calc", "add", a=2)
        with pytest.raises(InvalidRequest, match="unknown: c"):
            await client.call("calc", "add", a=2, b=3, c=4)
        with pytest.raises(NotFound, match="exports no method 'launch'"):
            await client.call("calc", "launch")
        with pytest.raises(NotAllowed, match="callable by admins, not by a client"):
            await client.call("calc", "private")
        with pytest.raises(NotAllowed) as violated:
            await client.call("calc", "wrong")
        assert violated.value.code == "contract_violation"
        with pytest.raises(CallFailed) as failed:
            await client.call("calc", "fail")
        assert failed.value.code == "call_failed"
        assert failed.value.details["plugin_code"] == "not_found"
        started = time.monotonic()  # answered at once, not at the call's timeout
        with pytest.raises(CallFailed, match="cannot be encoded") as unsent:
            await client.call("calc", "unsendable", timeout=10)
        assert unsent.value.details["plugin_code"] == "internal"
        with pytest.raises(CallFailed, match="its answer could not be decoded") as bad:
            await client.call("calc", "int_keys", timeout=10)
        assert bad.value.details["plugin_code"] == "malformed"
        assert time.monotonic() - started < 5
        methods = (await client.get("system/plugins/calc/contract/methods")).value
        assert {m["name"]: m["params"] for m in methods}["add"] == {"a": "int", "b": "int"}


async def test_a_slow_method_times_out_and_blocks_nothing(
        served: tuple[str, Supervisor]) -> None:
    endpoint, _ = served
    async with Client(endpoint) as client:
        slow = asyncio.ensure_future(client.call("calc", "slow", seconds=5.0))
        assert await client.call("calc", "add", a=1, b=1) == 2  # served meanwhile
        started = time.monotonic()
        with pytest.raises(CallFailed) as late:
            await client.call("calc", "slow", seconds=5.0, timeout=0.3)
        assert late.value.code == "timeout" and time.monotonic() - started < 1.5
        slow.cancel()


async def test_a_plugin_that_ends_mid_call_answers_the_caller_at_once(
        served: tuple[str, Supervisor]) -> None:
    endpoint, supervisor = served
    async with Client(endpoint) as client:
        pending = asyncio.ensure_future(client.call("calc", "slow", seconds=30.0, timeout=30))
        await client.call("calc", "add", a=0, b=0)  # the slow call is in the plugin now
        stopping = asyncio.ensure_future(supervisor.stop("calc"))
        started = time.monotonic()
        with pytest.raises(CallFailed) as gone:
            await pending
        assert gone.value.code == "unavailable" and time.monotonic() - started < 5
        await stopping
        with pytest.raises(CallFailed) as down:
            await client.call("calc", "add", a=1, b=2)
        assert down.value.code == "unavailable"


async def test_calls_waiting_per_session_are_bounded(served: tuple[str, Supervisor]) -> None:
    """The broker holds each call until it is answered: one session may not make it hold
    without end. The 1001st is refused at once; the next is served once one is over."""
    endpoint, _ = served
    async with Client(endpoint) as client, Client(endpoint) as other:
        slow = {"plugin": "calc", "method": "slow", "params": {"seconds": 30.0},
                "timeout_ms": 2000}
        waiting = [client.request_soon("call", slow) for _ in range(1000)]  # sent, in order
        with pytest.raises(RemoteError) as refused:
            await client.call("calc", "add", a=1, b=1)
        assert refused.value.code == "limit_exceeded", refused.value
        assert "1000 calls waiting" in refused.value.message
        assert await other.call("calc", "add", a=1, b=2) == 3  # another session is served
        outcomes = await asyncio.gather(*waiting, return_exceptions=True)
        assert {getattr(o, "code", o) for o in outcomes} == {"timeout"}
        assert await client.call("calc", "add", a=2, b=2) == 4
