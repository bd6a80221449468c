"""One run of a plugin: its own process group, captured output, stop escalation, stats.

The life cycle uses our own handles (the asyncio subprocess and the process group);
psutil is used only to read figures and to find descendants, and every psutil call
tolerates a process that is already gone.
"""

from __future__ import annotations

import asyncio
import ctypes
import datetime
import enum
import errno
import logging
import os
import signal
import subprocess
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import psutil

from plugboard.sdk._keys import ENV_KEY_FILE, ENV_PUBLIC_KEY, ENV_SECRET_KEY, ENV_SERVER_KEY

from .contract import Contract
from .orphans import kill_all, processes_with_tokens

_PR_SET_PDEATHSIG = 1
CREDENTIAL_VARIABLES = (ENV_KEY_FILE, ENV_PUBLIC_KEY, ENV_SECRET_KEY, ENV_SERVER_KEY,
                        "PLUGBOARD_TOKEN")
LOG_MAX_BYTES = 1024 * 1024
LOG_BACKUPS = 3
LINE_LIMIT = 64 * 1024
"""The longest line of a plugin's output kept whole; a longer one is cut to this."""

log = logging.getLogger(__name__)


def _die_with_parent() -> None:
    """Runs in the child before exec: ask Linux to SIGKILL it when the broker dies."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: the SDK's give-up timer remains
        pass


async def _read_line(stream: asyncio.StreamReader) -> bytes:
    """The next line of output, b"" at its end; one longer than LINE_LIMIT is cut there
    and the rest of it read and dropped."""
    try:
        return await stream.readuntil(b"\n")
    except asyncio.IncompleteReadError as end:  # the last line, with no newline
        return end.partial
    except asyncio.LimitOverrunError as long:
        head = await stream.readexactly(long.consumed)
    while True:
        try:
            await stream.readuntil(b"\n")
            break
        except asyncio.IncompleteReadError:
            break
        except asyncio.LimitOverrunError as more:
            await stream.readexactly(more.consumed)
    return head[:LINE_LIMIT] + b" [cut]\n"


def _stamped(line: bytes, stream: str = "-") -> bytes:
    """A captured line as it is kept and published: local time to the millisecond and
    the stream (O stdout, E stderr, - the runtime's own), then the line."""
    now = datetime.datetime.now().isoformat(timespec="milliseconds")
    return f"{now} {stream} ".encode() + line


class StopStep(enum.StrEnum):
    """How far a stop had to escalate."""

    NONE = "none"
    END = "end"
    """The plugin answered ``end`` (or exited) in time."""
    SIGTERM = "sigterm"
    SIGKILL = "sigkill"


class RotatingLog:
    """Appends a plugin's output to ``NAME.log``, rotating to ``.1`` .. ``.3`` at 1 MiB.
    A write the disk refuses (full) drops those lines, said once in the broker's log and
    once in the file when it takes lines again: the plugin's pipe is read on regardless,
    or the plugin would block on its next write."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(path.parent, 0o700)  # plugins' output may hold secrets: owner only
        self._file = self._open()
        self.dropped = 0
        """Lines not written since the disk last refused one."""

    def _open(self) -> BinaryIO:
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        os.fchmod(fd, 0o600)
        # Unbuffered: each line is written at once anyway, and a refused write leaves
        # nothing behind in a buffer for the next one (or for close) to fail on.
        return os.fdopen(fd, "ab", buffering=0)

    def write(self, data: bytes) -> None:
        try:
            if self.dropped:
                self._append(_stamped(f"--- {self.dropped} line(s) not kept: "
                                      "the disk refused them\n".encode()))
                self.dropped = 0
            self._append(data)
        except OSError as exc:
            if not self.dropped:
                log.warning("%s: %s; the plugin's output is not kept until it can be",
                            self.path, exc.strerror)
            self.dropped += 1

    def _append(self, data: bytes) -> None:
        if self._file.closed:  # a rotation the disk refused halfway
            self._file = self._open()
        if self._file.tell() + len(data) > LOG_MAX_BYTES:
            self._file.close()
            for index in range(LOG_BACKUPS - 1, 0, -1):
                older = self.path.with_name(f"{self.path.name}.{index}")
                if older.exists():
                    older.replace(self.path.with_name(f"{self.path.name}.{index + 1}"))
            self.path.replace(self.path.with_name(f"{self.path.name}.1"))
            self._file = self._open()
        view = memoryview(data)
        while view:  # a write the disk could take only part of, then the rest (or raise)
            written = self._file.write(view)
            if not written:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            view = view[written:]

    def close(self) -> None:
        self._file.close()


class PluginProcess:
    """Popen-shaped: ``spawn``, ``poll``, ``wait``, ``terminate``, ``kill``, ``stop``.

    Its exit is watched through a pidfd, apart from its output pipes: a descendant that
    keeps stdout open (a daemon that double-forked) must not keep ``wait`` or ``stop``
    from returning, as it would with asyncio's subprocess, which waits for both.
    """

    def __init__(self, contract: Contract, *, endpoint: str, token: str, log_path: Path,
                 env: dict[str, str] | None = None) -> None:
        self.contract = contract
        self.endpoint = endpoint
        self.token = token
        self.env = env or {}
        """More settings for the process (its per-launch CURVE keys on tcp)."""
        self.log = RotatingLog(log_path)
        self.stderr_lines: deque[str] = deque(maxlen=20)
        self.proc: subprocess.Popen[bytes] | None = None
        self.stop_step = StopStep.NONE
        self.descendants: list[int] = []
        """Last known descendants, so grandchildren can be killed after the plugin died."""
        self.launch_key: str | None = None
        """The public half of this launch's CURVE pair, revoked when it ends."""
        self.on_output: Callable[[bytes], None] = lambda _line: None
        """Called with each line of output as it is captured (the agent publishes it)."""
        self.escaped: list[str] = []
        """``pid (name)`` of descendants found outside the process group and killed."""
        self._readers: list[asyncio.Task[None]] = []
        self._pipes: list[asyncio.ReadTransport] = []
        self._exited: asyncio.Future[int] | None = None
        self._ps: psutil.Process | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    async def spawn(self) -> None:
        run = self.contract.run
        # Settings go through the environment, never the command line.
        # The agent's own credentials are never inherited: a plugin gets its launch's.
        inherited = {k: v for k, v in os.environ.items() if k not in CREDENTIAL_VARIABLES}
        env = {**inherited, **run.env, "PLUGBOARD_ENDPOINT": self.endpoint,
               "PLUGBOARD_NAME": self.contract.name, "PLUGBOARD_TOKEN": self.token, **self.env}
        self.log.write(_stamped(f"--- starting {' '.join(self.contract.argv())}\n".encode()))
        loop = asyncio.get_running_loop()
        self.proc = proc = subprocess.Popen(
            self.contract.argv(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, cwd=run.cwd, env=env, start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        self._exited = loop.create_future()
        self._watch_exit(proc)
        assert proc.stdout is not None and proc.stderr is not None
        for pipe, is_stderr in ((proc.stdout, False), (proc.stderr, True)):
            reader = asyncio.StreamReader(limit=LINE_LIMIT)
            transport, _ = await loop.connect_read_pipe(
                lambda r=reader: asyncio.StreamReaderProtocol(r), pipe)  # type: ignore[misc]
            self._pipes.append(transport)
            self._readers.append(asyncio.create_task(self._capture(reader, is_stderr)))
        try:
            self._ps = psutil.Process(proc.pid)
        except psutil.Error:
            self._ps = None

    def _watch_exit(self, proc: subprocess.Popen[bytes]) -> None:
        """Resolve ``_exited`` when the process ends: a pidfd where Linux has one, else
        a 50 ms check of waitpid."""
        loop = asyncio.get_running_loop()

        def check() -> bool:
            code = proc.poll()
            if code is None:
                return False
            if self._exited is not None and not self._exited.done():
                self._exited.set_result(code)
            return True

        try:
            pidfd = os.pidfd_open(proc.pid)
        except (AttributeError, OSError):
            def again() -> None:
                if not check():
                    loop.call_later(0.05, again)
            again()
            return

        def readable() -> None:
            if check():
                loop.remove_reader(pidfd)
                os.close(pidfd)

        loop.add_reader(pidfd, readable)

    async def _capture(self, stream: asyncio.StreamReader, is_stderr: bool) -> None:
        """Read the plugin's output to its end, whatever it holds: a pipe nobody reads
        would block the plugin at its next write."""
        while True:
            try:
                line = await _read_line(stream)
            except OSError:  # the pipe closed under us
                return
            if not line:
                return
            stamped = _stamped(line, "E" if is_stderr else "O")
            self.log.write(stamped)
            self.on_output(stamped)
            if is_stderr:
                self.stderr_lines.append(line.decode(errors="replace").rstrip())

    def stderr_tail(self) -> str:
        return "\n".join(self.stderr_lines)

    def last_words(self) -> str:
        """The line of stderr that says what went wrong: the last one that is not part
        of a traceback's frames (for Python, the exception itself)."""
        for line in reversed(self.stderr_lines):
            if line.strip() and not line[0].isspace() and not line.startswith("Traceback"):
                return line.strip()[:200]
        return ""

    def poll(self) -> int | None:
        return self.proc.returncode if self.proc else None

    async def wait(self) -> int:
        """The exit status, once the process has exited; output still in its pipes is
        read for up to half a second, then the pipes are closed whoever holds them."""
        assert self._exited is not None
        code = await asyncio.shield(self._exited)
        if self._readers:
            await asyncio.wait(self._readers, timeout=0.5)
        self._close_pipes()
        return code

    def _close_pipes(self) -> None:
        for reader in self._readers:
            reader.cancel()
        for transport in self._pipes:
            transport.close()

    def _signal_group(self, signum: int) -> None:
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signum)
        except (ProcessLookupError, PermissionError):
            pass

    def terminate(self) -> None:
        self._signal_group(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL to the group, to every descendant seen, and to every process that
        still carries this launch's token: also those that left the group."""
        self._signal_group(signal.SIGKILL)
        for pid in self.descendants:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        if self.proc is None:
            return
        outside = []
        for proc in processes_with_tokens({self.token}):
            try:
                if proc.pid != self.proc.pid and os.getpgid(proc.pid) != self.proc.pid:
                    outside.append(proc)
            except OSError:
                continue
        self.escaped += kill_all(outside)

    def remember_descendants(self) -> None:
        if self._ps is None:
            return
        try:
            found = [c.pid for c in self._ps.children(recursive=True)]
        except psutil.Error:
            return
        self.descendants = sorted(set(self.descendants) | set(found))

    async def stop(self, ask_to_end: Callable[[], bool | None], timeout: float) -> StopStep:
        """Escalate: ``ask_to_end()`` (the ``end`` request; it returns False when there
        is no session to ask), then SIGTERM, then SIGKILL, each given ``timeout``
        seconds. Returns the step that made it exit. Bounded: whatever descendants do,
        it returns within about three timeouts."""
        if self.proc is None or self._exited is None or self._exited.done():
            self.kill()  # grandchildren of an exited plugin
            return self.stop_step
        self.remember_descendants()
        steps = [(StopStep.END, ask_to_end), (StopStep.SIGTERM, self.terminate),
                 (StopStep.SIGKILL, self.kill)]
        for step, action in steps:
            self.stop_step = step
            if action() is False:  # nobody to ask (no session yet): no use waiting
                continue
            try:
                await asyncio.wait_for(asyncio.shield(self._exited), timeout)
                break
            except TimeoutError:
                continue
        self.kill()  # whatever is left of the group and its descendants
        if self._exited.done():
            await self.wait()
        else:  # not even SIGKILL ended it (uninterruptible sleep): stop waiting
            self._close_pipes()
        return self.stop_step

    def stats(self) -> dict[str, Any]:
        """cpu_percent, memory_rss, threads, open_files; empty if the process is gone."""
        if self._ps is None:
            return {}
        try:
            with self._ps.oneshot():
                figures = {"cpu_percent": float(self._ps.cpu_percent()),
                           "memory_rss": int(self._ps.memory_info().rss),
                           "threads": int(self._ps.num_threads())}
                try:
                    figures["open_files"] = len(self._ps.open_files())
                except psutil.AccessDenied:
                    figures["open_files"] = -1
        except psutil.Error:
            return {}
        self.remember_descendants()
        return figures

    def close(self) -> None:
        self._close_pipes()
        self.log.close()
