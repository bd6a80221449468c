"""Contract parsing and checking: every broken manifest is reported with file, field, reason."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from plugboard.runtime.contract import (
    check_contracts,
    dependents,
    load_contract,
    replacement_problems,
    start_order,
)

ROOT = Path(__file__).parents[2]

GOOD = """
name = "demo"
version = "1.0"
protocol = [1]
description = "d"
provides = ["cap"]

[run]
command = ["{python}", "{dir}/plugin.py"]

[[exports]]
pattern = "demo/+"
type = "float"
min = 0
"""


def write(tmp_path: Path, text: str, folder: str = "demo") -> Path:
    directory = tmp_path / folder
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "plugin.toml").write_text(textwrap.dedent(text))
    return directory


def test_a_good_contract(tmp_path: Path) -> None:
    contract, problems = load_contract(write(tmp_path, GOOD))
    assert problems == [] and contract is not None
    assert contract.name == "demo" and contract.protocol == (1,)
    spec = contract.spec()
    assert spec.export_for("demo/x") is not None and spec.export_for("demo/x/y") is None
    assert contract.argv()[1].endswith("demo/plugin.py")


BROKEN = [
    ("missing name", GOOD.replace('name = "demo"\n', ""), "name", "missing obligatory clause"),
    ("missing version", GOOD.replace('version = "1.0"\n', ""), "version",
     "missing obligatory clause"),
    ("missing protocol", GOOD.replace("protocol = [1]\n", ""), "protocol",
     "missing obligatory clause"),
    ("unsupported protocol", GOOD.replace("protocol = [1]", "protocol = [9]"), "protocol",
     "unsupported protocol [9]; this broker speaks [1]"),
    ("bad name", GOOD.replace('"demo"', '"Demo X"', 1), "name", "must match"),
    ("version not a string", GOOD.replace('version = "1.0"', "version = 1"), "version",
     "must be str, got int"),
    ("no command", GOOD.replace('command = ["{python}", "{dir}/plugin.py"]', ""),
     "run.command", "missing obligatory clause"),
    ("bad restart", GOOD.replace("[run]\n", '[run]\nrestart = "sometimes"\n'), "run.restart",
     "must be one of never, on-failure, always"),
    ("unknown type", GOOD.replace('type = "float"', 'type = "complex"'), "exports[0].type",
     "unknown type 'complex'"),
    ("malformed pattern", GOOD.replace('"demo/+"', '"demo/#/x"'), "exports[0].pattern",
     "'#' must be last"),
    ("pattern outside namespace", GOOD.replace('"demo/+"', '"other/+"'), "exports[0].pattern",
     "outside the plugin's namespace demo/"),
    ("min on a string", GOOD.replace('type = "float"', 'type = "str"'), "exports[0]",
     "min applies to int, float and duration"),
    ("negative timeout", GOOD.replace("[run]\n", "[run]\nstop_timeout = -1\n"),
     "run.stop_timeout", "must be positive"),
    ("not toml", "name = ", "-", "not valid TOML"),
    ("callable_by no one", GOOD + '[[methods]]\nname = "m"\ncallable_by = "every one"\n',
     "methods[0].callable_by", "'every one' is not a plugin name, plugins, clients or *"),
    ("writable_by no one",
     GOOD.replace('type = "float"', 'type = "float"\nwritable_by = ["Kitchen"]'), "exports[0]",
     "writable_by: 'Kitchen' is not a plugin name, plugins, clients or *"),
]


@pytest.mark.parametrize("text,field,reason", [b[1:] for b in BROKEN], ids=[b[0] for b in BROKEN])
def test_broken_manifests(tmp_path: Path, text: str, field: str, reason: str) -> None:
    directory = write(tmp_path, text)
    contract, problems = load_contract(directory)
    assert contract is None
    assert any(p.field == field and reason in p.reason for p in problems), problems
    assert all(p.file == str(directory / "plugin.toml") for p in problems)


def test_all_problems_are_reported_at_once(tmp_path: Path) -> None:
    text = GOOD.replace('version = "1.0"\n', "").replace("protocol = [1]", "protocol = [9]")
    _, problems = load_contract(write(tmp_path, text))
    assert {p.field for p in problems} == {"version", "protocol"}


def test_missing_file(tmp_path: Path) -> None:
    _, problems = load_contract(tmp_path / "nowhere")
    assert [p.reason for p in problems] == ["file not found"]


def plugin(tmp_path: Path, name: str, **clauses: list[str]) -> None:
    extra = "".join(f"{k} = {v!r}\n".replace("'", '"') for k, v in clauses.items())
    write(tmp_path, f'name = "{name}"\nversion = "1"\nprotocol = 1\n{extra}'
          f'[run]\ncommand = ["true"]\n', name)


def test_dependency_order_needs_and_placement(tmp_path: Path) -> None:
    plugin(tmp_path, "a", needs=["temp"], after=["c"])
    plugin(tmp_path, "b", provides=["temp"])
    plugin(tmp_path, "c", before=["b"])
    contracts, problems = check_contracts([tmp_path])
    assert problems == []
    assert [c.name for c in contracts] == ["c", "b", "a"]
    assert dependents(contracts, "b") == ["a"]


def test_unmet_needs_cycles_unknown_placement_and_duplicates(tmp_path: Path) -> None:
    plugin(tmp_path, "a", needs=["x", "missing"], after=["ghost"])
    plugin(tmp_path, "b", provides=["x"], needs=["y"])
    plugin(tmp_path, "c", provides=["y"], needs=["x"])
    write(tmp_path, 'name = "a"\nversion = "2"\nprotocol = 1\n[run]\ncommand = ["true"]\n', "a2")
    _, problems = check_contracts([tmp_path])
    reasons = [str(p) for p in problems]
    assert any("two plugins are named 'a'" in r for r in reasons)
    assert any("needs: unmet need 'missing'" in r for r in reasons)
    assert any("after: no plugin named 'ghost'" in r for r in reasons)
    assert any("dependency cycle: b -> c -> b" in r for r in reasons)


def test_start_order_of_no_plugins_is_empty() -> None:
    assert start_order([]) == ([], [])


def test_replacement_rule(tmp_path: Path) -> None:
    plugin(tmp_path / "old", "p", provides=["a", "b"], needs=["x"])
    plugin(tmp_path / "new", "p", provides=["a"], needs=["x", "y"])
    old, _ = load_contract(tmp_path / "old" / "p")
    new, _ = load_contract(tmp_path / "new" / "p")
    assert old is not None and new is not None
    assert replacement_problems(old, new) == ["no longer provides b", "needs more: y"]
    assert replacement_problems(new, old) == []


def test_bundled_plugins_pass_the_checker() -> None:
    contracts, problems = check_contracts([ROOT / "plugins"])
    assert problems == []
    names = [c.name for c in contracts]
    assert {"clock", "sysmon", "room", "thermostat"} <= set(names)
    assert names.index("room") < names.index("thermostat")


def test_unknown_keys_are_errors_with_a_did_you_mean(tmp_path: Path) -> None:
    text = GOOD.replace('description = "d"', 'descripton = "d"\nrestart = "always"').replace(
        "[run]\n", "[run]\nstop_timout = 3\n").replace("min = 0", "min = 0\nunits = \"x\"")
    contract, problems = load_contract(write(tmp_path, text))
    assert contract is None
    found = {p.field: p.reason for p in problems}
    assert "did you mean 'description'?" in found["descripton"]
    assert "unknown key 'restart'" in found["restart"]
    assert "did you mean 'stop_timeout'?" in found["run.stop_timout"]
    assert "did you mean 'unit'?" in found["exports[0].units"]
    assert all(p.file.endswith("plugin.toml") for p in problems)


def test_a_command_given_as_a_string_says_how_to_write_it(tmp_path: Path) -> None:
    text = GOOD.replace('command = ["{python}", "{dir}/plugin.py"]',
                        'command = "python3 plugin.py"')
    contract, problems = load_contract(write(tmp_path, text))
    assert contract is None
    assert [p.field for p in problems] == ["run.command"]
    assert 'command = ["python3", "plugin.py"]' in problems[0].reason


def test_config_is_free_form(tmp_path: Path) -> None:
    contract, problems = load_contract(write(tmp_path, GOOD + "\n[config]\nanswr = 42\n"))
    assert problems == [] and contract is not None and contract.config == {"answr": 42}


def test_a_manifest_in_utf8_with_a_byte_order_mark_is_read(tmp_path: Path) -> None:
    directory = write(tmp_path, GOOD)
    (directory / "plugin.toml").write_bytes(b"\xef\xbb\xbf" + GOOD.encode())
    contract, problems = load_contract(directory)
    assert problems == [] and contract is not None


def test_a_manifest_not_in_utf8_names_the_line(tmp_path: Path) -> None:
    directory = write(tmp_path, GOOD)
    (directory / "plugin.toml").write_bytes(b'# ok\nname = "d\xe9mo"\n')
    _, problems = load_contract(directory)
    assert [p.reason for p in problems] == ["not UTF-8: byte 0xe9 on line 2"]


def test_a_manifest_that_is_a_broken_link_is_reported_not_passed_over(
        tmp_path: Path) -> None:
    plugin(tmp_path, "a")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "plugin.toml").symlink_to(tmp_path / "b" / "gone.toml")
    contracts, problems = check_contracts([tmp_path])
    assert [c.name for c in contracts] == ["a"]
    assert [(p.file, p.reason) for p in problems] == [
        (str(tmp_path / "b" / "plugin.toml"),
         f"a link to {tmp_path / 'b' / 'gone.toml'}, which does not exist")]
