"""One unary gRPC call over the kubelet's unix socket: HTTP/2 frames and a protobuf reader.

The agent makes one kind of gRPC call: an empty request to the kubelet's
PodResources service, a response of nested messages with strings. grpcio
costs the agent ~17 MiB of RSS (its C core; issue 20's budget is 60 MiB for
the whole agent), h2's connection state machine ~1 MiB, protobuf's runtime
~2 MiB: this module writes the few frames of one call itself (hyperframe's
frame codec, hpack's header codec: ~0.8 MiB) and reads the messages in ~40
lines. The framing is gRPC's HTTP/2 mapping
(github.com/grpc/grpc, doc/PROTOCOL-HTTP2.md): POST ``/<service>/<method>``,
``content-type: application/grpc``, ``te: trailers``; each message is a
1-byte compressed flag + 4-byte big-endian length + the protobuf bytes; the
status is the ``grpc-status`` (and ``grpc-message``) trailer, or a header
of a trailers-only response.

The tests call it against grpcio's own server (``tests/agent/test_podresources.py``)
and compare the reader with protobuf's on generated messages.
"""

from __future__ import annotations

import socket
import urllib.parse
from collections.abc import Iterator

__all__ = ["RpcError", "StatusCode", "call", "fields"]


class StatusCode:
    """The gRPC status codes the callers tell apart (doc/statuscodes.md)."""

    OK = 0
    UNIMPLEMENTED = 12
    UNAVAILABLE = 14
    NAMES = {0: "OK", 1: "CANCELLED", 2: "UNKNOWN", 3: "INVALID_ARGUMENT", 4: "DEADLINE_EXCEEDED", 5: "NOT_FOUND",
             6: "ALREADY_EXISTS", 7: "PERMISSION_DENIED", 8: "RESOURCE_EXHAUSTED", 9: "FAILED_PRECONDITION",
             10: "ABORTED", 11: "OUT_OF_RANGE", 12: "UNIMPLEMENTED", 13: "INTERNAL", 14: "UNAVAILABLE",
             15: "DATA_LOSS", 16: "UNAUTHENTICATED"}


class RpcError(Exception):
    """A call that did not return OK: ``code`` (a StatusCode number) and ``details``."""

    def __init__(self, code: int, details: str) -> None:
        super().__init__(f"StatusCode.{StatusCode.NAMES.get(code, code)}: {details}")
        self.code, self.details = code, details


def call(socket_path: str, path: str, request: bytes = b"", *, timeout_s: float = 5.0,
         max_bytes: int = 64 * 2**20) -> bytes:
    """The response message of the unary call ``path`` (``/package.Service/Method``) on ``unix://socket_path``.

    Raises RpcError: UNAVAILABLE when the socket does not answer (as grpcio),
    DEADLINE_EXCEEDED after ``timeout_s``, else the server's status. The codecs
    (hpack, hyperframe) are imported once a socket answers: an agent without a kubelet never
    loads them.
    """
    try:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    except OSError as exc:  # pragma: no cover - no unix sockets on this platform
        raise RpcError(StatusCode.UNAVAILABLE, str(exc)) from None
    sock.settimeout(timeout_s)
    try:
        try:
            sock.connect(socket_path)
        except OSError as exc:
            raise RpcError(StatusCode.UNAVAILABLE, f"unix:{socket_path}: {exc.strerror or exc}") from None
        from hpack import HPACKError
        from hyperframe.exceptions import HyperframeError

        try:
            return _exchange(sock, path, request, max_bytes)
        except TimeoutError:
            raise RpcError(4, f"no answer in {timeout_s} s") from None
        except OSError as exc:
            raise RpcError(StatusCode.UNAVAILABLE, f"unix:{socket_path}: {exc.strerror or exc}") from None
        except (HPACKError, HyperframeError, UnicodeDecodeError) as exc:
            raise RpcError(13, f"HTTP/2 protocol error: {type(exc).__name__}: {exc}") from None
    finally:
        sock.close()


_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_STREAM = 1  # the one stream of the call


def _exchange(sock: socket.socket, path: str, request: bytes, max_bytes: int) -> bytes:
    """The call's HTTP/2 frames on a connected socket (RFC 9113), with hyperframe's frame codec and
    hpack's header codec: the client preface and SETTINGS (no push; a stream window of 2^31 - 1 and
    the connection's widened by 2^30, so the answer needs no WINDOW_UPDATE from us), HEADERS and DATA
    with END_STREAM; then SETTINGS and PINGs acknowledged, header blocks (HEADERS + CONTINUATION)
    decoded in order, DATA collected until END_STREAM."""
    from hpack import Decoder, Encoder
    from hyperframe.frame import (
        ContinuationFrame,
        DataFrame,
        Frame,
        GoAwayFrame,
        HeadersFrame,
        PingFrame,
        RstStreamFrame,
        SettingsFrame,
        WindowUpdateFrame,
    )

    headers = HeadersFrame(_STREAM, flags=["END_HEADERS"])
    headers.data = Encoder().encode([(":method", "POST"), (":scheme", "http"), (":path", path),
                                     (":authority", "localhost"), ("content-type", "application/grpc"),
                                     ("te", "trailers"), ("user-agent", "gpuledger-agent")])
    sock.sendall(_PREFACE
                 + SettingsFrame(0, settings={SettingsFrame.ENABLE_PUSH: 0,
                                              SettingsFrame.INITIAL_WINDOW_SIZE: 2**31 - 1}).serialize()
                 + WindowUpdateFrame(0, window_increment=2**30).serialize()
                 + headers.serialize()
                 + DataFrame(_STREAM, data=b"\0" + len(request).to_bytes(4, "big") + request,
                             flags=["END_STREAM"]).serialize())
    decoder, pending = Decoder(), bytearray()
    block, block_ends_stream = bytearray(), False
    body = bytearray()
    status: dict[str, str] = {}
    done = False
    while not done:
        while len(pending) < 9:
            pending += _recv(sock)
        frame, length = Frame.parse_frame_header(memoryview(bytes(pending[:9])))
        while len(pending) < 9 + length:
            pending += _recv(sock)
        frame.parse_body(memoryview(bytes(pending[9:9 + length])))
        del pending[:9 + length]
        if isinstance(frame, SettingsFrame) and "ACK" not in frame.flags:
            sock.sendall(SettingsFrame(0, flags=["ACK"]).serialize())
        elif isinstance(frame, PingFrame) and "ACK" not in frame.flags:
            sock.sendall(PingFrame(0, flags=["ACK"], opaque_data=frame.opaque_data).serialize())
        elif isinstance(frame, GoAwayFrame) and (frame.error_code or frame.last_stream_id < _STREAM):
            raise RpcError(StatusCode.UNAVAILABLE, f"connection closed by the server (GOAWAY {frame.error_code})")
        elif frame.stream_id != _STREAM:
            continue  # connection-level WINDOW_UPDATE, a graceful GOAWAY, an unknown frame type
        elif isinstance(frame, RstStreamFrame):
            raise RpcError(13, f"stream reset by the server (HTTP/2 error {frame.error_code})")
        elif isinstance(frame, (HeadersFrame, ContinuationFrame)):
            if isinstance(frame, HeadersFrame):
                block_ends_stream = "END_STREAM" in frame.flags
            block += frame.data
            if "END_HEADERS" in frame.flags:
                status.update((str(k), str(v)) for k, v in decoder.decode(bytes(block)))
                block.clear()
                done = block_ends_stream
        elif isinstance(frame, DataFrame):
            body += frame.data
            if len(body) > max_bytes:
                raise RpcError(8, f"response larger than {max_bytes} bytes")
            done = "END_STREAM" in frame.flags
    code = int(status.get("grpc-status", "2"))  # absent: UNKNOWN (the server did not end the call properly)
    if status.get(":status", "200") != "200":
        raise RpcError(StatusCode.UNAVAILABLE if code == 2 else code, f"HTTP status {status.get(':status')}")
    if code != StatusCode.OK:
        raise RpcError(code, urllib.parse.unquote(status.get("grpc-message", "")))
    if len(body) < 5 or body[0] != 0:
        raise RpcError(13, "the response is not one uncompressed gRPC message")
    n = int.from_bytes(body[1:5], "big")
    if len(body) != 5 + n:
        raise RpcError(13, f"the response message is {len(body) - 5} bytes, its prefix says {n}")
    return bytes(body[5:])


def _recv(sock: socket.socket) -> bytes:
    data = sock.recv(65536)
    if not data:
        raise RpcError(StatusCode.UNAVAILABLE, "the server closed the connection mid-call")
    return data


def fields(data: bytes | memoryview) -> Iterator[tuple[int, int, bytes | int]]:
    """(field number, wire type, value) of each field of a protobuf message: varints (type 0) as int,
    length-delimited (type 2: strings, bytes, sub-messages, packed repeats) as bytes; 64- and 32-bit
    fields as their raw bytes. Raises ValueError on a truncated or malformed message."""
    view = memoryview(data)
    i, end = 0, len(view)

    def varint() -> int:
        nonlocal i
        shift = out = 0
        while True:
            if i >= end or shift > 63:
                raise ValueError("truncated or overlong varint")
            b = view[i]
            i += 1
            out |= (b & 0x7F) << shift
            if b < 0x80:
                return out
            shift += 7

    while i < end:
        key = varint()
        number, kind = key >> 3, key & 7
        if kind == 0:
            yield number, kind, varint()
        elif kind == 2:
            n = varint()
            if i + n > end:
                raise ValueError("truncated length-delimited field")
            yield number, kind, bytes(view[i:i + n])
            i += n
        elif kind in (1, 5):
            n = 8 if kind == 1 else 4
            if i + n > end:
                raise ValueError("truncated fixed-width field")
            yield number, kind, bytes(view[i:i + n])
            i += n
        else:
            raise ValueError(f"unsupported protobuf wire type {kind}")
