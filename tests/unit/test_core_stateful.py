"""Random sequences of declare/set/delete/subscribe/unsubscribe/disconnect against a model.

After every step the datastore must equal the model, and every subscriber must have
received exactly the ordered changes since it subscribed (under ``latest``, writes
within one loop turn collapse to the last one).
"""

from typing import Any

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, consumes, invariant, rule

from plugboard.protocol import RemoteError
from plugboard.protocol.codec import Request, encode
from plugboard.protocol.names import matches

from .harness import REMOVED, Harness

PLUGINS = {"p": b"peer-p", "q": b"peer-q"}
CLIENTS = [b"client-1", b"client-2"]
KEYS = ["k1", "k2", "k3/x"]
PATTERNS = ["#", "p/#", "q/+", "p/k1", "+/k3/#"]


class BrokerModel(RuleBasedStateMachine):
    subs = Bundle("subs")

    def __init__(self) -> None:
        super().__init__()
        self.h = Harness()
        for name, peer in PLUGINS.items():
            self.h.plugin(peer, name)
        for peer in CLIENTS:
            self.h.client(peer)
        self.model: dict[str, Any] = {}
        self.expected: dict[int, list[tuple[str, Any]]] = {}
        self.received: dict[int, list[tuple[str, Any]]] = {}
        self.sub_info: dict[int, tuple[bytes, str, str]] = {}

    # -- helpers --------------------------------------------------------------------------

    def _collect(self) -> None:
        for peer in CLIENTS:
            for note in self.h.notes(peer):
                got = self.received.setdefault(note["sub"], [])
                events = [(self.h.names[i[0]], i[1]) for i in note["items"]]
                events += [(name, REMOVED) for _, name in note.get("removed", [])]
                got.extend(e for e in events if not e[0].startswith("system/"))

    def _notify(self, name: str, value: Any, coalesced_from: int = 0) -> None:
        for sid, (_, pattern, policy) in self.sub_info.items():
            if matches(pattern, name):
                if policy == "all" and coalesced_from:
                    self.expected[sid].extend((name, v) for v in range(coalesced_from, value))
                self.expected[sid].append((name, value))

    def _try(self, peer: bytes, method: str, **params: Any) -> Any:
        try:
            return self.h.call(peer, method, **params)
        except RemoteError as exc:
            return exc

    # -- rules ----------------------------------------------------------------------------

    @rule(plugin=st.sampled_from(sorted(PLUGINS)), key=st.sampled_from(KEYS),
          value=st.none() | st.integers(-5, 5))
    def declare(self, plugin: str, key: str, value: int | None) -> None:
        name = f"{plugin}/{key}"
        params: dict[str, Any] = {"name": name, "type": "int"}
        if value is not None:
            params["value"] = value
        self._try(PLUGINS[plugin], "declare", **params)
        if name not in self.model or value is not None:
            self.model[name] = value
            self._notify(name, value)

    @rule(plugin=st.sampled_from(sorted(PLUGINS)), owner=st.sampled_from(sorted(PLUGINS)),
          key=st.sampled_from(KEYS), value=st.integers(-100, 100))
    def set(self, plugin: str, owner: str, key: str, value: int) -> None:
        name = f"{owner}/{key}"
        result = self._try(PLUGINS[plugin], "set", target=name, value=value)
        if name not in self.model:
            assert isinstance(result, RemoteError) and result.code == "not_found"
        elif plugin != owner:
            assert isinstance(result, RemoteError) and result.code == "forbidden"
        else:
            assert not isinstance(result, RemoteError), result
            self.model[name] = value
            self._notify(name, value)

    @rule(plugin=st.sampled_from(sorted(PLUGINS)), key=st.sampled_from(KEYS))
    def set_twice_in_one_turn(self, plugin: str, key: str) -> None:
        name = f"{plugin}/{key}"
        if name not in self.model:
            return
        for msgid, value in ((90001, 1000), (90002, 1001)):
            self.h.core.receive(PLUGINS[plugin], [encode(Request(msgid, "set", {
                "target": name, "value": value}))])
        self.h.pump()
        self.h.clear(PLUGINS[plugin])
        self.model[name] = 1001
        self._notify(name, 1001, coalesced_from=1000)

    @rule(plugin=st.sampled_from(sorted(PLUGINS)), key=st.sampled_from(KEYS))
    def delete(self, plugin: str, key: str) -> None:
        name = f"{plugin}/{key}"
        result = self._try(PLUGINS[plugin], "delete", target=name)
        if name in self.model:
            assert not isinstance(result, RemoteError), result
            del self.model[name]
            self._notify(name, REMOVED)
        else:
            assert isinstance(result, RemoteError) and result.code == "not_found"

    @rule(plugin=st.sampled_from(sorted(PLUGINS)))
    def disconnect_and_come_back(self, plugin: str) -> None:
        self.h.call(PLUGINS[plugin], "bye")
        for name in [n for n in self.model if n.startswith(plugin + "/")]:
            del self.model[name]
            self._notify(name, REMOVED)
        self.h.plugin(PLUGINS[plugin], plugin)

    @rule(target=subs, client=st.sampled_from(CLIENTS), pattern=st.sampled_from(PATTERNS),
          policy=st.sampled_from(["all", "latest"]))
    def subscribe(self, client: bytes, pattern: str, policy: str) -> int:
        sid = self.h.call(client, "subscribe", pattern=pattern, policy=policy)["sub"]
        self.sub_info[sid] = (client, pattern, policy)
        self.expected[sid] = [(n, v) for n, v in self.model.items() if matches(pattern, n)]
        return sid

    @rule(sid=consumes(subs))
    def unsubscribe(self, sid: int) -> None:
        client = self.sub_info.pop(sid)[0]
        self.h.call(client, "unsubscribe", sub=sid)
        self._collect()
        assert self.received.pop(sid, []) == self.expected.pop(sid)

    # -- invariants -----------------------------------------------------------------------

    @invariant()
    def datastore_equals_model(self) -> None:
        store = {n: p.value for n, p in self.h.core.store.by_name.items()
                 if not n.startswith("system/")}
        assert store == self.model

    @invariant()
    def subscribers_saw_exactly_the_changes(self) -> None:
        self._collect()
        for sid in self.sub_info:
            assert self.received.get(sid, []) == self.expected[sid], self.sub_info[sid]


BrokerModel.TestCase.settings = settings(max_examples=60, stateful_step_count=40,
                                         deadline=None)
TestBrokerModel = BrokerModel.TestCase
