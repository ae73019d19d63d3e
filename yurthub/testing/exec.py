"""``kubectl exec`` over WebSockets: RFC 6455 framing and the Kubernetes channel protocol.

After the ``101`` handshake (`handshake_response`), `ExecSession` speaks the
``v5.channel.k8s.io`` / ``v4.channel.k8s.io`` protocol: every binary message starts with a
channel byte (0 stdin, 1 stdout, 2 stderr, 3 error/status, 4 resize; v5 adds 255, a
"close stream" signal whose second byte names the stream). A finished command writes a
``Status`` on channel 3 (``Success``, or ``Failure``/``NonZeroExitCode`` with the exit
code as an ``ExitCode`` cause) and then closes the WebSocket normally (code 1000).

The "container" runs a few simulated commands: ``echo``, ``cat`` (stdin to stdout until
stdin closes), ``sh -c "exit N"`` (and ``sh -c "<simple command>"``), ``sleep N``,
``true``, ``false``, ``hostname`` and ``env``. Anything else fails as a missing
executable does on a real node.
"""

from __future__ import annotations

import base64
import hashlib
import json
import shlex
import struct
from collections.abc import Sequence
from typing import Any

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure

__all__ = [
    "CHANNEL_PROTOCOLS",
    "ExecSession",
    "FrameDecoder",
    "WebSocketError",
    "encode_frame",
    "handshake_response",
    "websocket_accept",
]

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
CHANNEL_PROTOCOLS = ("v5.channel.k8s.io", "v4.channel.k8s.io")

OP_CONTINUATION = 0x0
OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA

STDIN, STDOUT, STDERR, ERROR, RESIZE, CLOSE_STREAM = 0, 1, 2, 3, 4, 255


class WebSocketError(Exception):
    """The peer broke the WebSocket framing rules."""


def websocket_accept(key: str) -> str:
    """The ``Sec-WebSocket-Accept`` value for a client's ``Sec-WebSocket-Key``."""
    return base64.b64encode(hashlib.sha1(key.encode("ascii") + _GUID).digest()).decode("ascii")


def handshake_response(key: str, subprotocol: str | None) -> bytes:
    """The complete ``101 Switching Protocols`` response head accepting a WebSocket."""
    lines = [
        b"HTTP/1.1 101 Switching Protocols",
        b"Upgrade: websocket",
        b"Connection: Upgrade",
        b"Sec-WebSocket-Accept: " + websocket_accept(key).encode("ascii"),
    ]
    if subprotocol:
        lines.append(b"Sec-WebSocket-Protocol: " + subprotocol.encode("ascii"))
    return b"\r\n".join(lines) + b"\r\n\r\n"


def encode_frame(
    opcode: int, payload: bytes, *, mask: bytes | None = None, fin: bool = True
) -> bytes:
    """Encode one frame; servers send unmasked frames, clients pass a 4-byte ``mask``."""
    head = bytearray([(0x80 if fin else 0) | opcode])
    length = len(payload)
    mask_bit = 0x80 if mask is not None else 0
    if length < 126:
        head.append(mask_bit | length)
    elif length < 1 << 16:
        head.append(mask_bit | 126)
        head += struct.pack("!H", length)
    else:
        head.append(mask_bit | 127)
        head += struct.pack("!Q", length)
    if mask is None:
        return bytes(head) + payload
    return bytes(head) + mask + _unmask(payload, mask)


def _unmask(payload: bytes, mask: bytes) -> bytes:
    if not payload:
        return b""
    repeated = (mask * (len(payload) // 4 + 1))[: len(payload)]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(repeated, "big")).to_bytes(
        len(payload), "big"
    )


class FrameDecoder:
    """Incremental frame parser: feed bytes, get whole messages and control frames back.

    ``masked`` says whether frames must be masked (True for a server reading a client,
    False for a client, None to accept both). Fragmented messages are reassembled.
    """

    def __init__(self, *, masked: bool | None = True, max_message: int = 16 << 20) -> None:
        self._buffer = bytearray()
        self._masked = masked
        self._max = max_message
        self._fragments: list[bytes] = []
        self._fragment_opcode: int | None = None

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        """Consume ``data``; return the completed ``(opcode, payload)`` messages in order."""
        self._buffer += data
        messages: list[tuple[int, bytes]] = []
        while True:
            frame = self._next_frame()
            if frame is None:
                return messages
            fin, opcode, payload = frame
            if opcode >= 0x8:
                if not fin or len(payload) > 125:
                    raise WebSocketError("invalid control frame")
                messages.append((opcode, payload))
            elif opcode == OP_CONTINUATION:
                if self._fragment_opcode is None:
                    raise WebSocketError("continuation frame without a message")
                self._fragments.append(payload)
                if sum(map(len, self._fragments)) > self._max:
                    raise WebSocketError("message too large")
                if fin:
                    messages.append((self._fragment_opcode, b"".join(self._fragments)))
                    self._fragments, self._fragment_opcode = [], None
            elif opcode in (OP_TEXT, OP_BINARY):
                if self._fragment_opcode is not None:
                    raise WebSocketError("new message inside a fragmented one")
                if fin:
                    messages.append((opcode, payload))
                else:
                    self._fragment_opcode, self._fragments = opcode, [payload]
            else:
                raise WebSocketError(f"unknown opcode {opcode}")

    def _next_frame(self) -> tuple[bool, int, bytes] | None:
        buffer = self._buffer
        if len(buffer) < 2:
            return None
        first, second = buffer[0], buffer[1]
        if first & 0x70:
            raise WebSocketError("reserved bits set")
        masked = bool(second & 0x80)
        if self._masked is not None and masked != self._masked:
            raise WebSocketError("frame masking is wrong for this direction")
        length = second & 0x7F
        offset = 2
        if length == 126:
            if len(buffer) < 4:
                return None
            (length,) = struct.unpack_from("!H", buffer, 2)
            offset = 4
        elif length == 127:
            if len(buffer) < 10:
                return None
            (length,) = struct.unpack_from("!Q", buffer, 2)
            offset = 10
        if length > self._max:
            raise WebSocketError("frame too large")
        mask = b""
        if masked:
            if len(buffer) < offset + 4:
                return None
            mask = bytes(buffer[offset : offset + 4])
            offset += 4
        if len(buffer) < offset + length:
            return None
        payload = bytes(buffer[offset : offset + length])
        del buffer[: offset + length]
        if masked:
            payload = _unmask(payload, mask)
        return bool(first & 0x80), first & 0x0F, payload


def _status(exit_code: int, command: Sequence[str]) -> dict[str, Any]:
    if exit_code == 0:
        return {"metadata": {}, "status": "Success"}
    return {
        "metadata": {},
        "status": "Failure",
        "message": (
            f"command terminated with non-zero exit code: error executing command "
            f"[{' '.join(command)}], exit code {exit_code}"
        ),
        "reason": "NonZeroExitCode",
        "details": {"causes": [{"reason": "ExitCode", "message": str(exit_code)}]},
    }


class ExecSession(Protocol):
    """One exec stream: runs a simulated command over the Kubernetes channel protocol.

    ``clock`` schedules ``sleep`` and the close-handshake timeout; ``stdin``/``stdout``/
    ``stderr``/``tty`` are the streams the client asked for. ``pod`` supplies
    ``hostname``. The session ends the connection after its close handshake.
    """

    close_timeout = 5.0

    def __init__(
        self,
        clock: IReactorTime,
        command: Sequence[str],
        *,
        subprotocol: str,
        stdin: bool = False,
        stdout: bool = True,
        stderr: bool = True,
        tty: bool = False,
        pod: str = "",
    ) -> None:
        self._clock = clock
        self.command = list(command)
        self.subprotocol = subprotocol
        self._stdin = stdin
        self._stdout = stdout
        self._stderr = stderr and not tty
        self._tty = tty
        self._pod = pod
        self._decoder = FrameDecoder(masked=True)
        self._timers: list[IDelayedCall] = []
        self._on_stdin: Any = None
        self._on_stdin_closed: Any = None
        self.exit_code: int | None = None
        self._closing = False
        self._gone = False

    # -- connection -----------------------------------------------------------

    def connectionMade(self) -> None:
        """Start the command."""
        self._run(self.command)

    def dataReceived(self, data: bytes) -> None:
        """Decode frames and route them to the command's stdin or the control logic."""
        try:
            messages = self._decoder.feed(data)
        except WebSocketError:
            self._send_close(1002)
            self._drop()
            return
        for opcode, payload in messages:
            if self._gone:
                return
            if opcode == OP_PING:
                self._send(OP_PONG, payload)
            elif opcode == OP_CLOSE:
                if not self._closing:
                    self._send(OP_CLOSE, payload[:2])
                self._drop()
            elif opcode == OP_BINARY and payload:
                self._channel_message(payload[0], payload[1:])

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """Cancel timers: nothing of the session may outlive its connection."""
        self._gone = True
        self._cancel_timers()

    def abort(self) -> None:
        """Drop the connection at once."""
        self._cancel_timers()
        if self.transport is not None and not self._gone:
            abort = getattr(self.transport, "abortConnection", None)
            if abort is not None:
                abort()
            else:
                self.transport.loseConnection()

    def _cancel_timers(self) -> None:
        timers, self._timers = self._timers, []
        for timer in timers:
            if timer.active():
                timer.cancel()

    def _later(self, seconds: float, function: Any, *args: Any) -> None:
        self._timers = [t for t in self._timers if t.active()]
        self._timers.append(self._clock.callLater(seconds, function, *args))

    def _send(self, opcode: int, payload: bytes) -> None:
        if self.transport is not None and not self._gone:
            self.transport.write(encode_frame(opcode, payload))

    def _send_close(self, code: int) -> None:
        self._closing = True
        self._send(OP_CLOSE, struct.pack("!H", code))

    def _drop(self) -> None:
        self._cancel_timers()
        if self.transport is not None and not self._gone:
            self.transport.loseConnection()
        self._gone = True

    def _channel_message(self, channel: int, data: bytes) -> None:
        if channel == STDIN:
            if self._stdin and self._on_stdin is not None and self.exit_code is None:
                self._on_stdin(data)
        elif channel == CLOSE_STREAM and self.subprotocol.startswith("v5.") and data:
            if data[0] == STDIN:
                self._stdin_closed()
        # RESIZE and anything else: a terminal size has no meaning here.

    def _stdin_closed(self) -> None:
        callback, self._on_stdin_closed = self._on_stdin_closed, None
        self._on_stdin = None
        if callback is not None and self.exit_code is None:
            callback()

    # -- output ---------------------------------------------------------------

    def write_stdout(self, data: bytes) -> None:
        """Send ``data`` on the stdout channel (dropped when the client did not ask for it)."""
        if self._stdout and data:
            self._send(OP_BINARY, bytes([STDOUT]) + data)

    def write_stderr(self, data: bytes) -> None:
        """Send ``data`` on stderr (on stdout for a tty, as a terminal merges them)."""
        if self._tty:
            self.write_stdout(data)
        elif self._stderr and data:
            self._send(OP_BINARY, bytes([STDERR]) + data)

    def finish(self, exit_code: int, status: dict[str, Any] | None = None) -> None:
        """End the command: Status on channel 3, then a normal WebSocket close."""
        if self.exit_code is not None:
            return
        self.exit_code = exit_code
        self._on_stdin = self._on_stdin_closed = None
        body = status if status is not None else _status(exit_code, self.command)
        self._send(OP_BINARY, bytes([ERROR]) + json.dumps(body).encode("utf-8"))
        self._send_close(1000)
        self._later(self.close_timeout, self._drop)

    # -- the simulated container ----------------------------------------------

    def _run(self, argv: list[str]) -> None:
        if not argv:
            self.finish(
                1,
                {"metadata": {}, "status": "Failure", "reason": "BadRequest",
                 "message": "you must specify at least one command for the container"},
            )
            return
        program, args = argv[0].rsplit("/", 1)[-1], argv[1:]
        if program == "echo":
            newline = True
            if args[:1] == ["-n"]:
                newline, args = False, args[1:]
            self.write_stdout((" ".join(args) + ("\n" if newline else "")).encode())
            self.finish(0)
        elif program == "cat" and not args:
            if not self._stdin:
                self.finish(0)
                return
            self._on_stdin = self.write_stdout
            self._on_stdin_closed = lambda: self.finish(0)
        elif program in ("sh", "bash", "ash") and args[:1] == ["-c"] and len(args) >= 2:
            try:
                words = shlex.split(args[1])
            except ValueError as error:
                self.write_stderr(f"{program}: syntax error: {error}\n".encode())
                self.finish(2)
                return
            if words[:1] == ["exit"]:
                try:
                    self.finish(int(words[1]) if len(words) > 1 else 0)
                except ValueError:
                    self.write_stderr(f"{program}: exit: Illegal number: {words[1]}\n".encode())
                    self.finish(2)
                return
            self._run(words)
        elif program == "sleep" and len(args) == 1:
            try:
                seconds = float(args[0].rstrip("s"))
            except ValueError:
                self.write_stderr(f"sleep: invalid number '{args[0]}'\n".encode())
                self.finish(1)
                return
            self._later(seconds, self.finish, 0)
        elif program == "true":
            self.finish(0)
        elif program == "false":
            self.finish(1)
        elif program == "hostname":
            self.write_stdout(f"{self._pod}\n".encode())
            self.finish(0)
        elif program == "env":
            self.write_stdout(
                f"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n"
                f"HOSTNAME={self._pod}\nKUBERNETES_SERVICE_HOST=10.96.0.1\n"
                f"KUBERNETES_SERVICE_PORT=443\n".encode()
            )
            self.finish(0)
        else:
            message = (
                "Internal error occurred: error executing command in container: failed to "
                "exec in container: OCI runtime exec failed: exec failed: unable to start "
                f'container process: exec: "{argv[0]}": executable file not found in $PATH: '
                "unknown"
            )
            self.finish(
                126,
                {"metadata": {}, "status": "Failure", "message": message,
                 "reason": "InternalError", "details": {"causes": [{"message": message}]},
                 "code": 500},
            )
