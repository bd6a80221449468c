"""``plugboard conform DIR``: drive one plugin, in any language, through its life cycle
and report what it got wrong.

The checker runs its own broker process on a private ipc endpoint, connects to it as
an agent (the role the runtime speaks to the broker in) and launches the plugin as the
runtime would (environment, token, process group). Steps: hello and init,
declarations within the contract, a subscription delivery (when the contract has a
``[conformance]`` table), heartbeats over several session timeouts, a broker restart
(the plugin must reconnect and declare again), and ``end`` (reply, then exit 0).
"""

from __future__ import annotations

import asyncio
import secrets
import shutil
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from plugboard.protocol.discovery import read_admin_token
from plugboard.protocol.errors import PlugboardError
from plugboard.sdk import Change, Client

from .contract import Contract, load_contract
from .link import BrokerLink
from .process import PluginProcess

HEARTBEAT_MS = 300
SESSION_TIMEOUT_MS = 1500


@dataclass(frozen=True, slots=True)
class Step:
    name: str
    ok: bool
    detail: str

    def __str__(self) -> str:
        return f"{'PASS' if self.ok else 'FAIL'}  {self.name}: {self.detail}"


class _Agent:
    """The checker's agent session: it registers the plugin with its launch token and
    turns the broker's ``plugin.ready`` / ``plugin.ended`` into events to await."""

    def __init__(self, endpoint: str, state_dir: Path, contract: Contract,
                 token: str) -> None:
        self.ready = asyncio.Event()
        self.ended = asyncio.Event()
        self.connected = False
        self.end_reason = ""
        self.link = BrokerLink(endpoint, name="conform",
                               token=lambda: read_admin_token(state_dir))
        self.link.registrations = lambda: [{"contract": contract.spec().to_wire(),
                                            "token": token}]
        self.link.on_plugin_ready(self._ready)
        self.link.on_plugin_ended(self._ended)

    def _ready(self, _name: str) -> None:
        self.connected = True
        self.ready.set()

    def _ended(self, _name: str, reason: str) -> None:
        self.connected = False
        self.end_reason = reason
        self.ended.set()


class Checker:
    def __init__(self, contract: Contract, workdir: Path) -> None:
        self.contract = contract
        self.endpoint = f"ipc://{workdir}/conform.sock"
        self.state_dir = workdir / "state"
        self.token = secrets.token_urlsafe(16)
        self.workdir = workdir
        self.steps: list[Step] = []
        self.agent = _Agent(self.endpoint, self.state_dir, contract, self.token)
        self.broker: subprocess.Popen[bytes] | None = None

    def record(self, name: str, ok: bool, detail: str) -> bool:
        self.steps.append(Step(name, ok, detail))
        return ok

    async def start_broker(self) -> None:
        """A broker process of its own; unmanaged plugins are allowed because the
        stimulus comes from a stand-in plugin."""
        self.agent.ready.clear()  # before: the plugin may be back before the line is read
        self.broker = subprocess.Popen(
            [sys.executable, "-m", "plugboard.broker.cli", "--log-level", "WARNING", "--state-dir",
             str(self.state_dir), "broker", "--endpoint", self.endpoint,
             "--heartbeat-ms", str(HEARTBEAT_MS), "--session-timeout-ms",
             str(SESSION_TIMEOUT_MS), "--allow-unmanaged-plugins"],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        assert self.broker.stdout is not None
        line = await asyncio.to_thread(self.broker.stdout.readline)
        if b"ready" not in line:
            raise PlugboardError(f"the checker's broker did not start (status "
                                 f"{self.broker.wait()})")

    async def kill_broker(self) -> None:
        """Gone at once, as after a crash: no end, no goodbye."""
        if self.broker is not None and self.broker.poll() is None:
            self.broker.kill()
            await asyncio.to_thread(self.broker.wait)

    @property
    def admin_token(self) -> str | None:
        return read_admin_token(self.state_dir)

    async def declared(self, timeout: float, quiet: float = 0.5) -> dict[str, Any]:
        """The plugin's properties (name → type) once it has declared some and then
        declared nothing new for ``quiet`` seconds."""
        name = self.contract.name
        loop = asyncio.get_running_loop()
        async with Client(self.endpoint, timeout=5) as client:
            sub = await client.subscribe(f"{name}/#")
            found: set[str] = set()
            try:
                async with asyncio.timeout(timeout) as deadline:
                    async for event in sub:
                        if isinstance(event, Change) and event.name not in found:
                            found.add(event.name)
                            deadline.reschedule(loop.time() + quiet)
            except TimeoutError:
                pass
            return {i.name: i.type for i in await client.list(f"{name}/#")}

    async def methods(self) -> None:
        """Every call the ``[conformance]`` table lists (``call = [{method, params,
        expect?}]``) through the broker, as admin: it must answer with a result of the
        declared type (the broker checks that), equal to ``expect`` when given."""
        calls = self.contract.conformance.get("call", [])
        if not self.contract.methods:
            self.record("methods", True, "skipped: the contract exports no methods")
            return
        if not calls:
            self.record("methods", True, "skipped: [conformance] lists no call")
            return
        results = []
        ok = True
        async with Client(self.endpoint, role="admin", token=self.admin_token,
                          timeout=5) as caller:
            for spec in calls:
                method, params = str(spec.get("method")), dict(spec.get("params", {}))
                try:
                    result = await caller.call(self.contract.name, method, **params)
                except PlugboardError as exc:
                    ok = False
                    results.append(f"{method}: {exc}")
                    continue
                good = "expect" not in spec or result == spec["expect"]
                ok = ok and good
                results.append(f"{method}({params}) = {result!r}"
                               + ("" if good else f", expected {spec['expect']!r}"))
        self.record("methods", ok, "; ".join(results))

    async def stimulus(self) -> None:
        spec = self.contract.conformance
        if not spec:
            self.record("subscription delivery", True, "skipped: the contract has no "
                        "[conformance] table (stimulus, value, response, expect)")
            return
        stimulus, value = str(spec["stimulus"]), spec["value"]
        response, expect = str(spec["response"]), spec["expect"]
        owner = stimulus.split("/", 1)[0]
        vtype = {bool: "bool", int: "int", float: "float", str: "str"}[type(value)]
        async with Client(self.endpoint, role="plugin", name=owner, timeout=5) as fake, \
                Client(self.endpoint, timeout=5) as watcher:
            responses = await watcher.subscribe(response)
            await fake.declare(stimulus, vtype)
            await fake.set(stimulus, value)
            seen = []
            try:
                async with asyncio.timeout(5):
                    async for event in responses:
                        if isinstance(event, Change):
                            seen.append(event.value)
                            if event.value == expect:
                                break
            except TimeoutError:
                pass
        ok = expect in seen
        self.record("subscription delivery", ok, f"wrote {stimulus} = {value!r}; "
                    f"{response} went through {seen[-5:]!r}, expected {expect!r}")

    async def run(self) -> list[Step]:
        contract = self.contract
        await self.start_broker()
        process = PluginProcess(contract, endpoint=self.endpoint, token=self.token,
                                log_path=self.workdir / "plugin.log")
        try:
            await self.agent.link.connect()
            await self._life_cycle(process)
        finally:
            if process.poll() is None:
                await process.stop(lambda: None, 1.0)
            process.close()
            await self.agent.link.close()
            if self.broker is not None and self.broker.poll() is None:
                self.broker.terminate()
                await asyncio.to_thread(self.broker.wait)
        return self.steps

    async def _has_session(self) -> bool:
        async with Client(self.endpoint, role="admin", token=self.admin_token) as admin:
            sessions = (await admin.request("sessions"))["sessions"]
        return any(s["name"] == self.contract.name for s in sessions)

    async def _life_cycle(self, process: PluginProcess) -> None:
        contract = self.contract
        agent = self.agent
        await process.spawn()
        try:
            await asyncio.wait_for(agent.ready.wait(), contract.run.start_timeout)
            self.record("hello and init", True, "said hello with its token and answered init")
        except TimeoutError:
            said_hello = await self._has_session()
            self.record("hello and init", False, (
                "said hello but did not answer init" if said_hello else "never said hello")
                + f" within {contract.run.start_timeout:g} s; exit status {process.poll()}; "
                f"stderr: {process.stderr_tail()[-500:]}")
            return
        props = await self.declared(5)
        spec = contract.spec()
        outside = [n for n, t in props.items()
                   if (e := spec.export_for(n)) is None or e.type.value not in (t, "any")]
        self.record("declarations", bool(props) and not outside,
                    f"declared {', '.join(f'{n} ({t})' for n, t in props.items()) or 'nothing'}"
                    + (f"; outside the contract: {outside}" if outside else ""))
        await self.stimulus()
        await self.methods()
        await asyncio.sleep(3 * SESSION_TIMEOUT_MS / 1000)  # several timeouts of silence
        alive = agent.connected
        self.record("heartbeat", alive, "kept its session over three session timeouts"
                    if alive else f"lost its session: {agent.end_reason}")
        await self.kill_broker()
        await self.start_broker()
        try:
            await asyncio.wait_for(agent.ready.wait(), 20)
            again = await self.declared(5)
            self.record("broker restart", set(again) >= set(props),
                        f"reconnected and declared {len(again)} of {len(props)} again")
        except TimeoutError:
            self.record("broker restart", False, "did not say hello to the restarted broker "
                        "within 20 s")
            return
        if not agent.connected:
            self.record("end", False, "no session to end")
            return
        agent.ended.clear()
        agent.link.end_plugin(contract.name)
        try:
            code = await asyncio.wait_for(process.wait(), contract.run.stop_timeout + 1)
            await asyncio.wait_for(agent.ended.wait(), 1)
            answered = agent.end_reason == "ended"
            self.record("end", code == 0 and answered, f"answered end: {answered}; exited "
                        f"with status {code}")
        except TimeoutError:
            self.record("end", False, f"still running {contract.run.stop_timeout + 1:g} s "
                        "after end")


@asynccontextmanager
async def _workdir() -> AsyncIterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="pbc-"))  # short: ipc paths have a length limit
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


async def conform(directory: Path) -> list[Step]:
    contract, problems = load_contract(directory)
    if contract is None:
        return [Step("contract", False, "; ".join(str(p) for p in problems))]
    async with _workdir() as workdir:
        try:
            return await Checker(contract, workdir).run()
        except (PlugboardError, OSError) as exc:
            return [Step("checker", False, f"{type(exc).__name__}: {exc}")]
