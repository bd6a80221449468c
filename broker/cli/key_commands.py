"""``plugboard keys``: CURVE key pairs and who may connect over tcp as what.

``allow`` and ``revoke`` edit ``STATE_DIR/curve/authorized_keys.json``; when a broker
runs on the state directory they also ask it to re-read the file (``keys.reload``),
which ends the live sessions of a revoked key at once.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import zmq.auth

from plugboard.protocol.errors import ConfigError, ConnectionFailed
from plugboard.sdk._keys import is_z85_key, read_public_key

from ..security import ROLES, Grant, curve_dir, ensure_key_pair, read_authorized, write_authorized
from .client_commands import add_connection_arguments, connect, print_json
from .tables import print_table


def new(args: argparse.Namespace) -> int:
    directory = Path(args.dir)
    directory.mkdir(parents=True, exist_ok=True)
    if (directory / f"{args.name}.key_secret").exists():
        raise ConfigError(f"{directory / (args.name + '.key_secret')} exists; not overwritten")
    public_file, secret_file = zmq.auth.create_certificates(directory, args.name)
    os.chmod(secret_file, 0o600)
    public, _ = zmq.auth.load_certificate(public_file)
    print(f"public key  {public.decode()}")
    print(f"written     {public_file} (public), {secret_file} (pair, 0600)")
    return 0


def show(args: argparse.Namespace) -> int:
    public, _ = ensure_key_pair(curve_dir(args.state_dir), "broker")
    print_json({"public": public}) if args.json else print(public)
    return 0


def list_(args: argparse.Namespace) -> int:
    grants = read_authorized(curve_dir(args.state_dir) / "authorized_keys.json")
    if args.json:
        for grant in grants:
            print_json(grant.to_json())
        return 0
    rows = [[g.key, g.role, ",".join(g.names) or "-", g.comment] for g in grants]
    if rows:
        print_table([["KEY", "ROLE", "NAMES", "COMMENT"], *rows])
    else:
        print("no keys allowed (plugboard keys allow --role ROLE -- KEY)")
    return 0


def allow(args: argparse.Namespace) -> int:
    key = read_public_key(args.key)
    if args.role == "plugin" and not args.name:
        raise ConfigError("a plugin key needs --name: the plugin names it may use")
    path = curve_dir(args.state_dir) / "authorized_keys.json"
    grants = [g for g in read_authorized(path) if g.key != key]
    grants.append(Grant(key, args.role, tuple(args.name), args.comment))
    write_authorized(path, grants)
    print(f"allowed {key} as {args.role}" + (f" ({', '.join(args.name)})" if args.name else ""))
    _tell_broker(args)
    return 0


def revoke(args: argparse.Namespace) -> int:
    key = read_public_key(args.key)
    path = curve_dir(args.state_dir) / "authorized_keys.json"
    grants = read_authorized(path)
    kept = [g for g in grants if g.key != key]
    if len(kept) == len(grants):
        raise ConfigError(f"{key} is not in {path}")
    write_authorized(path, kept)
    print(f"revoked {key}")
    _tell_broker(args)
    return 0


def provision(args: argparse.Namespace) -> int:
    """Key pairs for the peers of a deployment, made once and allowed: what a container
    runs before its broker (docker-compose.yml)."""
    directory = Path(args.dir)
    directory.mkdir(parents=True, exist_ok=True)
    wanted = []
    for spec in args.peers:
        name, _, role = spec.partition(":")
        if not name or role not in ROLES or role == "plugin":
            raise ConfigError(f"{spec!r}: give NAME:ROLE with ROLE one of client, admin, "
                              "agent (plugins get a key per launch from their agent)")
        wanted.append((name, role))
    local = curve_dir(args.state_dir)
    ensure_key_pair(local, "broker")
    shutil.copyfile(local / "broker.key", directory / "broker.key")
    path = local / "authorized_keys.json"
    grants = {g.key: g for g in read_authorized(path)}
    for name, role in wanted:
        public, _ = ensure_key_pair(directory, name)
        os.chmod(directory / f"{name}.key", 0o644)
        grants[public] = Grant(public, role, comment=f"provisioned {name}")
        print(f"{name}: {public} allowed as {role} ({directory / name}.key_secret)")
    write_authorized(path, list(grants.values()))
    print(f"broker public key in {directory / 'broker.key'}")
    return 0


def _tell_broker(args: argparse.Namespace) -> None:
    """Have a running broker re-read the file; say so when none answers."""

    async def reload() -> dict[str, Any]:
        async with connect(args, admin_only="keys.reload") as client:
            return await client.request("keys.reload")  # type: ignore[no-any-return]

    try:
        result = asyncio.run(reload())
    except (ConnectionFailed, ConfigError) as exc:
        print(f"no broker was told ({exc}); a broker reads the file when it starts")
        return
    print(f"the broker re-read its keys; {result['ended']} session(s) ended")


def add_commands(commands: Any) -> None:
    cmd = commands.add_parser("keys", help="CURVE keys: make pairs, allow or revoke peers",
                              description="CURVE keys for tcp. Peers on tcp prove a key; the "
                                          "broker admits only keys allowed here, in the role "
                                          "(and for plugins the names) given.")
    actions = cmd.add_subparsers(dest="keys_action", metavar="ACTION", required=True)
    sub = actions.add_parser("new", help="write a key pair (NAME.key, NAME.key_secret)",
                             description="Write a new CURVE key pair: DIR/NAME.key (public) "
                                         "and DIR/NAME.key_secret (the pair, mode 0600).")
    sub.add_argument("name")
    sub.add_argument("--dir", default=".", help="where to write it (default: here)")
    sub.set_defaults(handler=new)
    sub = actions.add_parser("show", help="print the broker's public key",
                             description="Print the broker's public key, which peers give "
                                         "as --server-key or PLUGBOARD_SERVER_KEY (made on "
                                         "first use).")
    sub.set_defaults(handler=show)
    sub = actions.add_parser("list", help="the keys allowed in, with roles and names",
                             description="The keys allowed in, with their roles and names.")
    sub.set_defaults(handler=list_)
    sub = actions.add_parser("allow", help="allow a public key in a role",
                             description="Allow a public key (Z85 text or a .key file) in a "
                                         "role; a running broker re-reads the file at once. "
                                         "A key that begins with '-' goes after --: "
                                         "plugboard keys allow --role client -- KEY.")
    sub.add_argument("key")
    sub.add_argument("--role", required=True, choices=ROLES)
    sub.add_argument("--name", action="append", default=[],
                     help="for --role plugin: a plugin name the key may use, repeatable")
    sub.add_argument("--comment", default="", help="free text shown by list")
    add_connection_arguments(sub)
    sub.set_defaults(handler=allow)
    sub = actions.add_parser(
        "provision", help="make and allow key pairs for a deployment's peers",
        description="For each NAME:ROLE (role client, admin or agent): write the pair "
                    "NAME.key / NAME.key_secret into DIR unless it is there, and allow its "
                    "public key in that role; copy the broker's public key to DIR/broker.key "
                    "(making the broker's pair if needed). Safe to run at every start.")
    sub.add_argument("dir", metavar="DIR")
    sub.add_argument("peers", nargs="+", metavar="NAME:ROLE")
    sub.set_defaults(handler=provision)

    sub = actions.add_parser("revoke", help="remove a key; its live sessions end at once",
                             description="Remove a key from the allowed keys; a running "
                                         "broker ends its live sessions at once. A key that "
                                         "begins with '-' goes after --: plugboard keys "
                                         "revoke -- KEY.")
    sub.add_argument("key")
    add_connection_arguments(sub)
    sub.set_defaults(handler=revoke)



def hint_dash_key(argv: list[str], exc: SystemExit) -> None:
    """After a usage error: a Z85 key that begins with '-' (one in 85) reads as an
    option, so the key is 'missing'. Say how to give it, after argparse's message."""
    if exc.code != 2:
        return
    keys = [a for a in argv if a.startswith("-") and is_z85_key(a)]
    if keys:
        print(f"plugboard: {keys[0]} begins with '-', so it reads as an option: give it "
              "as --server-key=KEY, or after -- (plugboard keys allow --role client -- KEY)",
              file=sys.stderr)
