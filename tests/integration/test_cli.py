"""The plugboard command against a real broker, as a person would type it."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pty
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import zmq

from plugboard.broker.cli import build_parser
from plugboard.protocol import Timestamp
from plugboard.sdk import Change, Client

from ..conformance.raw import hung_up_after_hello
from .conftest import Processes
from .processes import PLUGBOARD, ROOT, BrokerProcess, make_plugin, short_tmpdir

pytestmark = pytest.mark.integration


def plugboard(state_dir: Path, *args: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*PLUGBOARD, "--state-dir", str(state_dir),
                           *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT)


@pytest.fixture
async def ready_echo(processes: Processes, broker: BrokerProcess) -> BrokerProcess:
    processes.plugin("echo.py", "echo", broker)
    async with Client(broker.ipc) as client:
        sub = await client.subscribe("echo/echo")
        await processes.until(sub, lambda e: isinstance(e, Change))
    return broker


def commands_of(parser: argparse.ArgumentParser, prefix: list[str]) -> list[list[str]]:
    """Every command and sub-command the parser knows, as argv prefixes."""
    found = [prefix]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found += commands_of(sub, [*prefix, name])
    return found


def test_every_command_has_help() -> None:
    commands = commands_of(build_parser(), [])
    assert ["agent"] in commands and ["keys", "provision"] in commands
    for command in commands:
        out = plugboard(Path("/nonexistent"), *command, "--help")
        assert out.returncode == 0 and "usage: plugboard" in out.stdout, command


def test_get_set_typed_values(ready_echo: BrokerProcess) -> None:
    state = ready_echo.state_dir
    assert plugboard(state, "get", "system/broker/version").stdout.strip() == "0.1.0"
    for name, text, shown in [
        ("echo/setpoint", "3.5", "3.5"),
        ("echo/period", "1m30s", "1m30s"),
        ("echo/started", "2026-01-31T12:00:00Z", "2026-01-31T12:00:00.000000Z"),
    ]:
        out = plugboard(state, "set", name, text, "--admin")  # period and started: owner's
        assert out.returncode == 0, out.stderr
        assert plugboard(state, "get", name).stdout.strip() == shown


def test_the_cli_is_a_client_unless_it_asks_for_admin(ready_echo: BrokerProcess) -> None:
    state = ready_echo.state_dir
    refused = plugboard(state, "set", "echo/period", "1s")
    assert refused.returncode == 5, refused
    assert "writable by its owner 'echo'" in refused.stderr and "not by a client" in refused.stderr
    assert plugboard(state, "set", "echo/period", "1s", "--admin").returncode == 0
    verbose = plugboard(state, "get", "-v", "echo/period").stdout
    assert "owner" in verbose and "echo" in verbose and "duration" in verbose
    as_json = json.loads(plugboard(state, "get", "echo/period", "--json").stdout)
    assert as_json["value"] == 1.0 and as_json["live"] is True
    nobody = short_tmpdir()  # a state dir without the token: admin commands say so
    denied = plugboard(nobody, "plugins", "stop", "echo", "--endpoint", ready_echo.ipc)
    assert denied.returncode == 1 and "plugins stop needs the admin token" in denied.stderr


def test_set_refusals_are_one_clear_line(ready_echo: BrokerProcess) -> None:
    state = ready_echo.state_dir
    out = plugboard(state, "set", "echo/setpoint", "warm")
    assert out.returncode == 1 and "'warm' is not a valid float (e.g. 21.5" in out.stderr
    out = plugboard(state, "set", "echo/setpoint", "500")
    assert out.returncode == 5 and "above the maximum" in out.stderr  # refused
    out = plugboard(state, "get", "echo/nothing")
    assert out.returncode == 4 and "no property named 'echo/nothing'" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_ls_table_and_tree(ready_echo: BrokerProcess) -> None:
    table = plugboard(ready_echo.state_dir, "ls", "echo/#").stdout.splitlines()
    assert table[0].split() == ["NAME", "TYPE", "VALUE", "UNIT", "OWNER"]
    assert any(line.startswith("echo/setpoint") and "degC" in line for line in table)
    tree = plugboard(ready_echo.state_dir, "ls", "--tree").stdout
    assert "system/\n  broker/\n" in tree and "  setpoint = 0.0 degC" in tree


def test_watch_prints_pushed_changes(ready_echo: BrokerProcess) -> None:
    watcher = subprocess.Popen(
        [*PLUGBOARD, "--state-dir", str(ready_echo.state_dir), "watch",
         "echo/setpoint", "--count", "2"], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert watcher.stdout is not None
        first = watcher.stdout.readline()  # the current value: the subscription is live
        assert "echo/setpoint = 0.0" in first
        assert plugboard(ready_echo.state_dir, "set", "echo/setpoint", "-4").returncode == 0
        assert watcher.wait(15) == 0
        assert "echo/setpoint = -4.0" in watcher.stdout.read()
    finally:
        watcher.kill()
        watcher.wait()
        watcher.stdout.close()  # type: ignore[union-attr]


def test_no_broker_is_one_line_and_non_zero() -> None:
    empty = short_tmpdir()
    for command in (["get", "x/y"], ["set", "x/y", "1"], ["ls"], ["watch"]):
        out = plugboard(empty, *command)
        assert out.returncode == 3, out  # no broker
        assert out.stderr.strip().splitlines() == [
            f"plugboard {command[0]}: no broker is running at ipc://{empty}/broker.sock "
            "(socket file missing)"]


def test_a_file_the_command_cannot_write_is_one_line(tmp_path: Path) -> None:
    """An OSError from any command (a missing folder, a full disk) is its message and
    the path, exit status 1, never a traceback."""
    (tmp_path / "plain").write_text("a file, not a folder")
    out = plugboard(tmp_path / "state", "keys", "new", "zed", "--dir",
                    str(tmp_path / "plain" / "keys"))
    assert out.returncode == 1, out
    assert out.stderr.strip() == f"plugboard keys: Not a directory: {tmp_path / 'plain' / 'keys'}"


def test_second_broker_on_the_same_state_dir_is_refused(broker: BrokerProcess) -> None:
    out = plugboard(broker.state_dir, "broker")
    assert out.returncode == 1
    assert f"another broker (pid {broker.pid}) is running" in out.stderr


def test_admin_token_file_is_private(broker: BrokerProcess) -> None:
    assert (broker.state_dir / "admin.token").stat().st_mode & 0o777 == 0o600


def test_idle_broker_uses_almost_no_cpu(processes: Processes, broker: BrokerProcess) -> None:
    """No polling loop: with a plugin and a client connected and idle, CPU stays near 0."""
    processes.plugin("echo.py", "idle", broker)
    proc = psutil.Process(broker.pid)
    proc.cpu_percent()
    try:
        proc.wait(2.0)  # a measurement window, not a wait for an event
    except psutil.TimeoutExpired:
        pass
    assert proc.cpu_percent() < 5.0


async def test_store_info_export_import(processes: Processes) -> None:
    broker = processes.broker()
    async with Client(broker.ipc, role="plugin", name="saver") as saver:
        await saver.declare("saver/when", "timestamp", persist=True)
        await saver.declare("saver/level", "float", 3.25, persist=True)
        await saver.set("saver/when", Timestamp(1_700_000_000, 5))
    state = broker.state_dir
    exported = state / "export.json"
    assert plugboard(state, "store", "export", str(exported)).returncode == 0
    refused = plugboard(state, "store", "import", str(exported))
    assert refused.returncode == 1 and "another broker" in refused.stderr
    broker.signal(signal.SIGINT)
    broker.wait(15)
    info = plugboard(state, "store", "info").stdout
    assert "properties   2" in info and "integrity    ok" in info and "always" in info
    (state / "store.sqlite").unlink()
    good = exported.read_text()
    exported.write_text(good.replace('"value": 3.25', '"value": "high"'))
    bad = plugboard(state, "store", "import", str(exported))
    assert bad.returncode == 1 and "(saver/level): value: expected float, got str" in \
        bad.stderr, bad.stderr
    assert not (state / "store.sqlite").exists()  # nothing imported
    exported.write_text(good)
    imported = plugboard(state, "store", "import", str(exported))
    assert imported.returncode == 0, imported.stderr
    restarted = processes.broker(state)
    assert plugboard(state, "get", "saver/level").stdout.strip() == "3.25"
    assert plugboard(state, "get", "saver/when").stdout.strip() == "2023-11-14T22:13:20.000000Z"
    # Restored, with their plugin away: dormant, and said so.
    assert "saver (away)" in plugboard(state, "ls", "saver/#").stdout
    async with Client(restarted.ipc) as client:
        assert [info.live for info in await client.list("saver/#")] == [False, False]
        async with Client(restarted.ipc, role="plugin", name="saver") as saver:
            await saver.declare("saver/level", "float", persist=True)
            assert (await client.get("saver/level")).live
    restarted.stop()


async def test_call_and_plugins_show_through_the_command(processes: Processes) -> None:
    broker = processes.broker(None, "--plugins", str(ROOT / "plugins" / "thermostat"),
                              "--plugins", str(ROOT / "plugins" / "room"))
    async with Client(broker.ipc) as client:
        state = await client.subscribe("system/plugins/thermostat/state")
        await processes.until(state, lambda e: isinstance(e, Change) and e.value == "ready")
    shown = plugboard(broker.state_dir, "plugins", "show", "thermostat")
    assert shown.returncode == 0, shown.stderr
    assert "boost(minutes: float) -> float  [callable by *]" in shown.stdout
    assert "thermostat/setpoint (float)" in shown.stdout
    called = plugboard(broker.state_dir, "call", "thermostat", "boost", "minutes=0.5")
    assert called.returncode == 0, called.stderr
    assert float(called.stdout) > 5
    wrong = plugboard(broker.state_dir, "call", "thermostat", "boost", "hours=1")
    assert wrong.returncode == 1 and "KEY one of minutes" in wrong.stderr
    refused = plugboard(broker.state_dir, "call", "thermostat", "boost", "minutes=-1")
    assert refused.returncode == 5 and "minutes must be above 0" in refused.stderr


async def test_a_failed_plugin_tells_its_story(processes: Processes) -> None:
    root = short_tmpdir()
    make_plugin(root, "broken", restart="never", RAISE_ON_INIT="1")
    broker = processes.broker(None, "--plugins", str(root))
    async with Client(broker.ipc) as client:
        state = await client.subscribe("system/plugins/broken/state")
        await processes.until(state, lambda e: isinstance(e, Change) and e.value == "failed")
    table = plugboard(broker.state_dir, "plugins").stdout
    row = next(line for line in table.splitlines() if line.startswith("broken"))
    assert "ZeroDivisionError: division by zero" in row, table
    story = plugboard(broker.state_dir, "plugins", "show", "broken")
    assert story.returncode == 0, story.stderr
    text = story.stdout
    assert "history:" in text and "starting" in text and "failed" in text, text
    assert "exit 1" in text and "Traceback (most recent call last)" in text, text
    assert "limits" in text and "memory_mb" in text, text
    shown = json.loads(plugboard(broker.state_dir, "plugins", "show", "broken",
                                 "--json").stdout)
    assert [h["state"] for h in shown["history"]][-2:] == ["starting", "failed"]
    missing = plugboard(broker.state_dir, "plugins", "show", "nobody")
    assert missing.returncode == 4 and "no plugin 'nobody'" in missing.stderr


def test_the_broker_tells_systemd_when_it_is_ready_and_stopping(processes: Processes) -> None:
    folder = short_tmpdir()
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(str(folder / "notify"))
        notify.settimeout(15)
        broker = processes.broker(None, env={"NOTIFY_SOCKET": str(folder / "notify")})
        ready = notify.recv(4096).decode()
        assert ready.startswith("READY=1\nSTATUS=serving on ipc://"), ready
        broker.signal(signal.SIGTERM)
        assert notify.recv(4096) == b"STOPPING=1"
        assert broker.wait(15) == 0


async def test_a_config_file_sets_every_option_and_the_command_line_wins(
        processes: Processes) -> None:
    folder = short_tmpdir()
    (folder / "broker.toml").write_text(
        'heartbeat-ms = 700\nsession_timeout_ms = 4000\ndurability = "batch"\n'
        'max_frame = 65536\nevent_loop = "asyncio"\n')
    shown = plugboard(folder, "broker", "--config", str(folder / "broker.toml"),
                      "--print-config", "--session-timeout-ms", "5000").stdout
    assert "heartbeat_ms = 700" in shown and "session_timeout_ms = 5000" in shown
    assert 'durability = "batch"' in shown and "insecure = false" in shown
    assert 'event_loop = "asyncio"' in shown
    broker = processes.broker(None, "--config", str(folder / "broker.toml"))
    assert "event loop: asyncio" in broker.stderr_path.read_text()
    async with Client(broker.ipc) as client:
        assert client.max_frame == 65536  # from the file
        assert client.heartbeat == 0.2  # BrokerProcess's --heartbeat-ms 200 beats the file
    (folder / "bad.toml").write_text('durability = "sometimes"\n')
    bad = plugboard(folder, "broker", "--config", str(folder / "bad.toml"))
    assert bad.returncode == 1 and "durability must be one of always" in bad.stderr


@pytest.mark.parametrize("args,said", [
    (["--heartbeat-ms", "0"], "--heartbeat-ms must be 10..3600000, got 0"),
    (["--max-frame", "10"], "--max-frame must be 65536..4194304, got 10"),
    (["--max-frame", str(8 * 1024 * 1024)], "--max-frame must be 65536..4194304"),
    (["--peer-queue-bytes", "0"], "--peer-queue-bytes must be 65536.."),
    (["--handshake-ms", "-1"], "--handshake-ms must be 100..600000, got -1"),
    (["--batch-ms", "0"], "--batch-ms must be 1..60000, got 0"),
    (["--heartbeat-ms", "7000"], "session_timeout_ms (6000) must be more than heartbeat_ms"),
    (["--config", "{folder}/broker.toml"], "broker.toml: max_frame must be 65536..4194304"),
])
def test_broker_options_out_of_range_are_refused_before_anything_starts(
        args: list[str], said: str) -> None:
    """A broker that could not even read a hello (max_frame 10) or would end every idle
    session (heartbeat 0) is refused with one line naming the option and its range."""
    folder = short_tmpdir()
    (folder / "broker.toml").write_text("max_frame = 100\n")
    done = plugboard(folder, "broker", *(a.format(folder=folder) for a in args))
    assert done.returncode == 1, done.stderr
    assert said in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert not (folder / "broker.sock").exists()


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_the_broker_keeps_time_on_either_event_loop(processes: Processes, loop: str) -> None:
    """With no traffic at all, only the broker's timer ends a silent session: a raw peer
    says hello and goes quiet, and its tcp connection is closed once its session ended
    (1.5 s). (A timer firing early: test_delivery's test_a_timer_that_fires_early...)"""
    broker = processes.broker(None, "--event-loop", loop)
    assert f"event loop: {loop}" in broker.stderr_path.read_text()
    assert hung_up_after_hello(broker.tcp, 10), \
        f"the silent session's connection stayed open\n{processes.report()}"


@pytest.mark.parametrize(("choice", "runs_on"), [(None, "asyncio"), ("uvloop", "uvloop")])
async def test_a_python_plugin_runs_on_the_loop_it_is_given(
        processes: Processes, broker: BrokerProcess, choice: str | None, runs_on: str) -> None:
    """Plugin.run runs on asyncio's own loop unless given another."""
    processes.plugin("echo.py", "echo", broker, **({"EVENT_LOOP": choice} if choice else {}))
    async with Client(broker.ipc) as client:
        sub = await client.subscribe("echo/echo")
        await processes.until(sub, lambda e: isinstance(e, Change))
        assert (await client.get("echo/loop")).value == runs_on


def test_an_event_loop_that_is_not_installed_is_one_line() -> None:
    folder = short_tmpdir()
    done = subprocess.run(
        [sys.executable, "-c", "import sys; sys.modules['uvloop'] = None; "
         "from plugboard.broker.cli import main; sys.exit(main(sys.argv[1:]))",
         "--state-dir", str(folder), "broker", "--event-loop", "uvloop"],
        capture_output=True, text=True, timeout=20, cwd=ROOT)
    assert done.returncode == 1, done.stderr
    assert "uvloop is not installed here" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr and not (folder / "broker.sock").exists()


@pytest.mark.parametrize("args,said", [
    (["get", "x", "--timeout", "-1"], "--timeout: must be more than 0 seconds, got -1"),
    (["watch", "x", "-C", "-2"], "-C/--count: must be 0 or more, got -2"),
    (["watch", "x", "-W", "soon"], "-W/--wait: 'soon' is not a number of seconds"),
    (["logs", "x", "-n", "abc"], "-n/--lines: 'abc' is not a whole number"),
    (["logs", "x", "-n", "0"], "-n/--lines: must be 1 or more, got 0"),
    (["agent", "--plugins", "--timeout", "0"], "--timeout: must be more than 0 seconds"),
])
def test_numbers_out_of_range_are_usage_errors(args: list[str], said: str) -> None:
    done = plugboard(short_tmpdir(), *args)
    assert done.returncode == 2 and said in done.stderr, done.stderr


async def test_plugins_reread_add_and_remove(processes: Processes) -> None:
    root = short_tmpdir()
    make_plugin(root, "first")
    broker = processes.broker(None, "--plugins", str(root))
    async with Client(broker.ipc) as client:
        first = await client.subscribe("system/plugins/first/state")
        await processes.until(first, lambda e: isinstance(e, Change) and e.value == "ready")
    state = broker.state_dir
    assert "no changes" in plugboard(state, "plugins", "reread").stdout
    make_plugin(root, "second")
    (root / "broken").mkdir()
    (root / "broken" / "plugin.toml").write_text('name = "broken"\n')
    found = plugboard(state, "plugins", "reread")
    assert found.returncode == 1, found  # a problem is reported, and nothing changes
    assert "available: second" in found.stdout and "broken" in found.stdout
    refused = plugboard(state, "plugins", "add", "broken")
    assert refused.returncode == 4 and "version" in refused.stderr, refused
    added = plugboard(state, "plugins", "add", "second")
    assert added.returncode == 0 and "ready true" in added.stdout, added
    rows = {r["name"]: r for r in map(json.loads, plugboard(
        state, "plugins", "--json").stdout.splitlines())}
    assert rows["second"]["state"] == "ready"
    removed = plugboard(state, "plugins", "remove", "first")
    assert removed.returncode == 0 and "step end" in removed.stdout, removed
    async with Client(broker.ipc) as client:
        assert [r["name"] for r in (await client.request("plugins"))["plugins"]] == ["second"]
        assert await client.list("system/plugins/first/#") == []


def on_a_terminal(state: Path, *args: str, env: dict[str, str] | None = None) -> str:
    """What a command prints on a terminal: run on a pty, read to the end."""
    main, secondary = pty.openpty()
    proc = subprocess.Popen([*PLUGBOARD, "--state-dir", str(state), *args], cwd=ROOT,
                            stdin=secondary, stdout=secondary, stderr=secondary,
                            env={**os.environ, "COLUMNS": "160", **(env or {})})
    os.close(secondary)
    output = b""
    try:
        while chunk := os.read(main, 65536):
            output += chunk
    except OSError:  # EIO: the command exited and closed the pty
        pass
    finally:
        os.close(main)
    assert proc.wait(20) == 0, output
    return output.decode(errors="replace")


def test_tables_have_colour_on_a_terminal_only(ready_echo: BrokerProcess) -> None:
    state = ready_echo.state_dir
    coloured = on_a_terminal(state, "ls", "echo/#", env={"TERM": "xterm-256color"})
    assert "\x1b[" in coloured and "echo/setpoint" in coloured
    plain = on_a_terminal(state, "ls", "echo/#", env={"TERM": "xterm-256color",
                                                      "NO_COLOR": "1"})
    assert "echo/setpoint" in plain and "\x1b[3" not in plain  # no colour codes
    piped = plugboard(state, "ls", "echo/#").stdout
    assert "\x1b[" not in piped and piped.splitlines()[0].split()[:2] == ["NAME", "TYPE"]


def test_tab_completes_commands_properties_and_plugins(ready_echo: BrokerProcess) -> None:
    answers = short_tmpdir() / "completions"

    def complete(line: str) -> list[str]:
        env = {**os.environ, "_ARGCOMPLETE": "1", "COMP_LINE": line,
               "COMP_POINT": str(len(line)), "_ARGCOMPLETE_STDOUT_FILENAME": str(answers),
               "PLUGBOARD_STATE_DIR": str(ready_echo.state_dir)}
        subprocess.run(PLUGBOARD, env=env, cwd=ROOT, timeout=20, check=True)
        return answers.read_text().replace("\x0b", " ").split()

    assert "plugins" in complete("plugboard plu")
    assert "echo/setpoint" in complete("plugboard get echo/set")
    assert complete("plugboard watch echo/per") == ["echo/period"]
    hook = plugboard(ready_echo.state_dir, "completion", "bash")
    assert hook.returncode == 0 and "complete" in hook.stdout and "plugboard" in hook.stdout


async def test_watch_carries_on_across_a_broker_restart(processes: Processes) -> None:
    state = short_tmpdir()
    broker = processes.broker(state)
    watching = subprocess.Popen(
        [*PLUGBOARD, "--state-dir", str(state), "watch", "system/broker/instance",
         "-F", "{value}"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert watching.stdout is not None and watching.stderr is not None
        first = await asyncio.to_thread(watching.stdout.readline)
        assert first.strip() == broker.instance
        port = broker.tcp.rsplit(":", 1)[1]
        broker.stop()
        again = processes.broker(state, tcp=f"tcp://127.0.0.1:{port}")
        # The new broker wrote a new admin token; the watch is a client and needs none,
        # and it says in one line on stderr that the connection was lost.
        second = await asyncio.to_thread(watching.stdout.readline)
        assert second.strip() == again.instance
        watching.terminate()
        assert "connection to the broker lost" in watching.stderr.read()
    finally:
        watching.kill()
        watching.wait()
        for stream in (watching.stdout, watching.stderr):
            if stream is not None:
                stream.close()


def test_a_stale_socket_fails_at_once() -> None:
    """A broker that crashed leaves its socket file: nothing listens, say so now."""
    state = short_tmpdir()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as stale:
        stale.bind(str(state / "broker.sock"))  # bound, never listening: a dead broker's
        out = plugboard(state, "get", "x/y")
    assert out.returncode == 3 and "stale socket file" in out.stderr, out


async def test_top_is_a_live_view_on_a_terminal(processes: Processes) -> None:
    root = short_tmpdir()
    make_plugin(root, "shown")
    broker = processes.broker(None, "--plugins", str(root))
    main, secondary = pty.openpty()
    top = subprocess.Popen([*PLUGBOARD, "--state-dir", str(broker.state_dir), "top"], cwd=ROOT,
                           stdin=secondary, stdout=secondary, stderr=secondary,
                           env={**os.environ, "COLUMNS": "160", "TERM": "xterm-256color"})
    os.close(secondary)
    screen = b""
    try:
        async with asyncio.timeout(20):
            while b"ready" not in screen or b"shown" not in screen:
                screen += await asyncio.to_thread(os.read, main, 65536)
        assert b"\x1b[" in screen  # drawn for a terminal: colour and cursor moves
        top.send_signal(signal.SIGINT)
        assert await asyncio.to_thread(top.wait, 10) == 0
    finally:
        top.kill()
        top.wait()
        os.close(main)


def test_an_endpoint_the_broker_cannot_bind_is_one_line() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        endpoint = f"tcp://127.0.0.1:{taken.getsockname()[1]}"
        out = plugboard(short_tmpdir(), "broker", "--endpoint", endpoint, "--insecure")
    assert out.returncode == 1, out
    assert out.stderr.strip().splitlines()[-1] == (
        f"plugboard broker: cannot listen on {endpoint}: Address already in use")


def test_a_key_that_is_neither_text_nor_a_file_says_so(tmp_path: Path) -> None:
    for key in ("notakey", str(tmp_path / "missing.key")):
        out = plugboard(tmp_path / "state", "keys", "allow", key, "--role", "client")
        assert out.returncode == 1, out
        assert out.stderr.strip() == (f"plugboard keys: {key} is neither a Z85 key "
                                      "(40 characters) nor a certificate file")


def test_an_endpoint_zeromq_cannot_use_is_one_line_at_once() -> None:
    """It used to hang: the socket the failed connect made held its context open."""
    for endpoint in ("bogus", "tcp://127.0.0.1", "tcp://127.0.0.1:notaport"):
        started = time.monotonic()
        out = plugboard(short_tmpdir(), "get", "x/y", "--endpoint", endpoint)
        assert out.returncode == 1, out
        assert out.stderr.strip() == (f"plugboard get: cannot connect to {endpoint!r}: "
                                      "Invalid argument; an endpoint is ipc://PATH or "
                                      "tcp://HOST:PORT")
        assert time.monotonic() - started < 10


def test_a_key_that_begins_with_a_dash_is_given_after_two_dashes(tmp_path: Path) -> None:
    """One Z85 key in 85 begins with '-', which argparse reads as an option."""
    while not (public := zmq.curve_keypair()[0].decode()).startswith("-"):
        pass
    misread = plugboard(tmp_path / "state", "keys", "allow", public, "--role", "client")
    assert misread.returncode == 2
    assert misread.stderr.strip().splitlines()[-1] == (
        f"plugboard: {public} begins with '-', so it reads as an option: give it as "
        "--server-key=KEY, or after -- (plugboard keys allow --role client -- KEY)")
    given = plugboard(tmp_path / "state", "keys", "allow", "--role", "client", "--", public)
    assert given.returncode == 0 and f"allowed {public} as client" in given.stdout, given
    as_server = plugboard(tmp_path / "state", "get", "x", "--server-key", public)
    assert as_server.returncode == 2 and "--server-key=KEY" in as_server.stderr
