"""Networking: Noise XX handshake, secretstream framing, channel mux, RPC, replication.

Sans-IO cores (``noise``, ``secretstream``, ``framing``, ``connection``, ``mux``, ``rpc``,
``pool``, ``replication``) take bytes and ``now`` and return bytes and events; only the
``*_trio`` modules touch sockets, tasks and clocks. ``docs/net.md`` describes how the layers
stack. The names below are the public API.
"""

from __future__ import annotations

from .base_trio import BaseReplication
from .connection import DEFAULT_LIVENESS, LIVENESS_OFF, Liveness
from .connection_trio import Channel, ChannelProtocol, Connection, open_connection
from .endpoint_trio import Endpoint, connect, listen, open_endpoint
from .replication import InvalidPeerDataError
from .replication_trio import Replicator
from .rpc import BYTES, CBOR, CallContext, UnauthorizedError
from .rpc_trio import (
    RpcChannelClosedError,
    RpcClient,
    RpcPool,
    RpcServer,
    RpcTimeoutError,
    ServerAddress,
    open_rpc_pool,
)

__all__ = [
    "BYTES",
    "DEFAULT_LIVENESS",
    "LIVENESS_OFF",
    "BaseReplication",
    "CBOR",
    "CallContext",
    "Channel",
    "ChannelProtocol",
    "Connection",
    "Endpoint",
    "InvalidPeerDataError",
    "Liveness",
    "Replicator",
    "RpcChannelClosedError",
    "RpcClient",
    "RpcPool",
    "RpcServer",
    "RpcTimeoutError",
    "ServerAddress",
    "UnauthorizedError",
    "connect",
    "listen",
    "open_connection",
    "open_endpoint",
    "open_rpc_pool",
]
