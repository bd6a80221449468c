"""The plugin runtime with real plugin processes that misbehave on purpose.

The broker and an agent's supervisor run in the test's event loop (the supervisor
speaks to the broker over the protocol, as every agent does); the plugins are real
child processes. Each test asserts the state or escalation step reached.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import psutil
import pytest

from plugboard.broker import BrokerServer, CoreConfig, ServerConfig
from plugboard.runtime.process import LINE_LIMIT, StopStep
from plugboard.runtime.supervisor import PluginState, Supervisor
from plugboard.sdk import Change, Client, Removed

from .processes import make_plugin, short_tmpdir, start_agent, stop_agent

pytestmark = pytest.mark.integration
ADMIN_TOKEN = "runtime-test-token"


class Runtime:
    def __init__(self, server: BrokerServer, state_dir: Path) -> None:
        self.server = server
        self.state_dir = state_dir
        self.supervisor: Supervisor | None = None

    async def start(self, root: Path) -> Supervisor:
        self.supervisor = await start_agent(self.server.endpoints[0], root, self.state_dir,
                                            token=ADMIN_TOKEN)
        return self.supervisor

    async def synced(self) -> None:
        """Reports go without waiting for their answers; a ping on the same connection
        is answered after all of them are applied."""
        assert self.supervisor is not None
        await self.supervisor.link.client.request("ping")

    async def until_state(self, name: str, *states: PluginState, timeout: float = 15) -> None:
        assert self.supervisor is not None
        plugin = self.supervisor.plugins[name]
        async with asyncio.timeout(timeout):
            async with Client(self.server.endpoints[0]) as client:
                sub = await client.subscribe(f"system/plugins/{name}/state")
                async for event in sub:
                    if isinstance(event, Change) and event.value in states:
                        return
        raise AssertionError(f"{name} never reached {states}: {plugin.state} {plugin.reason}")


@pytest.fixture
async def runtime() -> AsyncIterator[Runtime]:
    state_dir = short_tmpdir()
    server = BrokerServer(ServerConfig(
        endpoints=(f"ipc://{state_dir}/broker.sock",),
        core=CoreConfig(heartbeat_ms=200, session_timeout_ms=1000, admin_token=ADMIN_TOKEN)))
    serving = asyncio.create_task(server.serve())
    await server.ready.wait()
    rt = Runtime(server, state_dir)
    try:
        yield rt
    finally:
        if rt.supervisor is not None:
            await stop_agent(rt.supervisor)
        server.stop()
        await serving


def reason_of(rt: Runtime, name: str) -> str:
    assert rt.supervisor is not None
    plugin = rt.supervisor.plugins[name]
    return f"state {plugin.state}, reason {plugin.reason!r}"


async def test_crash_on_start_reports_exit_code_and_stderr(runtime: Runtime) -> None:
    root = short_tmpdir()
    make_plugin(root, "crasher", restart="never", CRASH_ON_START="1")
    make_plugin(root, "needy", extra='needs = ["crash-service"]')
    (root / "crasher" / "plugin.toml").write_text(
        (root / "crasher" / "plugin.toml").read_text().replace(
            'protocol = [1]', 'protocol = [1]\nprovides = ["crash-service"]'))
    supervisor = await runtime.start(root)
    await runtime.until_state("crasher", PluginState.FAILED, PluginState.EXITED)
    crasher = supervisor.plugins["crasher"]
    assert "exited with status 3 before it was ready" in crasher.reason
    assert "misbehave: crashing on start" in crasher.reason
    needy = supervisor.plugins["needy"]
    assert needy.state is PluginState.FAILED and "depends on crasher" in needy.reason


async def test_no_hello_fails_at_the_start_timeout(runtime: Runtime) -> None:
    root = short_tmpdir()
    make_plugin(root, "mute", restart="never", NO_HELLO="1")
    supervisor = await runtime.start(root)
    assert "not ready within 3 s" in supervisor.plugins["mute"].reason
    assert "not saying hello" in supervisor.plugins["mute"].reason


async def test_ignoring_sigterm_escalates_to_sigkill_and_grandchildren_go(
        runtime: Runtime) -> None:
    root = short_tmpdir()
    make_plugin(root, "stubborn", IGNORE_SIGTERM="1", GRANDCHILDREN="1")
    supervisor = await runtime.start(root)
    assert supervisor.plugins["stubborn"].state is PluginState.READY, reason_of(runtime,
                                                                                 "stubborn")
    core = runtime.server.core
    children = [core.store.by_name[f"stubborn/child_{i}"].value for i in (0, 1)]
    assert all(psutil.pid_exists(pid) for pid in children)
    step = await supervisor.stop("stubborn")
    assert step is StopStep.SIGKILL
    assert supervisor.plugins["stubborn"].state is PluginState.STOPPED
    for pid in children:  # gone, or dead and waiting to be reaped by init
        try:
            assert psutil.Process(pid).status() == psutil.STATUS_ZOMBIE, f"{pid} survived"
        except psutil.NoSuchProcess:
            pass


async def test_polite_plugin_stops_at_the_end_request(runtime: Runtime) -> None:
    root = short_tmpdir()
    make_plugin(root, "polite")
    supervisor = await runtime.start(root)
    assert await supervisor.stop("polite") is StopStep.END
    assert supervisor.plugins["polite"].exit_code == 0


async def test_crash_later_is_restarted_with_properties_back(runtime: Runtime) -> None:
    root = short_tmpdir()
    make_plugin(root, "phoenix", CRASH_LATER="1")
    async with Client(runtime.server.endpoints[0]) as client:
        sub = await client.subscribe("phoenix/alive", current=False)
        supervisor = await runtime.start(root)
        seen: list[object] = []
        async with asyncio.timeout(15):
            async for event in sub:
                seen.append(type(event))
                if seen.count(Change) >= 2 and Removed in seen:
                    break
        assert supervisor.plugins["phoenix"].restarts >= 1


async def test_a_plugin_that_keeps_crashing_is_marked_failed(runtime: Runtime) -> None:
    root = short_tmpdir()
    make_plugin(root, "flapper", restart="always", CRASH_LATER="1")
    supervisor = await runtime.start(root)
    supervisor.plugins["flapper"].tracker.base_delay = 0.05
    supervisor.plugins["flapper"].tracker.flap_limit = 2
    await runtime.until_state("flapper", PluginState.FAILED)
    assert "flapping" in supervisor.plugins["flapper"].reason


async def test_requested_stop_is_not_restarted(runtime: Runtime) -> None:
    root = short_tmpdir()
    make_plugin(root, "calm", restart="always")
    supervisor = await runtime.start(root)
    await supervisor.stop("calm")
    assert supervisor.plugins["calm"].state is PluginState.STOPPED
    assert supervisor.plugins["calm"].restart_timer is None


async def test_blocked_event_loop_loses_its_session_and_is_replaced(runtime: Runtime) -> None:
    root = short_tmpdir()
    make_plugin(root, "frozen", restart="never", BLOCK_LOOP="1")
    supervisor = await runtime.start(root)
    await runtime.until_state("frozen", PluginState.FAILED, PluginState.EXITED)
    assert "session lost" in supervisor.plugins["frozen"].reason


async def test_memory_limit_restarts_the_plugin(runtime: Runtime) -> None:
    root = short_tmpdir()
    make_plugin(root, "hog", restart="never", EAT_MEMORY="300")
    supervisor = await runtime.start(root)
    await runtime.until_state("hog", PluginState.FAILED, PluginState.EXITED)
    assert "limit exceeded: memory" in supervisor.plugins["hog"].reason


async def test_declaring_outside_the_contract_is_refused(runtime: Runtime) -> None:
    root = short_tmpdir()
    make_plugin(root, "rogue", restart="never", DECLARE_OUTSIDE="1")
    (root / "rogue" / "plugin.toml").write_text((root / "rogue" / "plugin.toml").read_text()
                                                .replace('pattern = "rogue/+"',
                                                         'pattern = "rogue/alive"'))
    supervisor = await runtime.start(root)
    rogue = supervisor.plugins["rogue"]
    assert rogue.state in (PluginState.FAILED, PluginState.EXITED)
    log = (runtime.state_dir / "logs" / "rogue.log").read_text()
    assert "contract_violation: rogue/secret is not exported" in log


async def test_contract_and_stats_are_published(runtime: Runtime) -> None:
    root = short_tmpdir()
    make_plugin(root, "open", extra='provides = ["openness"]')
    supervisor = await runtime.start(root)
    store = runtime.server.core.store.by_name
    assert store["system/plugins/open/contract/provides"].value == ["openness"]
    assert store["system/plugins/open/contract/exports"].value[0]["pattern"] == "open/+"
    assert store["system/plugins/open/pid"].value == supervisor.plugins["open"].process.pid
    assert store["system/plugins/open/state"].value == "ready"
    os.kill(supervisor.plugins["open"].process.pid, 0)


async def test_reload_follows_the_replacement_rule(runtime: Runtime) -> None:
    from plugboard.protocol import ProtocolError

    root = short_tmpdir()
    make_plugin(root, "base", extra='provides = ["a", "b"]')
    make_plugin(root, "user", extra='needs = ["b"]')
    supervisor = await runtime.start(root)
    first_pid = supervisor.plugins["base"].process.pid
    toml = root / "base" / "plugin.toml"
    toml.write_text(toml.read_text().replace('version = "1.0"', 'version = "1.1"')
                    .replace('provides = ["a", "b"]', 'provides = ["a", "b", "c"]'))
    assert await supervisor.reload("base") == []
    assert supervisor.plugins["base"].contract.version == "1.1"
    assert supervisor.plugins["base"].process.pid != first_pid
    toml.write_text(toml.read_text().replace('provides = ["a", "b", "c"]', 'provides = ["a"]'))
    with pytest.raises(ProtocolError, match="no longer provides b, c"):
        await supervisor.reload("base")
    assert supervisor.plugins["base"].contract.version == "1.1"
    user_pid = supervisor.plugins["user"].process.pid
    assert await supervisor.reload("base", force=True) == ["user"]
    assert supervisor.plugins["user"].process.pid != user_pid
    assert supervisor.plugins["user"].state is PluginState.READY


async def test_dependents_start_once_a_failed_plugin_recovers(runtime: Runtime) -> None:
    root = short_tmpdir()
    make_plugin(root, "shaky", extra='provides = ["service"]',
                CRASH_ON_START_ONCE=str(root / "crashed-once"))
    make_plugin(root, "patient", extra='needs = ["service"]')
    supervisor = await runtime.start(root)
    assert supervisor.plugins["patient"].state is PluginState.FAILED
    assert "starts when they are ready" in supervisor.plugins["patient"].reason
    await runtime.until_state("patient", PluginState.READY)
    assert supervisor.plugins["shaky"].state is PluginState.READY


async def test_the_config_table_reaches_the_plugin_and_a_reload_brings_the_new_one(
        runtime: Runtime) -> None:
    root = short_tmpdir()
    make_plugin(root, "configured", extra='[config]\nanswer = 42\nnested = {unit = "degC"}')
    supervisor = await runtime.start(root)
    core = runtime.server.core
    config = core.store.by_name["configured/config"]
    assert config.value == {"answer": 42, "nested": {"unit": "degC"}}, reason_of(
        runtime, "configured")
    manifest = root / "configured" / "plugin.toml"
    manifest.write_text(manifest.read_text().replace("answer = 42", "answer = 43"))
    await supervisor.reload("configured")
    assert core.store.by_name["configured/config"].value["answer"] == 43


async def test_a_daemon_holding_the_pipes_does_not_hang_the_stop_and_is_killed(
        runtime: Runtime) -> None:
    root = short_tmpdir()
    make_plugin(root, "forker", DAEMON="1")
    supervisor = await runtime.start(root)
    assert "forker/daemon" in runtime.server.core.store.by_name, reason_of(runtime, "forker")
    daemon = runtime.server.core.store.by_name["forker/daemon"].value
    assert psutil.pid_exists(daemon), reason_of(runtime, "forker")
    assert os.getpgid(daemon) != supervisor.plugins["forker"].process.pid  # type: ignore
    async with asyncio.timeout(3 * 1 + 2):  # three escalation steps of stop_timeout 1 s
        await supervisor.stop("forker")
    gone = await asyncio.to_thread(psutil.wait_procs, [psutil.Process(daemon)], 3)
    assert gone[0] and not gone[1], "the escaped daemon is still running"
    plugin = supervisor.plugins["forker"]
    assert plugin.state is PluginState.STOPPED
    assert "escaped its process group" in plugin.reason and f"{daemon} (sleep)" in plugin.reason


async def test_a_line_longer_than_the_limit_is_cut_and_the_output_read_on(
        runtime: Runtime) -> None:
    """A 200 KB line: kept cut at 64 KiB, and every line after it captured. The capture
    used to end at such a line, and the plugin then blocked on its full pipe."""
    root = short_tmpdir()
    make_plugin(root, "verbose", restart="never", LONG_LINE="1")
    supervisor = await runtime.start(root)  # ready: its init wrote everything
    assert supervisor.plugins["verbose"].state is PluginState.READY
    text = b"".join(path.read_bytes() for path in sorted(
        (runtime.state_dir / "logs").glob("verbose.log*"), reverse=True))
    cut = [line for line in text.splitlines() if line.endswith(b" [cut]")]
    assert len(cut) == 1 and cut[0].count(b"L") == LINE_LIMIT
    assert b"short line 3999 " in text
