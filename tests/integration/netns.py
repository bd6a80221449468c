"""Hosts in Linux network namespaces, for tests that need a real network between a
broker and its agents.

Each host is a namespace with one veth into a "switch" namespace holding a bridge (a
fresh namespace: no firewall rules of the machine's own apply). The test's process
gets a veth into the switch too, so it reaches every host by address without being
one. Cutting a host's link is ``ip link set ... down`` on its side.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from dataclasses import dataclass, field

from .processes import cannot_run


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=10)


@dataclass
class Host:
    name: str
    namespace: str
    address: str
    device: str

    def exec_prefix(self) -> tuple[str, ...]:
        """Prefix to run a command on this host (``ip netns exec`` execs it: the pid is
        the command's own)."""
        return ("ip", "netns", "exec", self.namespace)

    def link(self, up: bool) -> None:
        _ip("-n", self.namespace, "link", "set", self.device, "up" if up else "down")


@dataclass
class Network:
    """Hosts on one /24; remove() takes every namespace and link away again."""

    tag: str = field(default_factory=lambda: secrets.token_hex(3))
    subnet: str = field(default_factory=lambda: f"10.{secrets.randbelow(200) + 20}."
                                                f"{secrets.randbelow(250) + 1}")
    hosts: dict[str, Host] = field(default_factory=dict)
    namespaces: list[str] = field(default_factory=list)

    @property
    def switch(self) -> str:
        return f"pbsw-{self.tag}"

    def start(self) -> None:
        self._namespace(self.switch)
        _ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.switch, "link", "set", "br0", "up")
        # The test's own leg: address .254 in the root namespace.
        self._plug(None, f"pbt{self.tag}", f"{self.subnet}.254")

    def add(self, name: str) -> Host:
        index = len(self.hosts) + 1
        namespace = f"pb-{self.tag}-{name}"
        self._namespace(namespace)
        _ip("-n", namespace, "link", "set", "lo", "up")
        device = f"pb{self.tag}{index}"
        address = f"{self.subnet}.{index}"
        self._plug(namespace, device, address)
        host = Host(name, namespace, address, device)
        self.hosts[name] = host
        return host

    def _namespace(self, name: str) -> None:
        _ip("netns", "add", name)
        self.namespaces.append(name)

    def _plug(self, namespace: str | None, device: str, address: str) -> None:
        """A veth pair: ``device`` in ``namespace`` (None: here), its peer on the bridge."""
        peer = f"{device}s"
        _ip("link", "add", device, "type", "veth", "peer", "name", peer)
        _ip("link", "set", peer, "netns", self.switch)
        _ip("-n", self.switch, "link", "set", peer, "master", "br0")
        _ip("-n", self.switch, "link", "set", peer, "up")
        if namespace is not None:
            _ip("link", "set", device, "netns", namespace)
        where = ("-n", namespace) if namespace is not None else ()
        _ip(*where, "addr", "add", f"{address}/24", "dev", device)
        _ip(*where, "link", "set", device, "up")

    def remove(self) -> None:
        subprocess.run(["ip", "link", "del", f"pbt{self.tag}"], capture_output=True)
        for namespace in reversed(self.namespaces):
            subprocess.run(["ip", "netns", "del", namespace], capture_output=True)


def network_or_skip() -> Network:
    """A started Network, or a skip saying why none can be made (a failure under
    CI=true, where the suite must run everything)."""
    why = None
    if shutil.which("ip") is None:
        why = "the ip command (iproute2) is not installed"
    elif os.geteuid() != 0:
        why = "network namespaces need root"
    network = Network()
    if why is None:
        try:
            network.start()
            return network
        except (subprocess.CalledProcessError, OSError) as exc:
            network.remove()
            detail = getattr(exc, "stderr", "") or exc
            why = f"cannot make network namespaces here: {detail}"
    cannot_run(why)
