"""The two wire encodings of commands and events: BlueWren frames and JSON.

A :class:`Codec` turns one WebSocket message into :class:`Command` values and events
into WebSocket payloads. ``BinaryCodec`` speaks ``bluewren.v1`` (binary messages of one
or more BlueWren frames), ``JsonCodec`` speaks ``bluewren.json.v1`` (one JSON object per
text message). Both decode to the same commands, so the node's policy sees one shape.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any, Final

from bluewren import FrameDecoder, FrameError, decode_frames, encode_frame, encode_frames
from bluewren.node.commands import COMMANDS, ErrorCode, Kind, encode_envelope
from bluewren.store import StoredMessage

__all__ = ["OP_BINARY", "OP_TEXT", "BinaryCodec", "Codec", "Command", "CommandError", "JsonCodec"]

OP_TEXT: Final = 1
OP_BINARY: Final = 2
_U64_MAX: Final = (1 << 64) - 1


_ACK: Final = int(Kind.ACK)


class CommandError(Exception):
    """A command failed in a way the client is told about with an ERROR event."""

    def __init__(
        self,
        code: ErrorCode,
        message: str,
        retry_after: float | None = None,
        cmd: Command | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.retry_after = retry_after
        self.cmd = cmd
        self.extra = extra


@dataclass(slots=True)
class Command:
    """One decoded command. ``args`` holds the JSON arguments once parsed."""

    kind: int
    conv: int = 0
    seq: int = 0
    cmid: int = 0
    body: bytes = b""
    args: dict[str, Any] | None = None
    flags: int = 0

    def json_args(self) -> dict[str, Any]:
        """The command's JSON arguments (an object); CommandError BAD_REQUEST if not one."""
        if self.args is None:
            try:
                value = json.loads(self.body) if self.body else {}
            except (ValueError, UnicodeDecodeError) as exc:
                raise CommandError(
                    ErrorCode.BAD_REQUEST, f"the body of {_name(self.kind)} is not JSON: {exc}"
                ) from None
            if not isinstance(value, dict):
                raise CommandError(
                    ErrorCode.BAD_REQUEST, f"the body of {_name(self.kind)} must be a JSON object"
                )
            self.args = value
        return self.args


def _name(kind: int) -> str:
    try:
        return Kind(kind).name
    except ValueError:
        return f"kind 0x{kind:02x}"


def _json(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


class Codec:
    """Encoding of one subprotocol; see the module docstring."""

    opcode: int = OP_BINARY
    name: str = ""

    def decode(self, opcode: int, payload: bytes) -> tuple[list[Command], CommandError | None]:
        """The commands of one message, and the error that ended decoding (if any)."""
        raise NotImplementedError

    def event(
        self,
        kind: Kind,
        *,
        conv: int = 0,
        seq: int = 0,
        cmid: int = 0,
        obj: dict[str, Any] | None = None,
    ) -> bytes:
        """One event whose body is the JSON object ``obj`` (none if ``obj`` is None)."""
        raise NotImplementedError

    def ack(self, conv: int, seq: int, cmid: int) -> bytes:
        """The ACK of a stored SEND: ``event(Kind.ACK, ...)``, on the hot path."""
        return self.event(Kind.ACK, conv=conv, seq=seq, cmid=cmid)

    def deliveries(self, messages: list[StoredMessage]) -> list[bytes]:
        """DELIVER events for ``messages``, as WebSocket message payloads."""
        raise NotImplementedError

    def error(self, cmd: Command | None, err: CommandError) -> bytes:
        """The ERROR event answering ``cmd``."""
        obj: dict[str, Any] = {"code": int(err.code), "name": err.code.name, "message": err.message}
        if err.retry_after is not None:
            obj["retry_after"] = err.retry_after
        if err.extra:
            obj.update(err.extra)
        if cmd is not None:
            obj["command"] = _name(cmd.kind).lower()
        return self.event(
            Kind.ERROR,
            conv=cmd.conv if cmd else 0,
            cmid=cmd.cmid if cmd else 0,
            obj=obj,
        )


class BinaryCodec(Codec):
    """``bluewren.v1``: BlueWren frames in binary messages."""

    opcode = OP_BINARY
    name = "bluewren.v1"

    def __init__(self, max_body: int) -> None:
        self._max_body = max_body

    def decode(self, opcode: int, payload: bytes) -> tuple[list[Command], CommandError | None]:
        if opcode != OP_BINARY:
            return [], CommandError(
                ErrorCode.BAD_FRAME, "bluewren.v1 carries binary messages only; got a text message"
            )
        try:  # the common case: whole, valid frames
            frames = decode_frames(payload, self._max_body)
        except FrameError:
            pass  # decoded again below, to keep the frames before the bad one
        else:
            return [
                Command(kind, conv, seq, cmid, body, None, flags)
                for kind, flags, conv, seq, cmid, body in frames
            ], None
        error: CommandError | None = None
        # FrameDecoder rather than decode_frames: its FrameError carries the frames
        # before the bad one in every case, and those must still be handled.
        decoder = FrameDecoder(self._max_body)
        try:
            frames = decoder.feed(payload)
            if decoder.buffered:
                error = CommandError(
                    ErrorCode.BAD_FRAME,
                    f"truncated BlueWren frame: {decoder.buffered} bytes after the last "
                    f"complete frame; a message must end on a frame boundary",
                )
        except FrameError as exc:
            frames = getattr(exc, "frames", [])
            code = ErrorCode.TOO_LARGE if "exceeds" in str(exc) else ErrorCode.BAD_FRAME
            error = CommandError(code, str(exc))
        commands = [
            Command(kind, conv, seq, cmid, body, None, flags)
            for kind, flags, conv, seq, cmid, body in frames
        ]
        return commands, error

    def event(
        self,
        kind: Kind,
        *,
        conv: int = 0,
        seq: int = 0,
        cmid: int = 0,
        obj: dict[str, Any] | None = None,
    ) -> bytes:
        return encode_frame(int(kind), _json(obj) if obj is not None else None, conv, seq, cmid)

    def ack(self, conv: int, seq: int, cmid: int) -> bytes:
        return encode_frame(_ACK, None, conv, seq, cmid)

    def deliveries(self, messages: list[StoredMessage]) -> list[bytes]:
        # A replay packs many frames into one message: one header per message, one write.
        return [
            encode_frames(
                [
                    (
                        int(Kind.DELIVER),
                        0,
                        m.conv,
                        m.seq,
                        m.cmid,
                        encode_envelope(m.sender, m.device, m.body),
                    )
                    for m in messages
                ]
            )
        ]


class JsonCodec(Codec):
    """``bluewren.json.v1``: one JSON object per text message."""

    opcode = OP_TEXT
    name = "bluewren.json.v1"

    def decode(self, opcode: int, payload: bytes) -> tuple[list[Command], CommandError | None]:
        try:
            if opcode != OP_TEXT:
                raise CommandError(
                    ErrorCode.BAD_FRAME,
                    "bluewren.json.v1 carries text messages only; got a binary message",
                )
            try:
                obj = json.loads(payload)
            except ValueError as exc:
                raise CommandError(ErrorCode.BAD_FRAME, f"message is not JSON: {exc}") from None
            if not isinstance(obj, dict):
                raise CommandError(ErrorCode.BAD_FRAME, "message must be a JSON object")
            return [self._command(obj)], None
        except CommandError as err:
            return [], err

    @staticmethod
    def _int(obj: dict[str, Any], key: str) -> int:
        value = obj.get(key, 0)
        if isinstance(value, str) and value.isdigit():
            value = int(value)
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= _U64_MAX:
            raise CommandError(
                ErrorCode.BAD_REQUEST, f"{key!r} must be an unsigned 64-bit integer, got {value!r}"
            )
        return value

    def _command(self, obj: dict[str, Any]) -> Command:
        name = obj.get("kind")
        kind: int
        try:
            kind = Kind[name.upper()] if isinstance(name, str) else -1
        except KeyError:
            kind = -1
        if kind not in COMMANDS:
            # Keep conv/cmid so the client can match the error to its request.
            cmd = Command(0, _safe_int(obj.get("conv")), 0, _safe_int(obj.get("cmid")))
            raise CommandError(ErrorCode.UNKNOWN_KIND, f"unknown command kind {name!r}", cmd=cmd)
        cmd = Command(kind, self._int(obj, "conv"), self._int(obj, "seq"), self._int(obj, "cmid"))
        if kind == Kind.HELLO:
            token = obj.get("token")
            if not isinstance(token, str):
                raise CommandError(ErrorCode.BAD_REQUEST, "hello needs a 'token' string")
            cmd.body = token.encode()
        elif kind == Kind.SEND:
            if "body_b64" in obj:
                try:
                    cmd.body = base64.b64decode(obj["body_b64"], validate=True)
                except (binascii.Error, TypeError, ValueError):
                    raise CommandError(ErrorCode.BAD_REQUEST, "'body_b64' is not base64") from None
            elif isinstance(obj.get("body"), str):
                cmd.body = obj["body"].encode()
            else:
                raise CommandError(ErrorCode.BAD_REQUEST, "send needs a 'body' string")
        elif kind == Kind.SYNC:
            cursors = obj.get("cursors", {})
            if not isinstance(cursors, dict):
                raise CommandError(ErrorCode.BAD_REQUEST, "'cursors' must be an object")
            cmd.args = cursors
        else:
            cmd.args = obj
        return cmd

    def event(
        self,
        kind: Kind,
        *,
        conv: int = 0,
        seq: int = 0,
        cmid: int = 0,
        obj: dict[str, Any] | None = None,
    ) -> bytes:
        out: dict[str, Any] = {"kind": kind.name.lower()}
        if conv:
            out["conv"] = conv
        if seq:
            out["seq"] = seq
        if cmid:
            out["cmid"] = cmid
        if obj is not None:
            if kind == Kind.SYNCED:
                out["cursors"] = obj
            else:
                out.update(obj)
        return _json(out)

    def deliveries(self, messages: list[StoredMessage]) -> list[bytes]:
        return [self.delivery(m) for m in messages]

    @staticmethod
    def delivery(m: StoredMessage) -> bytes:
        """One DELIVER as a JSON object (``body`` if UTF-8 text, else ``body_b64``)."""
        out: dict[str, Any] = {
            "kind": "deliver",
            "conv": m.conv,
            "seq": m.seq,
            "cmid": m.cmid,
            "sender": m.sender,
            "device": m.device,
        }
        try:
            out["body"] = m.body.decode()
        except UnicodeDecodeError:
            out["body_b64"] = base64.b64encode(m.body).decode()
        return _json(out)


def _safe_int(value: object) -> int:
    return value if isinstance(value, int) and 0 <= value <= _U64_MAX else 0
