"""Network benchmarks: handshakes/s, RPC round trips/s (sequential and 16 in flight),
secretstream throughput beside raw ChaCha20-Poly1305, ed25519 verify/s, and replication
blocks/s between two processes over loopback (every proof verified).

Run from the repo root: ``.venv/bin/python bench/net_bench.py [--blocks N] [--quick]
[--range-size N ...] [--only-replication] [--only-live] [--live-blocks N]``
(``--range-size 1`` asks for one block per request, as replication did before ranges).

``live``: three nodes in one process, connected pairwise over loopback TCP (Noise,
secretstream, mux, one replication session per log and peer), each appending to its own log
one block at a time (announced after each append) while following the other two; timed until
every node holds all three logs. Storage is in memory, so the figure is mostly the network
path and proof verification: CPU microseconds per appended block (every block reaches two
peers), and messages per block.
Prints one JSON object per line. Numbers from a shared, noisy machine are indicative only.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

import trio  # noqa: E402
from nacl import bindings as sodium  # noqa: E402

from autobase_py import crypto  # noqa: E402
from autobase_py.log import Log  # noqa: E402
from autobase_py.net.connection import SecureConnection  # noqa: E402
from autobase_py.net.endpoint_trio import connect, listen, open_endpoint  # noqa: E402
from autobase_py.net.replication import DEFAULT_RANGE  # noqa: E402
from autobase_py.net.replication_trio import Replicator  # noqa: E402
from autobase_py.net.rpc import CallContext  # noqa: E402
from autobase_py.net.rpc_trio import RpcClient, RpcServer  # noqa: E402
from autobase_py.net.secretstream import Decryptor, Encryptor  # noqa: E402
from autobase_py.storage import Storage  # noqa: E402


def emit(bench: str, figure: str, value: float, unit: str, **params: Any) -> None:
    print(json.dumps({"bench": "net", "figure": figure, "value": round(value, 2), "unit": unit,
                      "case": bench, **params}), flush=True)


def timed(fn: Any, seconds: float) -> tuple[int, float]:
    count = 0
    start = time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        fn()
        count += 1
    return count, elapsed


def bench_handshakes(seconds: float) -> None:
    a_keys, b_keys = crypto.key_pair(), crypto.key_pair()

    def one() -> None:
        a = SecureConnection(a_keys, initiator=True, now=0.0)
        b = SecureConnection(b_keys, initiator=False, now=0.0)
        b.receive_data(a.data_to_send())
        a.receive_data(b.data_to_send())
        b.receive_data(a.data_to_send())
        a.receive_data(b.data_to_send())

    n, elapsed = timed(one, seconds)
    emit("handshake", "handshakes_per_s", n / elapsed, "1/s", where="in-memory, both sides")


def bench_crypto(seconds: float, size: int) -> None:
    key = os.urandom(32)
    message = os.urandom(size)
    nonce = bytes(12)
    n, elapsed = timed(
        lambda: sodium.crypto_aead_chacha20poly1305_ietf_encrypt(message, None, nonce, key),
        seconds,
    )
    emit("crypto", "chachapoly_ietf_encrypt", n * size / elapsed / 1e6, "MB/s", size=size)
    enc = Encryptor(key)
    dec = Decryptor(key, enc.header)
    n, elapsed = timed(lambda: dec.decrypt(enc.encrypt(message)), seconds)
    emit("crypto", "secretstream_encrypt_then_decrypt", n * size / elapsed / 1e6, "MB/s",
         size=size, note="both directions per message: compare with half the AEAD figure")
    a = SecureConnection(crypto.key_pair(), initiator=True, now=0.0)
    b = SecureConnection(crypto.key_pair(), initiator=False, now=0.0)
    for _ in range(2):
        b.receive_data(a.data_to_send())
        a.receive_data(b.data_to_send())

    def through_core() -> None:
        a.send(message)
        b.receive_data(a.data_to_send())

    n, elapsed = timed(through_core, seconds)
    emit("crypto", "connection_core_one_way", n * size / elapsed / 1e6, "MB/s", size=size)
    signature = crypto.sign(b"x" * 112, a_keys_secret := crypto.key_pair().secret_key)
    public = a_keys_secret[32:]
    n, elapsed = timed(lambda: crypto.verify(b"x" * 112, signature, public), seconds)
    emit("crypto", "ed25519_verify_per_s", n / elapsed, "1/s")


async def bench_rpc(calls: int) -> None:
    server = RpcServer(concurrency=64)

    async def echo(value: object, context: CallContext) -> object:
        return value

    server.method("echo", echo)
    server_keys = crypto.key_pair()
    async with trio.open_nursery() as nursery:
        port = await nursery.start(
            lambda task_status: listen("127.0.0.1", 0, server_keys,
                                       protocols=server.protocols, task_status=task_status)
        )
        start = time.perf_counter()
        connections = 0
        while time.perf_counter() - start < 2.0:
            async with connect("127.0.0.1", port, crypto.key_pair()):
                connections += 1
        emit("connect", "tcp_connect_handshake_close_per_s",
             connections / (time.perf_counter() - start), "1/s", where="loopback, one process")
        async with connect("127.0.0.1", port, crypto.key_pair()) as conn:
            client = await RpcClient.open(conn)
            payload = b"x" * 64
            start = time.perf_counter()
            for _ in range(calls):
                await client.call("echo", payload)
            elapsed = time.perf_counter() - start
            emit("rpc", "round_trips_per_s", calls / elapsed, "1/s", in_flight=1,
                 payload=64, where="loopback, client and server in one process")
            start = time.perf_counter()

            async def worker() -> None:
                for _ in range(calls // 16):
                    await client.call("echo", payload)

            async with trio.open_nursery() as workers:
                for _ in range(16):
                    workers.start_soon(worker)
            elapsed = time.perf_counter() - start
            emit("rpc", "round_trips_per_s", (calls // 16) * 16 / elapsed, "1/s", in_flight=16,
                 payload=64, where="loopback, client and server in one process")
        nursery.cancel_scope.cancel()


def bench_replication(blocks: int, block_size: int, range_size: int) -> None:
    node = str(REPO / "tests" / "integration" / "_net_replica.py")
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        writer = subprocess.Popen(
            [sys.executable, node, "--storage", f"{tmp}/w", "--write", str(blocks)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env,
        )
        try:
            assert writer.stdout is not None
            info = json.loads(writer.stdout.readline())
            start = time.perf_counter()
            replica = subprocess.Popen(
                [sys.executable, node, "--storage", f"{tmp}/r", "--log", info["log"],
                 "--expect", str(blocks), "--connect", f"127.0.0.1:{info['port']}",
                 "--range-size", str(range_size)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env,
            )
            try:
                assert replica.stdout is not None
                ready = json.loads(replica.stdout.readline())
                assert "port" in ready
                connected = time.perf_counter()
                while True:
                    line = json.loads(replica.stdout.readline())
                    if "done" in line:
                        break
                end = time.perf_counter()
            finally:
                replica.kill()
                replica.wait()
        finally:
            writer.kill()
            writer.wait()
    emit("replication", "blocks_per_s", blocks / (end - connected), "1/s", blocks=blocks,
         block_size=block_size, range_size=range_size,
         where="two processes, loopback TCP, proofs verified",
         startup_s=round(connected - start, 2))


async def bench_live(blocks: int) -> None:
    keys = [crypto.key_pair() for _ in range(3)]
    writers = [Log.create(Storage.open_memory(), crypto.key_pair()) for _ in range(3)]
    logs = [
        [w if i == j else Log.replica(Storage.open_memory(), w.key) for j, w in enumerate(writers)]
        for i in range(3)
    ]
    replicators = [Replicator(logs=node_logs) for node_logs in logs]
    per = max(1, blocks // 3)
    async with trio.open_nursery() as nursery:
        endpoints = []
        for key, rep in zip(keys, replicators, strict=True):
            endpoint = await nursery.start(_live_node, key, rep)
            endpoints.append(endpoint)
        ports = [await e.listen("127.0.0.1") for e in endpoints]
        for i, endpoint in enumerate(endpoints):
            for j in range(i + 1, 3):
                await endpoint.connect("127.0.0.1", ports[j])
        t0, c0 = time.perf_counter(), time.process_time()

        async def write(i: int) -> None:
            for k in range(per):
                writers[i].append([b"live block %d/%d" % (i, k)])
                replicators[i].announce(writers[i])
                await trio.lowlevel.checkpoint()

        async with trio.open_nursery() as appenders:
            for i in range(3):
                appenders.start_soon(write, i)
        for rep, node_logs in zip(replicators, logs, strict=True):
            def stored(lg: Log, rep: Replicator = rep) -> bool:
                return lg.length == per and rep.complete(lg)  # every block, as far as it saw

            for item in node_logs:
                await rep.wait_for(item, stored)
        elapsed, used = time.perf_counter() - t0, time.process_time() - c0
        nursery.cancel_scope.cancel()
    emit("live", "cpu_us_per_block", used / (per * 3) * 1e6, "us", blocks=per * 3,
         blocks_per_s=round(per * 3 / elapsed), cpu_s=round(used, 2),
         where="three nodes in one process, loopback TCP, one block per append")


async def _live_node(
    key: crypto.KeyPair, rep: Replicator, *, task_status: Any = trio.TASK_STATUS_IGNORED
) -> None:
    async with open_endpoint(key, protocols=rep.protocols, on_connection=rep.replicate) as ep:
        task_status.started(ep)
        await trio.sleep_forever()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--blocks", type=int, default=100_000)
    parser.add_argument("--calls", type=int, default=4000)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--range-size", type=int, action="append",
                        help=f"blocks per range request (repeatable; default "
                             f"{DEFAULT_RANGE}; 1 is one request per block)")
    parser.add_argument("--only-replication", action="store_true")
    parser.add_argument("--only-live", action="store_true")
    parser.add_argument("--live-blocks", type=int, default=6000)
    args = parser.parse_args()
    if args.only_live:
        trio.run(bench_live, args.live_blocks)
        return
    seconds = 0.5 if args.quick else 2.0
    if not args.only_replication:
        bench_handshakes(seconds)
        bench_crypto(seconds, 65536)
        trio.run(bench_rpc, args.calls // (4 if args.quick else 1))
    for range_size in args.range_size or [DEFAULT_RANGE]:
        bench_replication(
            args.blocks // (10 if args.quick else 1), len(b"block 99999"), range_size
        )
    trio.run(bench_live, args.live_blocks // (4 if args.quick else 1))


if __name__ == "__main__":
    main()
