"""Child process for the base-replication integration test: one Autobase node over TCP.

Usage: python tests/integration/_net_base.py --storage DIR [--bootstrap HEX] [--peer HOST:PORT]
Prints {"port", "local", "key"} once listening, then executes JSON commands read from stdin,
one per line, answering each with one JSON line:
  {"op": "append", "value": HEX}            -> {"length": n}
  {"op": "wait-writable"}                   -> {"writable": true}
  {"op": "flush"}                           -> {"confirmed": n} once every known value is
                                               confirmed
  {"op": "state"}                           -> {"lengths", "journal", "view", "confirmed", ...}
  {"op": "wait-certified"}                  -> {"signed": n} once a certificate covers the
                                               newest checkpoint this base computed
  {"op": "wait-lengths", "lengths": {...}}  -> the state, once every log is at least that long
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import trio

from autobase_py import crypto
from autobase_py.base.core import Autobase
from autobase_py.net.base_trio import BaseReplication
from autobase_py.net.endpoint_trio import open_endpoint
from autobase_py.net.replication_trio import Replicator
from autobase_py.store import Store
from autobase_py.testing import kv


def say(**fields: object) -> None:
    print(json.dumps(fields), flush=True)


async def state(base: Autobase[Any]) -> dict[str, Any]:
    await base.update()  # take in whatever replication stored before describing the base
    keys = {base.local_key, *base.writer_keys()}
    return {
        "lengths": {k.hex(): base.store.get(key=k).length for k in sorted(keys)},
        "journal": [v.hex() for v in await kv.journal(base.view)],
        "view": base.view_log.tree_hash().hex(),
        "confirmed": base.confirmed_length,
        "applied": base.applied_length,
        "signed": base.signed_length,
    }


async def main(args: argparse.Namespace) -> None:
    store = Store.open(args.storage)
    bootstrap = bytes.fromhex(args.bootstrap) if args.bootstrap else None
    base = await Autobase.open(store, bootstrap, apply=kv.apply, open_view=kv.open_view)
    replicator = Replicator(store)
    replication = BaseReplication(base, replicator)
    async with open_endpoint(
        crypto.key_pair(), protocols=replicator.protocols, on_connection=replicator.replicate
    ) as endpoint, trio.open_nursery() as nursery:
        await nursery.start(replication.run)
        port = await endpoint.listen("127.0.0.1")
        if args.peer:
            host, peer_port = args.peer.rsplit(":", 1)
            await endpoint.connect(host, int(peer_port))
        say(port=port, local=base.local_key.hex(), key=base.key.hex())
        commands_in, commands = trio.open_memory_channel[bytes](16)

        async def read_stdin() -> None:
            # EOF (the parent closed our stdin or died) ends the node, even mid-command.
            stdin = trio.lowlevel.FdStream(os.dup(0))
            buffer = b""
            while chunk := await stdin.receive_some():
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    await commands_in.send(line)
            nursery.cancel_scope.cancel()

        nursery.start_soon(read_stdin)
        async for line in commands:
            command = json.loads(line)
            op = command["op"]
            if op == "append":
                say(length=await replication.append(bytes.fromhex(command["value"])))
            elif op == "wait-writable":

                async def writable() -> bool:
                    return base.writable

                await replication.wait_for(writable)
                say(writable=True)
            elif op == "flush":
                await base.flush()
                say(confirmed=base.confirmed_length)
            elif op == "state":
                say(**await state(base))
            elif op == "wait-certified":

                async def certified() -> bool:
                    cp = base.checkpoint
                    return cp is not None and base.signed_length >= cp.confirmed_length

                await replication.wait_for(certified)
                say(signed=base.signed_length)
            elif op == "wait-lengths":
                targets = {bytes.fromhex(k): n for k, n in command["lengths"].items()}

                async def caught_up(targets: dict[bytes, int] = targets) -> bool:
                    logs = [(store.get(key=k), n) for k, n in targets.items()]
                    return all(lg.length >= n and replicator.complete(lg) for lg, n in logs)

                await replication.wait_for(caught_up)
                say(**await state(base))


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--storage", required=True)
    parser.add_argument("--bootstrap")
    parser.add_argument("--peer")
    trio.run(main, parser.parse_args())
