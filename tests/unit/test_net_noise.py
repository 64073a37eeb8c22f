"""Noise XX handshake: our state machine, the identity layer, and a cross-check against the
independent ``noiseprotocol`` implementation."""

from __future__ import annotations

import pytest
from noise.connection import Keypair, NoiseConnection

from autobase_py import crypto
from autobase_py.errors import HandshakeError, LocalError
from autobase_py.net.noise import PROLOGUE, PROTOCOL_NAME, CipherState, Handshake, NoiseXX


def run(initiator: Handshake, responder: Handshake) -> list[bytes]:
    messages = [initiator.write()]
    responder.read(messages[-1])
    messages.append(responder.write())
    initiator.read(messages[-1])
    messages.append(initiator.write())
    responder.read(messages[-1])
    return messages


def test_both_sides_learn_each_others_ed25519_key_and_agree_on_keys() -> None:
    a, b = crypto.key_pair(), crypto.key_pair()
    i = Handshake(a, initiator=True, expected_remote_key=b.public_key)
    r = Handshake(b, initiator=False)
    sizes = [len(m) for m in run(i, r)]
    assert sizes == [32, 32 + 48 + 96 + 16, 48 + 96 + 16]
    assert i.result is not None and r.result is not None
    assert i.result.remote_public_key == b.public_key
    assert r.result.remote_public_key == a.public_key
    assert i.result.handshake_hash == r.result.handshake_hash
    assert i.result.send_key == r.result.receive_key
    assert i.result.receive_key == r.result.send_key
    assert i.result.send_key != i.result.receive_key


def test_unexpected_remote_key_is_refused_by_either_side() -> None:
    a, b, c = crypto.key_pair(), crypto.key_pair(), crypto.key_pair()
    with pytest.raises(HandshakeError, match="expected"):
        run(
            Handshake(a, initiator=True, expected_remote_key=c.public_key),
            Handshake(b, initiator=False),
        )
    with pytest.raises(HandshakeError, match="expected"):
        run(
            Handshake(a, initiator=True),
            Handshake(b, initiator=False, expected_remote_key=c.public_key),
        )


def test_flipped_bytes_in_message_two() -> None:
    a, b = crypto.key_pair(), crypto.key_pair()
    eph = crypto.random_bytes(32)
    i = Handshake(a, initiator=True, ephemeral_secret=eph)
    r = Handshake(b, initiator=False)
    m1 = i.write()
    r.read(m1)
    m2 = r.write()
    for pos in range(len(m2)):
        bad = bytearray(m2)
        bad[pos] ^= 0x80
        fresh = Handshake(a, initiator=True, ephemeral_secret=eph)
        assert fresh.write() == m1
        with pytest.raises(HandshakeError):
            fresh.read(bytes(bad))


def test_flipped_bytes_in_message_three() -> None:
    a, b = crypto.key_pair(), crypto.key_pair()
    eph_a, eph_b = crypto.random_bytes(32), crypto.random_bytes(32)

    def responder_waiting_for_three() -> tuple[Handshake, bytes]:
        i = Handshake(a, initiator=True, ephemeral_secret=eph_a)
        r = Handshake(b, initiator=False, ephemeral_secret=eph_b)
        r.read(i.write())
        i.read(r.write())
        return r, i.write()

    _, m3 = responder_waiting_for_three()
    for pos in range(len(m3)):
        r, again = responder_waiting_for_three()
        assert again == m3  # deterministic given the ephemerals
        bad = bytearray(m3)
        bad[pos] ^= 0x04
        with pytest.raises(HandshakeError):
            r.read(bytes(bad))
        assert not r.complete


def test_wrong_lengths_are_refused() -> None:
    a, b = crypto.key_pair(), crypto.key_pair()
    r = Handshake(b, initiator=False)
    with pytest.raises(HandshakeError, match="expected 32"):
        r.read(b"\x00" * 33)
    i = Handshake(a, initiator=True)
    i.write()
    with pytest.raises(HandshakeError):
        i.read(b"")


def test_low_order_ephemeral_is_refused() -> None:
    b = crypto.key_pair()
    r = Handshake(b, initiator=False)
    r.read(b"\x00" * 32)  # msg 1 is only hashed; the DH with it happens when writing msg 2
    with pytest.raises(HandshakeError, match="X25519"):
        r.write()


def test_claiming_a_key_that_does_not_match_the_static_key_fails() -> None:
    a, b, c = crypto.key_pair(), crypto.key_pair(), crypto.key_pair()

    class Impostor(Handshake):
        def _identity(self, payload_hash: bytes) -> bytes:
            # Signs correctly with c's key, but the Noise static key is a's.
            tag = b"autobase_py/net/handshake/v1"
            return c.public_key + crypto.sign(tag + payload_hash, c.secret_key)

    with pytest.raises(HandshakeError, match="does not match"):
        run(Handshake(b, initiator=True), Impostor(a, initiator=False))


def test_a_bad_identity_signature_fails() -> None:
    a, b = crypto.key_pair(), crypto.key_pair()

    class BadSigner(Handshake):
        def _identity(self, payload_hash: bytes) -> bytes:
            signature = crypto.sign(b"other" + payload_hash, self.key_pair.secret_key)
            return self.key_pair.public_key + signature

    with pytest.raises(HandshakeError, match="signature"):
        run(BadSigner(a, initiator=True), Handshake(b, initiator=False))


def test_out_of_turn_use_is_a_local_error() -> None:
    a = crypto.key_pair()
    r = Handshake(a, initiator=False)
    with pytest.raises(LocalError):
        r.write()
    i = Handshake(a, initiator=True)
    with pytest.raises(LocalError):
        i.read(b"\x00" * 32)
    with pytest.raises(LocalError):
        _ = i.noise.handshake_hash


# -- cross-check against noiseprotocol -----------------------------------------------------


def _theirs(initiator: bool, static_secret: bytes) -> NoiseConnection:
    conn = NoiseConnection.from_name(PROTOCOL_NAME)
    conn.set_prologue(PROLOGUE)
    conn.set_keypair_from_private_bytes(Keypair.STATIC, static_secret)
    if initiator:
        conn.set_as_initiator()
    else:
        conn.set_as_responder()
    conn.start_handshake()
    return conn


def _transport_matches(ours: NoiseXX, theirs: NoiseConnection) -> None:
    send_key, receive_key = ours.split()
    assert ours.handshake_hash == theirs.get_handshake_hash()
    for n in range(3):
        plaintext = b"message %d" % n
        mine = CipherState(send_key)
        mine.nonce = n
        theirs_out = CipherState(receive_key)
        theirs_out.nonce = n
        # Their side decrypts what our send key produces, and vice versa.
        assert theirs.decrypt(mine.encrypt_with_ad(b"", plaintext)) == plaintext
        assert theirs_out.decrypt_with_ad(b"", theirs.encrypt(plaintext)) == plaintext


def test_our_initiator_against_their_responder() -> None:
    ours = NoiseXX(initiator=True, static_secret=crypto.random_bytes(32))
    theirs = _theirs(False, crypto.random_bytes(32))
    assert theirs.read_message(ours.write_message(b"hello")) == b"hello"
    assert ours.read_message(theirs.write_message(b"payload two")) == b"payload two"
    assert theirs.read_message(ours.write_message(b"three")) == b"three"
    assert theirs.handshake_finished
    assert ours.complete
    _transport_matches(ours, theirs)


def test_their_initiator_against_our_responder() -> None:
    theirs = _theirs(True, crypto.random_bytes(32))
    ours = NoiseXX(initiator=False, static_secret=crypto.random_bytes(32))
    assert ours.read_message(theirs.write_message(b"")) == b""
    assert theirs.read_message(ours.write_message(b"x" * 100)) == b"x" * 100
    assert ours.read_message(theirs.write_message(b"fin")) == b"fin"
    assert theirs.handshake_finished
    _transport_matches(ours, theirs)


def test_identity_keys_derive_the_noise_static_keys() -> None:
    kp = crypto.key_pair()
    hs = Handshake(kp, initiator=True)
    assert hs.noise.static_public == crypto.ed25519_pk_to_x25519(kp.public_key)
