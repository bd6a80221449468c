from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from plugboard.sdk import Subscription

from .processes import AgentProcess, BrokerProcess, ManagedProcess, PluginProcess


class Processes:
    """Every process a test starts; all are stopped at teardown, whatever happened."""

    def __init__(self) -> None:
        self.started: list[ManagedProcess] = []

    def broker(self, *args: Any, **kwargs: Any) -> BrokerProcess:
        broker = BrokerProcess(*args, **kwargs)
        self.started.append(broker)
        return broker

    def agent(self, *args: Any, **kwargs: Any) -> AgentProcess:
        agent = AgentProcess(*args, **kwargs)
        self.started.append(agent)
        return agent

    def plugin(self, script: str, name: str, broker: BrokerProcess, endpoint: str | None = None,
               **env: str) -> PluginProcess:
        plugin = PluginProcess(script, name, endpoint or broker.ipc, broker.state_dir, **env)
        self.started.append(plugin)
        return plugin

    def report(self) -> str:
        return "\n\n".join(p.describe() for p in self.started)

    async def until(self, sub: Subscription, predicate: Callable[[Any], bool],
                    timeout: float = 10.0) -> list[Any]:
        """Events from ``sub`` up to the first that satisfies ``predicate``."""
        seen: list[Any] = []
        try:
            async with asyncio.timeout(timeout):
                async for event in sub:
                    seen.append(event)
                    if predicate(event):
                        return seen
        except TimeoutError:
            pass
        raise AssertionError(f"no matching event within {timeout} s; saw {seen[-10:]}\n"
                             f"{self.report()}")


@pytest.fixture
def processes() -> Iterator[Processes]:
    procs = Processes()
    try:
        yield procs
    finally:
        for proc in reversed(procs.started):
            proc.stop()


@pytest.fixture
def broker(processes: Processes) -> BrokerProcess:
    return processes.broker()
