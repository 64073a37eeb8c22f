"""Child process for the replication integration tests: one node with one store.

Usage: python tests/integration/_net_replica.py --storage DIR [--write N | --log HEX --expect N]
           [--connect HOST:PORT ...] [--later HOST:PORT ...] [--tamper | --tamper-blocks]
           [--range-size N] [--live N] [--wire-version 3|4]

Prints JSON lines: {"port", "key", "log"} once listening; {"closed": "HOST:PORT", "error"} when
a dialled connection ends; {"done": length, "digest"} once a replica holds every block. It
serves until killed. With --tamper every proof it serves has one bit flipped; with
--tamper-blocks only block values in range answers do (its upgrades are honest). A writer with
--live N appends N more blocks one at a time (announcing each, 2 ms apart) once a peer
connected: a replica then follows a live log.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import trio
import trio.testing

from autobase_py import crypto
from autobase_py.log import Log, decode_proof, encode_proof
from autobase_py.net import replication
from autobase_py.net.connection_trio import Connection
from autobase_py.net.endpoint_trio import open_endpoint
from autobase_py.net.replication_trio import Replicator
from autobase_py.store import Store


def say(**fields: object) -> None:
    print(json.dumps(fields), flush=True)


def digest(log: Log) -> str:
    h = hashlib.blake2b(digest_size=16)
    for i in range(log.length):
        h.update(log.get(i))
    return h.hexdigest()


def install_block_tamper() -> None:
    """Serve every range answer with one bit flipped in its last block's value."""
    honest = replication.encode_blocks

    def tampered(
        request_id: int, fork: int, start: int, values: list[bytes], uncles: list[bytes]
    ) -> bytes:
        last = bytearray(values[-1])
        last[-1] ^= 0x01
        return honest(request_id, fork, start, [*values[:-1], bytes(last)], uncles)

    replication.encode_blocks = tampered  # type: ignore[assignment]


def install_tamper() -> None:
    install_block_tamper()
    honest = replication.encode_data

    def tampered(request_id: int, proof: bytes) -> bytes:
        p = decode_proof(proof)
        if p.block is not None:
            value = bytearray(p.block.value)
            value[0] ^= 0x01
            p = type(p)(p.fork, type(p.block)(p.block.index, bytes(value), p.block.nodes),
                        p.upgrade, p.manifest)
        elif p.upgrade is not None:
            sig = bytearray(p.upgrade.signature)
            sig[0] ^= 0x01
            p = type(p)(p.fork, p.block,
                        type(p.upgrade)(p.upgrade.start, p.upgrade.length, p.upgrade.nodes,
                                        bytes(sig)), p.manifest)
        return honest(request_id, encode_proof(p))

    replication.encode_data = tampered  # type: ignore[assignment]


async def dial(endpoint: object, target: str) -> None:
    host, port = target.rsplit(":", 1)
    conn = await endpoint.connect(host, int(port))  # type: ignore[attr-defined]
    await conn.closed.wait()
    say(closed=target, error=None if conn.error is None else conn.error.code)


async def exit_when_parent_goes(scope: trio.CancelScope) -> None:
    """The parent holds our stdin open; EOF means it is gone: stop instead of lingering."""
    stdin = trio.lowlevel.FdStream(os.dup(0))
    while await stdin.receive_some():
        pass
    scope.cancel()


async def main(args: argparse.Namespace) -> None:
    store = Store.open(args.storage)
    if args.write:
        log = store.get(name="main")
        for start in range(log.length, args.write, 1000):
            log.append([b"block %d" % i for i in range(start, min(args.write, start + 1000))])
    else:
        log = store.get(key=bytes.fromhex(args.log))
    if args.tamper:
        install_tamper()
    elif args.tamper_blocks:
        install_block_tamper()
    replicator = Replicator(store, range_size=args.range_size, version=args.wire_version)
    key_pair = crypto.key_pair()
    connected = trio.Event()

    async def on_connection(connection: Connection) -> None:
        connected.set()
        await replicator.replicate(connection)

    async def live() -> None:
        await connected.wait()
        for index in range(log.length, log.length + args.live):
            log.append([b"block %d" % index])
            replicator.announce(log)
            # the next block once this one's news went out (every task here waits again)
            await trio.testing.wait_all_tasks_blocked()

    async with open_endpoint(
        key_pair, protocols=replicator.protocols, on_connection=on_connection
    ) as endpoint:
        port = await endpoint.listen("127.0.0.1")
        say(port=port, key=key_pair.public_key.hex(), log=log.key.hex())
        async with trio.open_nursery() as nursery:
            nursery.start_soon(exit_when_parent_goes, nursery.cancel_scope)

            async def later() -> None:
                async with trio.open_nursery() as first:
                    for target in args.connect:
                        first.start_soon(dial, endpoint, target)
                for target in args.later:
                    nursery.start_soon(dial, endpoint, target)

            nursery.start_soon(later)
            if args.live:
                nursery.start_soon(live)
            if not args.write:
                await replicator.wait_for(
                    log, lambda lg: lg.length >= args.expect and replicator.complete(lg)
                )
                say(done=log.length, digest=digest(log))
            await trio.sleep_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--storage", required=True)
    parser.add_argument("--write", type=int, default=0)
    parser.add_argument("--log")
    parser.add_argument("--expect", type=int, default=0)
    parser.add_argument("--connect", action="append", default=[])
    parser.add_argument("--later", action="append", default=[])
    parser.add_argument("--tamper", action="store_true")
    parser.add_argument("--tamper-blocks", action="store_true")
    parser.add_argument("--range-size", type=int, default=replication.DEFAULT_RANGE)
    parser.add_argument("--live", type=int, default=0)
    parser.add_argument("--wire-version", type=int, default=replication.WIRE_VERSION)
    trio.run(main, parser.parse_args())
