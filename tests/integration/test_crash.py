"""No acknowledged write is lost: writers, SIGKILL of the broker at a random moment, restart.

Runs PLUGBOARD_CRASH_ROUNDS rounds (3 by default; set it higher for a long run).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from plugboard.runtime.orphans import LaunchLog
from plugboard.runtime.process import RotatingLog
from plugboard.sdk import Change, Client, RemoteError

from .conftest import Processes
from .processes import (
    PLUGBOARD,
    ROOT,
    ManagedProcess,
    PluginProcess,
    cannot_run,
    free_port,
    make_plugin,
    short_tmpdir,
)

pytestmark = pytest.mark.integration

ROUNDS = int(os.environ.get("PLUGBOARD_CRASH_ROUNDS", "3"))
WRITERS = 3


def read_log(path: Path) -> tuple[dict[str, set[int]], dict[str, int]]:
    """Per property: every value tried, and the highest acknowledged."""
    tried: dict[str, set[int]] = {}
    acked: dict[str, int] = {}
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) != 3:
            continue  # the last line may be cut by the kill
        kind, prop, value = parts[0], parts[1], int(parts[2])
        if kind == "try":
            tried.setdefault(prop, set()).add(value)
        else:
            acked[prop] = max(acked.get(prop, 0), value)
    return tried, acked


async def test_no_acknowledged_write_is_lost_when_the_broker_is_killed(
        processes: Processes) -> None:
    state_dir = short_tmpdir()
    rng = random.Random(os.environ.get("PLUGBOARD_CRASH_SEED"))
    for rnd in range(ROUNDS):
        broker = processes.broker(state_dir)
        logs = []
        async with Client(broker.ipc) as watcher:
            progress = await watcher.subscribe("+/progress", current=False)
            for index in range(WRITERS):
                log_path = state_dir / f"writer-{rnd}-{index}.log"
                logs.append(log_path)
                processes.started.append(ManagedProcess(
                    [sys.executable, str(ROOT / "tests/fixtures/writer.py")],
                    stderr_path=state_dir / f"writer-{rnd}-{index}.stderr",
                    env={"PLUGBOARD_ENDPOINT": broker.ipc, "PLUGBOARD_NAME": f"w{index}",
                         "WRITER_ROUND": str(rnd), "WRITER_INDEX": str(index),
                         "WRITER_LOG": str(log_path)}))
            target = rng.randrange(300, 1500)
            reached: set[str] = set()

            def far_enough(event: object, target: int = target,
                           reached: set[str] = reached) -> bool:
                if isinstance(event, Change) and event.value >= target:
                    reached.add(event.name)
                return len(reached) == WRITERS

            await processes.until(progress, far_enough, timeout=60)
        broker.signal(signal.SIGKILL)
        broker.wait(10)
        for writer in processes.started[-WRITERS:]:
            writer.wait(15)

        restarted = processes.broker(state_dir)
        async with Client(restarted.ipc) as checker:
            stored = {info.name: info.value for info in await checker.list(f"+/r{rnd}/#")}
        total_acked = 0
        for log_path in logs:
            tried, acked = read_log(log_path)
            total_acked += len(acked)
            for prop, last_ack in acked.items():
                assert prop in stored, f"round {rnd}: {prop} lost entirely"
                assert stored[prop] >= last_ack, (
                    f"round {rnd}: {prop} holds {stored[prop]}, but {last_ack} was acknowledged")
                assert stored[prop] in tried[prop], f"{prop} holds a value never written"
        assert total_acked == WRITERS * 5
        with sqlite3.connect(state_dir / "store.sqlite") as db:
            assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        restarted.stop()


async def test_a_killed_brokers_grandchildren_are_ended_by_the_next_broker(
        processes: Processes) -> None:
    root = short_tmpdir()
    make_plugin(root, "parent", GRANDCHILDREN="1")
    state = short_tmpdir()
    broker = processes.broker(state, "--plugins", str(root))
    async with Client(broker.ipc) as client:
        sub = await client.subscribe("parent/child_1")
        events = await processes.until(sub, lambda e: isinstance(e, Change))
    grandchildren = [psutil.Process(int(events[-1].value))]
    async with Client(broker.ipc) as client:
        grandchildren.append(psutil.Process((await client.get("parent/child_0")).value))
    broker.signal(signal.SIGKILL)
    broker.wait(5)
    # The plugin died with the broker (parent-death signal); its children did not.
    assert all(child.is_running() for child in grandchildren)
    again = processes.broker(state)
    gone, alive = await asyncio.to_thread(psutil.wait_procs, grandchildren, 5)
    assert not alive, f"still running after the restart: {alive}\n{again.describe()}"
    assert "left running by a previous broker" in again.stderr_path.read_text()


async def test_a_plugin_gives_up_on_a_broker_gone_too_long_with_a_failure(
        processes: Processes) -> None:
    """Status 75 (EX_TEMPFAIL), so its agent restarts it rather than leaving it exited."""
    broker = processes.broker()
    plugin = processes.plugin("misbehave.py", "quitter", broker,
                              PLUGBOARD_GIVE_UP_AFTER="0.5")
    async with Client(broker.ipc) as client:
        alive = await client.subscribe("quitter/alive")
        await processes.until(alive, lambda e: isinstance(e, Change))
    broker.signal(signal.SIGKILL)
    broker.wait(5)
    assert await asyncio.to_thread(plugin.wait, 15) == 75, plugin.describe()


async def test_a_plugin_started_without_a_broker_says_so_and_exits_to_be_restarted(
        processes: Processes) -> None:
    """No broker at start: status 75 too, in one line; one the broker refuses (here an
    unmanaged plugin where they are not allowed): status 1, in one line."""
    workdir = short_tmpdir()
    early = PluginProcess("misbehave.py", "early", f"tcp://127.0.0.1:{free_port()}", workdir)
    processes.started.append(early)
    assert await asyncio.to_thread(early.wait, 30) == 75, early.describe()
    stderr = early.stderr_path.read_text()
    assert "no broker answered" in stderr and "Traceback" not in stderr, stderr
    broker = processes.broker(allow_unmanaged=False)
    refused = processes.plugin("misbehave.py", "uninvited", broker)
    assert await asyncio.to_thread(refused.wait, 30) == 1, refused.describe()
    stderr = refused.stderr_path.read_text()
    assert "unauthorized" in stderr and "Traceback" not in stderr, stderr


@pytest.fixture
def small_disk() -> Iterator[Path]:
    """A 2 MiB tmpfs, unmounted afterwards (lazily: a broker may still hold files)."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        cannot_run("mounting a tmpfs needs root and mount")
    disk = short_tmpdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(disk)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        cannot_run(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def fill(disk: Path) -> Path:
    """Write a file until the disk takes no more; deleting it makes room again."""
    filler = disk / "filler"
    with filler.open("wb", buffering=0) as out:  # unbuffered: closing flushes nothing
        try:
            while out.write(b"\0" * 65536):
                pass
        except OSError:
            pass
    return filler


def test_plugin_output_on_a_full_disk_is_dropped_said_and_kept_again(
        small_disk: Path) -> None:
    """The log of a plugin's output: lines the disk refuses are counted, not raised
    (the capture reads on, or the plugin would block on its pipe), and the file says
    how many were lost once it takes lines again."""
    log = RotatingLog(small_disk / "logs" / "p.log")
    log.write(b"before\n")
    filler = fill(small_disk)
    for _ in range(3):
        log.write(b"x" * 8192 + b"\n")  # more than the last page can hold
    assert log.dropped >= 1
    filler.unlink()
    log.write(b"after\n")
    log.close()
    lines = (small_disk / "logs" / "p.log").read_bytes().splitlines()
    assert lines[0] == b"before" and lines[-1] == b"after"
    assert lines[-2].endswith(b"line(s) not kept: the disk refused them")


def test_the_launch_record_on_a_full_disk_is_skipped_not_fatal(small_disk: Path) -> None:
    """launches.json only lets the next broker end what a killed one left: a full disk
    must not stop a launch. Nothing half-written stays; with room it is written again."""
    launches = LaunchLog(small_disk)
    filler = fill(small_disk)
    launches.add("p", os.getpid(), "token")  # logged, not raised
    assert not (small_disk / "launches.json").exists()
    assert not (small_disk / "launches.tmp").exists()
    filler.unlink()
    launches.add("q", os.getpid(), "token")
    assert {entry["name"] for entry in json.loads(
        (small_disk / "launches.json").read_text())} == {"p", "q"}


@pytest.mark.parametrize("durability", ["always", "batch"])
async def test_a_full_disk_refuses_no_write_silently_and_the_store_catches_up(
        processes: Processes, small_disk: Path, durability: str) -> None:
    """The state directory on a 2 MiB tmpfs, filled up: a write to a persistent property
    is answered with an error (it is in effect, not stored), everything else is served,
    and once there is room again the store takes the writes it had queued by itself: a
    broker killed afterwards restarts with them. Under batch, once a timer's commit
    found the failure."""
    logs = short_tmpdir()  # not on the full disk
    broker = processes.broker(small_disk, "--durability", durability,
                              stderr_path=logs / "broker.stderr")
    async with Client(broker.ipc, role="plugin", name="disk") as plugin, \
            Client(broker.ipc) as watcher:
        await plugin.declare("disk/x", "bytes", persist=True)
        await plugin.declare("disk/y", "int")
        changes = await watcher.subscribe("disk/x", current=False)
        commits = await watcher.subscribe("system/broker/store_commits")
        await plugin.set("disk/x", b"stored")
        # The figure is refreshed every second: wait until it counts that commit.
        seen = await processes.until(commits, lambda e: isinstance(e, Change)
                                     and e.value >= 1)
        committed = seen[-1].value
        errors = await watcher.subscribe("system/broker/store_error")
        filler = fill(small_disk)
        if durability == "always":  # a broker started on the full disk says why
            second = await asyncio.to_thread(
                subprocess.run, [*PLUGBOARD, "--state-dir", str(small_disk / "second"),
                                 "broker", "--endpoint", "tcp://127.0.0.1:*",
                                 "--insecure"],
                capture_output=True, text=True, timeout=60, cwd=ROOT)
            assert second.returncode == 1, second.stderr
            assert "No space left on device" in second.stderr, second.stderr
            assert "Traceback" not in second.stderr
        if durability == "always":  # a write sent as a notification whose commit
            first: list[RemoteError] = []  # finds the disk full is told, before the ping
            plugin.on_error(first.append)
            plugin.set_nowait("disk/x", b"first" * 20_000)
            await plugin.request("ping")
            assert [e.details.get("method") for e in first] == ["set"], first
            assert "not stored" in first[0].message
        if durability == "batch":  # acknowledged at once; the timer's commit fails
            await plugin.set("disk/x", b"early")
            await processes.until(errors, lambda e: isinstance(e, Change)
                                  and "full" in e.value)
        with pytest.raises(RemoteError) as refused:
            await plugin.set("disk/x", b"queued" * 20_000)
        assert refused.value.code == "internal"
        assert "not stored" in refused.value.message and "full" in refused.value.message
        await processes.until(changes, lambda e: isinstance(e, Change)
                              and e.value.startswith(b"queued"))  # in effect
        told: list[RemoteError] = []
        plugin.on_error(told.append)  # a write sent as a notification is told too
        plugin.set_nowait("disk/x", b"queued" * 20_000)
        await plugin.request("ping")  # answered after the write's error
        assert [e.details.get("method") for e in told] == ["set"]
        assert "not stored" in told[0].message
        await plugin.set("disk/y", 1)  # the rest is served as ever
        assert (await watcher.get("disk/y")).value == 1
        assert "could not commit" in broker.stderr_path.read_text()
        if durability == "always":
            await processes.until(errors, lambda e: isinstance(e, Change)
                                  and "full" in e.value)

        filler.unlink()  # the retry timer stores the queued write by itself
        await processes.until(commits, lambda e: isinstance(e, Change)
                              and e.value > committed, timeout=10)
        await processes.until(errors, lambda e: isinstance(e, Change) and e.value == "")
    broker.signal(signal.SIGKILL)
    broker.wait(10)
    restarted = processes.broker(small_disk, stderr_path=logs / "restarted.stderr")
    async with Client(restarted.ipc) as checker:
        assert (await checker.get("disk/x")).value == b"queued" * 20_000
    assert "writes again" in broker.stderr_path.read_text()
    restarted.stop()
