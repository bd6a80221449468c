"""The agent role in the broker core: registration, credentials, reports, routing."""

from typing import Any

import pytest

from plugboard.protocol import RemoteError
from plugboard.protocol.codec import Request, Response, encode

from .harness import REMOVED, Harness

AGENT, OTHER, ADMIN, PLUGIN, WATCHER = b"agent", b"agent-2", b"admin", b"plugin", b"watch"
CONTRACT = {"name": "m", "version": "1.2", "provides": ["cap"],
            "exports": [{"pattern": "m/+", "type": "int"}],
            "methods": [{"name": "add", "params": {"a": "int"}, "result": "int"}],
            "config": {"answer": 42}}


def agent_hello(h: Harness, peer: bytes = AGENT, name: str = "host-a", **extra: Any) -> Any:
    plugins = extra.pop("plugins", [{"contract": CONTRACT, "token": "tok"}])
    return h.client(peer, role="agent", name=name, token="secret", plugins=plugins, **extra)


def error_of(h: Harness, peer: bytes, method: str, **params: object) -> RemoteError:
    with pytest.raises(RemoteError) as caught:
        h.call(peer, method, **params)
    return caught.value


@pytest.fixture
def h() -> Harness:
    harness = Harness(allow_unmanaged_plugins=False)
    agent_hello(harness)
    harness.client(ADMIN, role="admin", token="secret")
    return harness


def test_an_agent_needs_the_admin_token() -> None:
    h = Harness()
    with pytest.raises(RemoteError) as caught:
        h.client(AGENT, role="agent", name="host-a")
    assert caught.value.code == "unauthorized"
    with pytest.raises(RemoteError) as caught:
        h.client(AGENT, role="agent", name="bad name!", token="secret")
    assert caught.value.code == "invalid_name"


def test_registration_publishes_the_contract_and_host(h: Harness) -> None:
    assert h.call(ADMIN, "get", target="system/plugins/m/host")["value"] == "host-a"
    assert h.call(ADMIN, "get", target="system/plugins/m/contract/provides")["value"] == \
        ["cap"]
    (row,) = h.call(ADMIN, "plugins")["plugins"]
    assert row["name"] == "m" and row["host"] == "host-a" and row["version"] == "1.2"


def test_the_plugin_gets_its_contract_config_and_is_held_to_its_exports(h: Harness) -> None:
    h.call(PLUGIN, "hello", versions=[1], role="plugin", name="m", token="tok")
    (init,) = h.take_requests(PLUGIN, "init")
    assert init.params["config"] == {"answer": 42}
    h.core.receive(PLUGIN, [encode(Response(init.msgid, None, {}))])
    h.pump()
    assert h.notes(AGENT, "plugin.ready") == [{"name": "m"}]
    h.call(PLUGIN, "declare", name="m/x", type="int", value=1)
    assert error_of(h, PLUGIN, "declare", name="m/x/y", type="int").code == \
        "contract_violation"
    h.call(PLUGIN, "bye")
    assert h.notes(AGENT, "plugin.ended") == [{"name": "m", "reason": "bye"}]


def test_a_second_agent_cannot_claim_a_managed_plugin(h: Harness) -> None:
    with pytest.raises(RemoteError) as caught:
        agent_hello(h, OTHER, name="host-b")
    assert caught.value.code == "name_taken" and "host-a" in caught.value.message
    assert OTHER not in h.core.sessions
    err = error_of(h, AGENT, "agent.status", name="nope", figures={})
    assert err.code == "not_found"


def test_an_agent_that_reconnects_takes_its_plugins_along(h: Harness) -> None:
    agent_hello(h, OTHER, name="host-a")  # same agent, new connection
    assert AGENT not in h.core.sessions
    assert h.core.agents.managed["m"].agent.peer == OTHER


def test_status_reports_become_read_only_system_properties(h: Harness) -> None:
    h.call(AGENT, "agent.status", name="m", figures={"state": "ready", "pid": 12})
    assert h.call(ADMIN, "get", target="system/plugins/m/pid")["value"] == 12
    assert error_of(h, AGENT, "agent.status", name="m", figures={"pid": "x"}).code == \
        "type_mismatch"
    assert error_of(h, AGENT, "agent.status", name="m", figures={"nope": 1}).code == \
        "invalid_params"
    assert error_of(h, ADMIN, "set", target="system/plugins/m/pid", value=1).code == \
        "forbidden"
    assert error_of(h, ADMIN, "agent.status", name="m", figures={}).code == "forbidden"


def test_when_the_agent_goes_its_plugins_sessions_and_properties_go(h: Harness) -> None:
    h.call(WATCHER, "hello", versions=[1], role="client")
    h.call(WATCHER, "subscribe", pattern="system/plugins/m/#")
    h.changes(WATCHER)
    h.call(PLUGIN, "hello", versions=[1], role="plugin", name="m", token="tok")
    h.call(AGENT, "bye")
    assert PLUGIN not in h.core.sessions
    removed = {name for name, value in h.changes(WATCHER) if value is REMOVED}
    assert "system/plugins/m/host" in removed
    assert h.call(ADMIN, "plugins")["plugins"] == []
    assert error_of(h, b"late", "hello", versions=[1], role="plugin", name="m",
                    token="tok").code == "unauthorized"


def test_control_requests_are_routed_to_the_managing_agent(h: Harness) -> None:
    h.core.receive(ADMIN, [encode(Request(7, "plugins.stop", {"name": "m"}))])
    h.pump()
    (routed,) = h.take_requests(AGENT, "plugins.stop")
    assert routed.params == {"name": "m"}
    h.core.receive(AGENT, [encode(Response(routed.msgid, None, {"step": "end"}))])
    h.pump()
    reply = [m for m in h.inbox[ADMIN] if isinstance(m, Response) and m.msgid == 7]
    assert reply and reply[0].result == {"step": "end"}
    assert error_of(h, ADMIN, "plugins.start", name="zz").code == "not_found"
    h.call(b"c", "hello", versions=[1], role="client")
    assert error_of(h, b"c", "plugins.stop", name="m").code == "forbidden"


def test_registering_a_name_ends_the_session_of_a_plugin_started_by_hand() -> None:
    h = Harness()  # unmanaged plugins allowed
    h.plugin(PLUGIN, "m")
    agent_hello(h)
    assert PLUGIN not in h.core.sessions
    h.call(PLUGIN, "hello", versions=[1], role="plugin", name="m", token="tok")


def test_plugin_output_reaches_admin_listeners_only(h: Harness) -> None:
    h.call(WATCHER, "hello", versions=[1], role="client")
    h.call(WATCHER, "listen", pattern="system/logs/#")
    h.call(ADMIN, "listen", pattern="system/logs/#")
    assert h.call(AGENT, "publish", topic="system/logs/m", payload=b"secret\n") == {
        "delivered": 1}
    assert [m["payload"] for m in h.notes(ADMIN, "message")] == [b"secret\n"]
    assert h.notes(WATCHER, "message") == []


def test_a_registered_plugin_has_a_state_before_its_agent_reports_one(h: Harness) -> None:
    assert h.call(ADMIN, "get", target="system/plugins/m/state")["value"] == "registered"
    h.call(AGENT, "agent.status", name="m", figures={"state": "starting"})
    assert h.call(ADMIN, "get", target="system/plugins/m/state")["value"] == "starting"


@pytest.mark.parametrize("plugins,code,said", [
    ([{"contract": {"name": "n", "exports": [{"pattern": "zz/+", "type": "int"}]}}],
     "invalid_params", "exports[0].pattern 'zz/+' is outside the plugin's namespace n/"),
    ([{"contract": {"name": "n", "exports": [{"pattern": "n/#/x", "type": "int"}]}}],
     "invalid_pattern", "contract of 'n': exports[0]: pattern 'n/#/x'"),
    ([{"contract": {"name": "n", "exports": [{"pattern": "n/+", "type": "str", "min": 1}]}}],
     "invalid_params", "contract of 'n': exports[0]: min applies to"),
    ([{"contract": {"name": "n", "version": 3}}], "invalid_params",
     "contract of 'n': version must be a string"),
    ([{"contract": {"name": "n"}}, {"contract": {"name": "n"}}], "invalid_params",
     "plugin 'n' is registered twice in one request"),
    ([{"contract": {"name": "n"}, "key": "nonsense"}], "invalid_params",
     "key must be a 40-character Z85 public key"),
])
def test_a_malformed_registration_says_what_and_registers_nothing(
        h: Harness, plugins: list[Any], code: str, said: str) -> None:
    err = error_of(h, AGENT, "agent.register", plugins=[{"contract": {"name": "k"}}, *plugins])
    assert err.code == code and said in err.message, err
    assert "k" not in h.core.agents.managed and "n" not in h.core.agents.managed


def test_reports_of_another_shape_are_refused(h: Harness) -> None:
    err = error_of(h, AGENT, "agent.status", name="m", figures={"state": "dancing"})
    assert err.code == "invalid_params" and "'dancing' is not one of registered" in err.message
    err = error_of(h, AGENT, "agent.status", name="m", figures={"pid": "x"})
    assert err.message.startswith("figure 'pid': expected int")
    err = error_of(h, AGENT, "agent.exited", name="m", reason=5)
    assert err.code == "invalid_params" and "reason must be a string" in err.message


def test_the_states_the_broker_takes_are_the_runtime_s() -> None:
    from plugboard.broker.agents import REGISTERED, STATES
    from plugboard.runtime.supervisor import PluginState
    assert set(STATES) == {s.value for s in PluginState} | {REGISTERED}


@pytest.mark.parametrize("method,params,said", [
    ("plugins.start", {}, "plugins.start needs name"),
    ("plugins.start", {"name": 5}, "name must be a string, got 5"),
    ("plugins.stop", {"name": "m", "force": "yes"}, "force must be true or false"),
    ("plugins.logs", {"name": "m", "lines": "x"}, "lines must be an int"),
    ("plugins.logs", {"name": "m", "lines": 0}, "lines must be 1 or more, got 0"),
    ("plugins.add", {}, "plugins.add needs name"),
    ("plugins.reread", {"host": 5}, "host must be a string, got 5"),
])
def test_a_routed_request_of_another_shape_is_refused_before_the_agent(
        h: Harness, method: str, params: dict[str, Any], said: str) -> None:
    err = error_of(h, ADMIN, method, **params)
    assert err.code == "invalid_params" and said in err.message, err
    assert h.take_requests(AGENT, method) == []
