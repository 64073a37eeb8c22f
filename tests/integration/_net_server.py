"""Child process for the network integration tests: an RPC server on 127.0.0.1.

Usage: python tests/integration/_net_server.py NAME SEED_HEX
Prints one JSON line {"port": ..., "key": hex} once listening, then serves until killed.
Methods: "whoami" -> NAME (bytes), "echo" -> its payload.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import trio

from autobase_py import crypto
from autobase_py.net.endpoint_trio import listen
from autobase_py.net.rpc import CallContext
from autobase_py.net.rpc_trio import RpcServer


async def exit_when_parent_goes(scope: trio.CancelScope) -> None:
    """The parent holds our stdin open; EOF means it is gone: stop instead of lingering."""
    stdin = trio.lowlevel.FdStream(os.dup(0))
    while await stdin.receive_some():
        pass
    scope.cancel()


async def main(name: str, seed: bytes) -> None:
    key_pair = crypto.key_pair(seed)
    server = RpcServer()

    async def whoami(value: object, context: CallContext) -> bytes:
        return name.encode()

    async def echo(value: object, context: CallContext) -> object:
        return value

    server.method("whoami", whoami)
    server.method("echo", echo)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(exit_when_parent_goes, nursery.cancel_scope)
        port = await nursery.start(
            lambda task_status: listen(
                "127.0.0.1", 0, key_pair, protocols=server.protocols, task_status=task_status
            )
        )
        print(json.dumps({"port": port, "key": key_pair.public_key.hex()}), flush=True)


if __name__ == "__main__":
    trio.run(main, sys.argv[1], bytes.fromhex(sys.argv[2]))
