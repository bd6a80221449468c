"""PROTOCOL.md is the authority: its version and tables must match the code."""

import re
from pathlib import Path

from plugboard import sdk
from plugboard.protocol import ERROR_CODES, PROTOCOL_VERSION, ValueType, limits

SPEC = (Path(__file__).parents[2] / "protocol/PROTOCOL.md").read_text()


def test_spec_version_matches_code() -> None:
    match = re.search(r"^Protocol version: (\d+)$", SPEC, re.MULTILINE)
    assert match, "PROTOCOL.md must state 'Protocol version: N' on a line of its own"
    assert int(match.group(1)) == PROTOCOL_VERSION


def test_every_error_code_is_in_the_spec() -> None:
    for code in ERROR_CODES:
        assert f"`{code}`" in SPEC, f"error code {code} is missing from PROTOCOL.md"


def test_every_value_type_is_in_the_spec() -> None:
    for vtype in ValueType:
        assert f"`{vtype.value}`" in SPEC


def test_limits_in_the_spec() -> None:
    assert f"{limits.MAX_DEPTH}" in SPEC and "4 MiB" in SPEC
    assert f"{limits.MAX_NAME_BYTES}" in SPEC and f"{limits.SNAPSHOT_CHUNK}" in SPEC


def test_methods_in_the_spec() -> None:
    from plugboard.broker.core import BrokerCore

    for method in list(BrokerCore()._methods) + ["hello", "init", "end"]:
        assert f"### `{method}`" in SPEC, f"method {method} is not specified"


def test_sdk_public_surface_is_pinned() -> None:
    assert sorted(sdk.__all__) == sorted([
        "Batch", "BatchEvent", "CallFailed", "Change", "Client", "Conflict",
        "ConnectionFailed", "Duration", "Gap", "InvalidRequest", "InvalidValue", "KeyRefused",
        "Listener", "Message", "NotAllowed", "NotFound",
        "PlugboardError", "Plugin", "PropertyInfo", "Reconnected", "RemoteError", "Removed",
        "RequestTimeout", "Subscription", "Synced", "SyncClient", "SyncSubscription",
        "Timestamp",
    ])
