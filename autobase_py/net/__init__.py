"""Networking: Noise XX handshake, secretstream framing, channel mux, RPC, trio adapters.

Sans-IO cores (``noise``, ``secretstream``, ``framing``, ``connection``, ``mux``, ``rpc``) take
bytes and ``now`` and return bytes and events; only ``*_trio`` modules touch sockets, tasks and
clocks. See ``docs/net.md`` for how the layers stack.
"""
