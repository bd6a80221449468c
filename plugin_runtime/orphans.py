"""What plugins leave behind: descendants that escaped, and a killed broker's leftovers.

A plugin runs in its own process group, but a descendant can leave it (``setsid``, a
double fork) and outlive the plugin. Two things find such processes:

- the **launch token**: every process a plugin starts inherits its environment, and
  with it ``PLUGBOARD_TOKEN``, unique to that launch, unless it clears it;
- the **child subreaper** (Linux): the broker asks to adopt orphans of its descendants,
  so one that escaped and lost its parent becomes the broker's child instead of init's,
  and the broker can end it and reap it.

When the broker itself is SIGKILLed, nothing runs to clean up: the parent-death signal
ends each plugin, not its descendants. So every launch is written to ``launches.json``
in the state directory, and the next broker to start there ends whatever is left of
them before it starts anything.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import signal
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil

log = logging.getLogger(__name__)

LAUNCHES_NAME = "launches.json"
_PR_SET_CHILD_SUBREAPER = 36
_subreaper = False


def become_subreaper() -> bool:
    """Adopt orphaned descendants (Linux only); True if this process now does.

    Only the broker's process calls it: in any other process (a test runner) adopted
    orphans would be that program's surprise to reap.
    """
    global _subreaper
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        _subreaper = libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        _subreaper = False
    return _subreaper


def processes_with_tokens(tokens: set[str]) -> list[psutil.Process]:
    """This user's processes whose environment holds one of these launch tokens."""
    if not tokens:
        return []
    found = []
    me, uid = os.getpid(), os.getuid()
    for proc in psutil.process_iter():
        try:
            if proc.pid == me or proc.uids().real != uid:
                continue
            if proc.environ().get("PLUGBOARD_TOKEN") in tokens:
                found.append(proc)
        except psutil.Error:
            continue
    return found


def kill_all(procs: list[psutil.Process]) -> list[str]:
    """SIGKILL each; returns ``pid (name)`` of those that were still there. Adopted ones
    are reaped later by :func:`reap_adopted`, which knows which pids are plugins."""
    killed = []
    for proc in procs:
        try:
            label = f"{proc.pid} ({proc.name()})"
            proc.send_signal(signal.SIGKILL)
            killed.append(label)
        except psutil.Error:
            continue
    return killed


def reap_adopted(keep: set[int]) -> None:
    """Collect the exit status of adopted orphans that ended, so none stays a zombie.

    Only as a subreaper: otherwise this process's children are all its own Popen
    objects, whose exit codes must not be taken from them. ``keep`` are the plugins'
    own pids, reaped by their PluginProcess.
    """
    if not _subreaper:
        return
    try:
        children = psutil.Process().children()
    except psutil.Error:
        return
    for child in children:
        if child.pid in keep:
            continue
        try:
            if child.status() == psutil.STATUS_ZOMBIE:
                os.waitpid(child.pid, os.WNOHANG)
        except (psutil.Error, ChildProcessError):
            continue


@dataclass(frozen=True, slots=True)
class Launch:
    """One plugin process, as written down for the next broker."""

    name: str
    pid: int
    token: str
    created: float
    """psutil's create_time: a pid reused by another process does not match."""


class LaunchLog:
    """``launches.json``: the plugin processes this broker has running."""

    def __init__(self, state_dir: Path) -> None:
        self.path = Path(state_dir) / LAUNCHES_NAME
        self._launches: dict[str, Launch] = {}

    def add(self, name: str, pid: int, token: str) -> None:
        try:
            created = psutil.Process(pid).create_time()
        except psutil.Error:
            created = 0.0
        self._launches[name] = Launch(name, pid, token, created)
        self._write()

    def remove(self, name: str) -> None:
        if self._launches.pop(name, None) is not None:
            self._write()

    def _write(self) -> None:
        """Best effort: the record only lets the next broker end what a killed one left
        running, so a full disk is logged and the launch goes on."""
        temporary = self.path.with_suffix(".tmp")
        try:
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as file:
                json.dump([asdict(launch) for launch in self._launches.values()], file)
            temporary.replace(self.path)
        except OSError as exc:
            temporary.unlink(missing_ok=True)
            log.warning("cannot record the running plugins in %s (%s): if this broker is "
                        "killed, the next one cannot end what they leave running",
                        self.path, exc.strerror)

    def end_leftovers(self) -> list[str]:
        """End what a previous broker in this state directory left running; log each."""
        try:
            records = json.loads(self.path.read_text())
            launches = [Launch(**record) for record in records]
        except FileNotFoundError:
            return []
        except (OSError, ValueError, TypeError) as exc:
            log.warning("cannot read %s (%s); not looking for leftover plugin processes",
                        self.path, exc)
            return []
        found = {proc.pid: proc for proc in processes_with_tokens(
            {launch.token for launch in launches})}
        for launch in launches:
            try:
                proc = psutil.Process(launch.pid)
                if abs(proc.create_time() - launch.created) < 0.01:
                    found[proc.pid] = proc
            except psutil.Error:
                continue
        killed = kill_all(list(found.values()))
        for label in killed:
            log.warning("ended process %s left running by a previous broker's plugins", label)
        self.path.unlink(missing_ok=True)
        return killed
