"""One run of a plugin: its own process group, captured output, stop escalation, stats.

The life cycle uses our own handles (the asyncio subprocess and the process group);
psutil is used only to read figures and to find descendants, and every psutil call
tolerates a process that is already gone.
"""

from __future__ import annotations

import asyncio
import ctypes
import enum
import os
import signal
from collections import deque
from pathlib import Path
from typing import Any, BinaryIO

import psutil

from .contract import Contract

_PR_SET_PDEATHSIG = 1
LOG_MAX_BYTES = 1024 * 1024
LOG_BACKUPS = 3


def _die_with_parent() -> None:
    """Runs in the child before exec: ask Linux to SIGKILL it when the broker dies."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: the SDK's give-up timer remains
        pass


class StopStep(enum.StrEnum):
    """How far a stop had to escalate."""

    NONE = "none"
    END = "end"
    """The plugin answered ``end`` (or exited) in time."""
    SIGTERM = "sigterm"
    SIGKILL = "sigkill"


class RotatingLog:
    """Appends a plugin's output to ``NAME.log``, rotating to ``.1`` .. ``.3`` at 1 MiB."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(path.parent, 0o700)  # plugins' output may hold secrets: owner only
        self._file = self._open()

    def _open(self) -> BinaryIO:
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        os.fchmod(fd, 0o600)
        return os.fdopen(fd, "ab")

    def write(self, data: bytes) -> None:
        if self._file.tell() + len(data) > LOG_MAX_BYTES:
            self._file.close()
            for index in range(LOG_BACKUPS - 1, 0, -1):
                older = self.path.with_name(f"{self.path.name}.{index}")
                if older.exists():
                    older.replace(self.path.with_name(f"{self.path.name}.{index + 1}"))
            self.path.replace(self.path.with_name(f"{self.path.name}.1"))
            self._file = self._open()
        self._file.write(data)
        self._file.flush()

    def close(self) -> None:
        self._file.close()


class PluginProcess:
    """Popen-shaped: ``spawn``, ``poll``, ``wait``, ``terminate``, ``kill``, ``stop``."""

    def __init__(self, contract: Contract, *, endpoint: str, token: str, log_path: Path) -> None:
        self.contract = contract
        self.endpoint = endpoint
        self.token = token
        self.log = RotatingLog(log_path)
        self.stderr_lines: deque[str] = deque(maxlen=20)
        self.proc: asyncio.subprocess.Process | None = None
        self.stop_step = StopStep.NONE
        self.descendants: list[int] = []
        """Last known descendants, so grandchildren can be killed after the plugin died."""
        self._readers: list[asyncio.Task[None]] = []
        self._ps: psutil.Process | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    async def spawn(self) -> None:
        run = self.contract.run
        # Settings go through the environment, never the command line.
        env = {**os.environ, **run.env, "PLUGBOARD_ENDPOINT": self.endpoint,
               "PLUGBOARD_NAME": self.contract.name, "PLUGBOARD_TOKEN": self.token}
        self.log.write(f"--- starting {' '.join(self.contract.argv())}\n".encode())
        self.proc = await asyncio.create_subprocess_exec(
            *self.contract.argv(), stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=run.cwd,
            env=env, start_new_session=True, preexec_fn=_die_with_parent,
        )
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self._readers = [asyncio.create_task(self._capture(self.proc.stdout, False)),
                         asyncio.create_task(self._capture(self.proc.stderr, True))]
        try:
            self._ps = psutil.Process(self.proc.pid)
        except psutil.Error:
            self._ps = None

    async def _capture(self, stream: asyncio.StreamReader, is_stderr: bool) -> None:
        while line := await stream.readline():
            self.log.write(line)
            if is_stderr:
                self.stderr_lines.append(line.decode(errors="replace").rstrip())

    def stderr_tail(self) -> str:
        return "\n".join(self.stderr_lines)

    def poll(self) -> int | None:
        return self.proc.returncode if self.proc else None

    async def wait(self) -> int:
        assert self.proc is not None
        code = await self.proc.wait()
        for reader in self._readers:  # the pipes close when the process and its group do
            try:
                await asyncio.wait_for(asyncio.shield(reader), 1.0)
            except (TimeoutError, asyncio.CancelledError):
                reader.cancel()
        return code

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
        """SIGKILL to the group and to every descendant seen, also those that left it."""
        self._signal_group(signal.SIGKILL)
        for pid in self.descendants:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass

    def remember_descendants(self) -> None:
        if self._ps is None:
            return
        try:
            found = [c.pid for c in self._ps.children(recursive=True)]
        except psutil.Error:
            return
        self.descendants = sorted(set(self.descendants) | set(found))

    async def stop(self, ask_to_end: Any, timeout: float) -> StopStep:
        """Escalate: ``ask_to_end()`` (the ``end`` request), then SIGTERM, then SIGKILL,
        each given ``timeout`` seconds. Returns the step that made it exit."""
        if self.proc is None or self.proc.returncode is not None:
            self.kill()  # grandchildren of an exited plugin
            return self.stop_step
        self.remember_descendants()
        steps = [(StopStep.END, ask_to_end), (StopStep.SIGTERM, self.terminate),
                 (StopStep.SIGKILL, self.kill)]
        for step, action in steps:
            self.stop_step = step
            action()
            try:
                await asyncio.wait_for(asyncio.shield(self.proc.wait()), timeout)
                break
            except TimeoutError:
                continue
        self.kill()  # whatever is left of the group and its descendants
        await self.wait()
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
        for reader in self._readers:
            reader.cancel()
        self.log.close()
