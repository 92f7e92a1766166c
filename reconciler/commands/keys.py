"""`edgefleet keys generate`: an ed25519 key pair that also works with ssh-keygen and git."""

from __future__ import annotations

import argparse
from pathlib import Path

from reconciler.keyfiles import write_key_pair
from reconciler.keys import SigningKey


def cmd_generate(args: argparse.Namespace) -> int:
    out = Path(args.out)
    key = SigningKey.generate(args.comment or out.name)
    write_key_pair(out, key, force=args.force)
    print(key.keyid)
    return 0


def register(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    keys = sub.add_parser("keys", parents=[common], help="make signing keys")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    generate = keys_sub.add_parser(
        "generate",
        parents=[common],
        help="write PATH (private, 0600) and PATH.pub (one OpenSSH line); print the key id",
    )
    generate.add_argument("--out", required=True, help="path of the private key")
    generate.add_argument("--comment", help="the key's name (default: the file name)")
    generate.add_argument("--force", action="store_true", help="replace an existing key")
    generate.set_defaults(func=cmd_generate)
