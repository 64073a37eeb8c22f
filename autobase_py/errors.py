"""One error root for the whole library, with stable string codes.

Every error the library raises on purpose is an :class:`AutobaseError`. Each class carries a
``code``: a short, stable, upper-case string that may cross the wire (RPC errors, events, logs)
and that callers may match on. Codes never change meaning once released.

Two families matter to callers:

* *local* mistakes (``LocalError``): the caller did something wrong (appended to a replica,
  removed the last indexer, passed a malformed key). Fix the call.
* *remote* problems (``RemoteError``): a peer or a stored byte sequence is bad (invalid proof,
  undecodable block, protocol violation). Drop the peer or report the writer; never crash.

Modules may define narrower subclasses next to the code that raises them, but they always
derive from one of the classes here so ``except AutobaseError`` catches everything.
"""

from __future__ import annotations

from typing import ClassVar


class AutobaseError(Exception):
    """Root of every error the library raises on purpose."""

    code: ClassVar[str] = "AUTOBASE_ERROR"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class LocalError(AutobaseError):
    """The caller used the library wrongly."""

    code = "LOCAL_ERROR"


class RemoteError(AutobaseError):
    """Data from a peer or from storage is invalid."""

    code = "REMOTE_ERROR"


# --- encoding -------------------------------------------------------------------------------


class DecodeError(RemoteError):
    """Bytes could not be decoded into the expected message."""

    code = "DECODE_ERROR"


class EncodeError(LocalError):
    """A value cannot be encoded (unsupported type, too large, too deep)."""

    code = "ENCODE_ERROR"


class InvalidKeyError(LocalError):
    """A key in text or bytes form is malformed (wrong length, bad characters)."""

    code = "INVALID_KEY"


# --- verification ---------------------------------------------------------------------------


class VerificationError(RemoteError):
    """Cryptographic verification failed."""

    code = "VERIFICATION_FAILED"


class InvalidSignatureError(VerificationError):
    code = "INVALID_SIGNATURE"


class InvalidProofError(VerificationError):
    code = "INVALID_PROOF"


class EquivocationError(VerificationError):
    """Two valid signatures for one (length, fork) with different tree hashes."""

    code = "EQUIVOCATION"


# --- logs and storage -----------------------------------------------------------------------


class StorageError(AutobaseError):
    """The storage engine failed (I/O error, corrupt database)."""

    code = "STORAGE_ERROR"


class StorageLockedError(StorageError):
    """Another process holds the storage folder's exclusive lock."""

    code = "STORAGE_LOCKED"


class StorageClosedError(LocalError):
    code = "STORAGE_CLOSED"


class NotWritableError(LocalError):
    """A write was attempted on something this node cannot write (a replica, a removed writer)."""

    code = "NOT_WRITABLE"


class LogFrozenError(LocalError):
    """The log was frozen after equivocation was detected; it accepts nothing more."""

    code = "LOG_FROZEN"


class BlockNotAvailableError(LocalError):
    """The block is not stored locally (a sparse replica) or lies past the log's length."""

    code = "BLOCK_NOT_AVAILABLE"


class OutOfRangeError(LocalError):
    """An index, length or version lies outside what the object holds."""

    code = "OUT_OF_RANGE"


# --- linearizer and base --------------------------------------------------------------------


class MissingDependencyError(LocalError):
    """A node was added before its own previous node or one of its heads."""

    code = "MISSING_DEPENDENCY"


class InvalidNodeError(RemoteError):
    """A node is structurally invalid (bad length, bad batch, self-referencing head)."""

    code = "INVALID_NODE"


class MembershipError(LocalError):
    """An indexer-set change that is not allowed (for example removing the last indexer)."""

    code = "MEMBERSHIP_ERROR"


class ApplyError(AutobaseError):
    """The user's apply function raised or interrupted; the base stopped without half-applying."""

    code = "APPLY_ERROR"


class ClosedError(LocalError):
    """The object was closed by its owner."""

    code = "CLOSED"


# --- network --------------------------------------------------------------------------------


class ProtocolError(RemoteError):
    """A peer violated the wire protocol; the connection is closed."""

    code = "PROTOCOL_ERROR"


class HandshakeError(ProtocolError):
    code = "HANDSHAKE_FAILED"


class TimedOutError(AutobaseError):
    """An operation did not finish within its deadline."""

    code = "TIMEOUT"


class ChannelClosedError(AutobaseError):
    code = "CHANNEL_CLOSED"


class RpcError(AutobaseError):
    """An RPC call failed; ``code`` is the wire code the server sent (DESIGN.md section 8)."""

    code = "INTERNAL"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code  # type: ignore[misc]


__all__ = [
    "AutobaseError",
    "ApplyError",
    "BlockNotAvailableError",
    "ChannelClosedError",
    "ClosedError",
    "DecodeError",
    "EncodeError",
    "EquivocationError",
    "HandshakeError",
    "InvalidKeyError",
    "InvalidNodeError",
    "InvalidProofError",
    "InvalidSignatureError",
    "LocalError",
    "LogFrozenError",
    "MembershipError",
    "MissingDependencyError",
    "NotWritableError",
    "OutOfRangeError",
    "ProtocolError",
    "RemoteError",
    "RpcError",
    "StorageClosedError",
    "StorageError",
    "StorageLockedError",
    "TimedOutError",
    "VerificationError",
]
