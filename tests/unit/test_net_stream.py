"""Framing, secretstream and the connection core, driven without sockets."""

from __future__ import annotations

import os

import pytest

from autobase_py import crypto
from autobase_py.errors import HandshakeError, LocalError, ProtocolError, TimedOutError
from autobase_py.net.connection import (
    Established,
    Event,
    Message,
    PeerClosed,
    SecureConnection,
    State,
)
from autobase_py.net.framing import FrameDecoder, encode_frame
from autobase_py.net.secretstream import Decryptor, Encryptor

# -- framing -------------------------------------------------------------------------------


def test_frames_survive_any_split_including_one_byte_at_a_time() -> None:
    bodies = [b"", b"a", os.urandom(300), os.urandom(70000)]
    stream = b"".join(encode_frame(b) for b in bodies)
    whole = FrameDecoder()
    assert whole.feed(stream) == bodies
    bytewise = FrameDecoder()
    got: list[bytes] = []
    for i in range(len(stream)):
        got += bytewise.feed(stream[i : i + 1])
    assert got == bodies
    assert bytewise.buffered == 0


def test_oversized_frame_is_refused_before_its_body_arrives() -> None:
    decoder = FrameDecoder(max_frame=10)
    assert decoder.feed(b"\x0a\x00\x00" + b"x" * 10) == [b"x" * 10]
    with pytest.raises(ProtocolError, match="limit"):
        decoder.feed(b"\x0b\x00\x00")
    with pytest.raises(LocalError):
        FrameDecoder(max_frame=0)
    with pytest.raises(LocalError):
        encode_frame(b"x" * (2**24))


# -- secretstream --------------------------------------------------------------------------


def test_secretstream_round_trip_and_final() -> None:
    key = os.urandom(32)
    enc = Encryptor(key)
    dec = Decryptor(key, enc.header)
    for message in (b"", b"one", os.urandom(5000)):
        ciphertext = enc.encrypt(message)
        assert len(ciphertext) == len(message) + 17
        assert dec.decrypt(ciphertext) == (message, False)
    assert dec.decrypt(enc.final()) == (b"", True)
    with pytest.raises(ProtocolError, match="after the end"):
        dec.decrypt(enc.header)
    with pytest.raises(LocalError):
        enc.encrypt(b"late")


def test_secretstream_bytes_are_libsodiums_either_way() -> None:
    """The direct cffi calls agree with pynacl's bindings in both directions (they are the same
    libsodium functions), for messages smaller and larger than the reused output buffer."""
    from nacl import bindings as sodium

    key = os.urandom(32)
    messages = [b"", b"a", os.urandom(60), os.urandom(4096), os.urandom(70000), b"end"]
    message_tag = sodium.crypto_secretstream_xchacha20poly1305_TAG_MESSAGE
    enc = Encryptor(key)
    theirs = sodium.crypto_secretstream_xchacha20poly1305_state()
    sodium.crypto_secretstream_xchacha20poly1305_init_pull(theirs, enc.header, key)
    for message in messages:
        got, tag = sodium.crypto_secretstream_xchacha20poly1305_pull(
            theirs, enc.encrypt(message), None
        )
        assert (bytes(got), tag) == (message, message_tag)
    push_state = sodium.crypto_secretstream_xchacha20poly1305_state()
    header = bytes(sodium.crypto_secretstream_xchacha20poly1305_init_push(push_state, key))
    dec = Decryptor(key, header)
    for message in messages:
        sent = bytes(sodium.crypto_secretstream_xchacha20poly1305_push(
            push_state, message, None, message_tag
        ))
        assert dec.decrypt(sent) == (message, False)
    # Tags other than MESSAGE and FINAL, and a FINAL carrying data, are refused.
    for tag, data, error in (
        (sodium.crypto_secretstream_xchacha20poly1305_TAG_PUSH, b"x", "unexpected"),
        (sodium.crypto_secretstream_xchacha20poly1305_TAG_FINAL, b"x", "carries data"),
    ):
        state = sodium.crypto_secretstream_xchacha20poly1305_state()
        header = bytes(sodium.crypto_secretstream_xchacha20poly1305_init_push(state, key))
        sent = bytes(sodium.crypto_secretstream_xchacha20poly1305_push(state, data, None, tag))
        with pytest.raises(ProtocolError, match=error):
            Decryptor(key, header).decrypt(sent)


def test_secretstream_rejects_tampering_replay_reordering_and_wrong_keys() -> None:
    key = os.urandom(32)
    enc = Encryptor(key)
    first, second = enc.encrypt(b"first"), enc.encrypt(b"second")
    for pos in range(len(first)):
        bad = bytearray(first)
        bad[pos] ^= 1
        with pytest.raises(ProtocolError):
            Decryptor(key, enc.header).decrypt(bytes(bad))
    with pytest.raises(ProtocolError):
        Decryptor(key, enc.header).decrypt(second)  # reordered
    dec = Decryptor(key, enc.header)
    dec.decrypt(first)
    with pytest.raises(ProtocolError):
        dec.decrypt(first)  # replayed
    with pytest.raises(ProtocolError):
        Decryptor(os.urandom(32), enc.header).decrypt(first)
    with pytest.raises(ProtocolError):
        Decryptor(key, b"short")
    with pytest.raises(ProtocolError, match="too short"):
        Decryptor(key, enc.header).decrypt(b"x" * 16)
    with pytest.raises(LocalError):
        Encryptor(b"short")


# -- connection core -----------------------------------------------------------------------


def pair(**kw: object) -> tuple[SecureConnection, SecureConnection]:
    a = SecureConnection(crypto.key_pair(), initiator=True, now=0.0, **kw)  # type: ignore[arg-type]
    b = SecureConnection(crypto.key_pair(), initiator=False, now=0.0, **kw)  # type: ignore[arg-type]
    return a, b


def shuttle(
    a: SecureConnection, b: SecureConnection, *, chunk: int | None = None
) -> tuple[list[Event], list[Event]]:
    """Move bytes both ways until quiet; ``chunk`` bytes per receive_data call."""
    got_a: list[Event] = []
    got_b: list[Event] = []
    while True:
        moved = False
        for src, dst, sink in ((a, b, got_b), (b, a, got_a)):
            data = src.data_to_send()
            if data:
                moved = True
                step = chunk or len(data)
                for i in range(0, len(data), step):
                    sink += dst.receive_data(data[i : i + step])
        if not moved:
            return got_a, got_b


@pytest.mark.parametrize("chunk", [None, 1, 7])
def test_connection_handshake_messages_and_close(chunk: int | None) -> None:
    a, b = pair()
    got_a, got_b = shuttle(a, b, chunk=chunk)
    assert [type(e) for e in got_a] == [Established]
    assert [type(e) for e in got_b] == [Established]
    assert a.remote_public_key == got_a[0].remote_public_key  # type: ignore[union-attr]
    assert a.handshake_hash == b.handshake_hash
    a.send(b"ping")
    b.send(b"pong")
    a.send(b"")
    got_a, got_b = shuttle(a, b, chunk=chunk)
    assert got_b == [Message(b"ping"), Message(b"")]
    assert got_a == [Message(b"pong")]
    a.close()
    a.close()  # idempotent
    _, got_b = shuttle(a, b, chunk=chunk)
    assert got_b == [PeerClosed(clean=True)]
    with pytest.raises(LocalError):
        a.send(b"after close")
    assert b.receive_data(b"") == []  # EOF after FINAL is quiet


def test_initiator_may_send_right_after_its_header() -> None:
    a, b = pair()
    b.receive_data(a.data_to_send())
    a.receive_data(b.data_to_send())  # initiator is done: msg3 + header queued
    a.send(b"early")
    events = b.receive_data(a.data_to_send())
    assert [type(e) for e in events] == [Established, Message]


def test_send_before_handshake_is_local_misuse() -> None:
    a, _ = pair()
    with pytest.raises(LocalError):
        a.send(b"x")
    with pytest.raises(LocalError):
        _ = a.remote_public_key
    with pytest.raises(LocalError):
        _ = a.handshake_hash


def test_close_before_the_handshake_finishes_sends_final_once_keys_exist() -> None:
    a, b = pair()
    a.close()
    _, got_b = shuttle(a, b)
    assert got_b[-1] == PeerClosed(clean=True)


def test_handshake_deadline_comes_from_now() -> None:
    a = SecureConnection(crypto.key_pair(), initiator=True, now=100.0, handshake_timeout=5.0)
    assert a.deadline == 105.0
    a.handle_timer(104.9)
    with pytest.raises(TimedOutError):
        a.handle_timer(105.0)
    assert a.state is State.FAILED
    with pytest.raises(ProtocolError):
        a.receive_data(b"x")
    b, c = pair()
    shuttle(b, c)
    assert b.deadline is None
    b.handle_timer(1e9)  # no deadline once established


def test_eof_cases() -> None:
    a, b = pair()
    shuttle(a, b)
    assert b.receive_data(b"") == [PeerClosed(clean=False)]
    a, b = pair()
    shuttle(a, b)
    a.send(b"xyz")
    data = a.data_to_send()
    b.receive_data(data[:-1])
    with pytest.raises(ProtocolError, match="inside a frame"):
        b.receive_data(b"")
    a, b = pair()
    with pytest.raises(ProtocolError, match="handshake"):
        b.receive_data(b"")


def test_wrong_expected_key_fails_the_handshake() -> None:
    a = SecureConnection(
        crypto.key_pair(), initiator=True, now=0, expected_remote_key=b"\x01" * 32
    )
    b = SecureConnection(crypto.key_pair(), initiator=False, now=0)
    with pytest.raises(HandshakeError):
        shuttle(a, b)
    assert a.state is State.FAILED


def test_garbage_after_the_handshake_and_data_after_final() -> None:
    a, b = pair()
    shuttle(a, b)
    with pytest.raises(ProtocolError):
        b.receive_data(encode_frame(b"\x00" * 40))
    a, b = pair()
    shuttle(a, b)
    a.close()
    shuttle(a, b)
    with pytest.raises(ProtocolError, match="after the peer closed"):
        b.receive_data(encode_frame(b"\x00" * 40))


def test_message_size_limit() -> None:
    a, b = pair(max_message=100)
    shuttle(a, b)
    a.send(b"x" * 100)
    shuttle(a, b)
    with pytest.raises(LocalError):
        a.send(b"x" * 101)
    big = SecureConnection(crypto.key_pair(), initiator=True, now=0.0)
    small = SecureConnection(crypto.key_pair(), initiator=False, now=0.0, max_message=100)
    shuttle(big, small)
    big.send(b"x" * 200)
    with pytest.raises(ProtocolError, match="limit"):
        shuttle(big, small)
