"""Deadlines, a cap and a memory bound on a worker's connections, which uvicorn leaves unbounded.

uvicorn 0.55, as BentoML 1.4.40 runs it, has no deadline for receiving a request: its keep-alive
time-out covers only the idle time between requests, every byte resets it, and a connection that
sends nothing is never timed out. One client holding 28,000 slow connections left 0 of 100 requests
answered (issue 18). `DeadlineProtocol`, uvicorn's httptools protocol with three additions, closes them:

- **idle deadline**: a connection that sends nothing, new or between requests, is closed after `idle_s`;
- **request deadline**: from the first byte of a request, its headers and body must be in within
  `request_s`; otherwise the client gets 408 (unless its answer has started) and the connection closes;
- **head bound**: a head still arriving past MAX_HEAD_BYTES gets 431 and the connection closes;
- **arriving bytes**: the requests of a worker that are not whole after a read (a request sent at
  once never is) hold at most `max_arriving_bytes` together; past it, the connection whose request
  has been arriving longest is aborted. Without it, 1,000 connections each sending all but 16 bytes
  of a 1 MiB body (`loadtest.slow_client stalled-body`) took a worker from 137 to 1,151 MiB until
  the request deadline (at the cap, 4 GiB); with it, to 167 MiB;
- **send deadline**: an answer the client does not read holds memory (what the kernel's socket
  buffer cannot take waits in the transport's) and, without this, its slot for ever: asyncio's
  `close()` waits for unsent data to leave first. From the moment a connection's unsent data
  passes WRITE_HIGH_WATER (or it is closed with data unsent), it must make progress (a byte
  taken by the client) every `send_s`; otherwise it is aborted (nginx's `send_timeout`);
- **unsent bytes**: the unsent data of the stalled connections of a worker is bounded by
  `max_unsent_bytes`; past it, the connection stalled longest is aborted;
- **drain**: at shutdown, a request still arriving was never accepted: its connection is closed at
  once (its client may retry on another pod). Every connection still open `drain_s` later is
  aborted. uvicorn otherwise waits for each connection to close before the worker's shutdown hooks
  run, and a client that takes an answer slowly, or sends a body slowly, held a stopping worker
  18 s (measured; without a bound, past the pod's grace period, where SIGKILL skips the hooks);
- **cap**: at `max_connections` open connections in the worker, a new connection evicts the one that
  has waited longest without a request in the application (idle or slow: a request sent at once is
  never the oldest), or whose answer is stalled on its client; when every connection has a request
  in the application, the new one is refused. The cap sits below the worker's open-file limit, so
  `accept()` never fails for want of descriptors.

Every connection closed with data unsent is aborted (with a reset, so the kernel drops its copy too),
never closed after a flush. No timer runs while the application holds a complete request and its
answer leaves: answers in progress, keep-alive reuse and requests received in time are untouched.
Every close is counted by reason through `on_close`.

One send per answer: uvicorn writes an answer's head and its body in two `transport.write` calls,
each a send to the kernel, with its own TCP segment for the client to read. `OneSendTransport`
holds the head until the body's write joins it (or the next turn of the event loop, a close or an
abort), so a small answer leaves in one send and reaches the client in one read: 1.12x the
reference run's throughput, paired (docs/performance.md, "One send per answer"); a new connection
per request gained nothing, its cost being in the connection itself.

Memory: a connection that is not stalled holds less than WRITE_HIGH_WATER unsent; the stalled ones
together hold at most `max_unsent_bytes` plus the one answer that passed it (the largest answer the
service writes at once is /metrics or /docs.json, under 200 KB; static files go out in 64 KB chunks).
So a worker's connections hold at most max_connections x WRITE_HIGH_WATER + max_unsent_bytes + 1 MB
of answers (64 + 64 + 1 MB with the defaults), and max_arriving_bytes of requests still arriving
(16 MB; each head is bounded too, at MAX_HEAD_BYTES, past which 431 and a close): 145 MB, and
161 MB with each connection's own objects (4 KiB at the cap). tests/test_deploy.py sizes the pod's
memory with it (docs/reliability.md).

Reliance on uvicorn internals (pinned in requirements.txt, checked by tests/test_connections.py):
BentoML's worker builds `uvicorn.Config` without `http=`, so the protocol class comes from
`uvicorn.config.HTTP_PROTOCOLS["auto"]`, which serving/internals.py points here; the subclass uses
`HttpToolsProtocol`'s `connections`, `cycle`, `transport`, `flow`, `timeout_keep_alive`, `on_headers_complete`,
`timeout_keep_alive_task`, `data_received`, `on_message_complete`, `on_response_complete`,
`pause_writing`, `resume_writing`, `timeout_keep_alive_handler`, `shutdown` (which uvicorn's server
calls on each connection when it stops; tests/test_connections.py's shutdown test), and the cycle's `more_body`,
`response_started`, `response_complete`, `disconnected`, `message_event`, `keep_alive`; and
`OneSendTransport` on the cycle writing each head whole in one `transport.write` of its own
(tests/test_connections.py::test_answer_leaves_in_one_send_with_its_head).
"""

import asyncio
import contextlib
import dataclasses
import resource
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from serving.layer import error_body

FD_RESERVE = 512  # descriptors a worker keeps for everything but connections (model, metric files, logs)
# The label values of on_close.
CLOSE_REASONS = (
    "idle", "request_deadline", "head_too_large", "arriving_bytes", "send_deadline", "unsent_bytes", "evicted",
    "refused", "shutdown",
)  # fmt: skip
# Bytes of a request's head (request line and headers) a connection may send before the head is
# whole; past it, 431 and a close. httptools keeps a head in memory however long it is: 4 connections
# sending headers for 12 s took a worker from 138 to 373 MiB resident (2026-12-07). Node.js's limit, and
# uvicorn's own for its h11 protocol; this service's requests send well under 1 KB.
MAX_HEAD_BYTES = 16_384
# Bytes of a worker's requests still arriving (not whole after a read), together: 130 bodies of 1,000
# flights (120 KB) at once, 16 of the largest (1 MiB). Past it, the one arriving longest is aborted.
MAX_ARRIVING_BYTES = 16 * 1_048_576
# Unsent bytes past which a connection's transport pauses its writer (asyncio's default is 64 KiB).
# Every answer but /metrics, /docs.json and the static files is smaller, so it changes nothing for
# them; it bounds what a client that does not read holds without being counted as stalled.
WRITE_HIGH_WATER = 16_384
# The drain at shutdown lasts this long past the request time-out (FLIGHT_DELAY_TIMEOUT_S), so that a
# request admitted just before it is answered, or timed out by the request layer, and its answer leaves.
DRAIN_MARGIN_S = 2.0
RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() resets the connection and drops unsent data


@dataclass(frozen=True)
class Limits:
    """The deadlines, the cap and the counter of one worker's connections."""

    idle_s: float
    request_s: float
    max_connections: int
    on_close: Callable[[str], None] = lambda reason: None
    send_s: float = 20.0
    max_unsent_bytes: int = 64 * 1_048_576
    drain_s: float = 32.0
    max_arriving_bytes: int = MAX_ARRIVING_BYTES


class OneSendTransport:
    """A connection's transport that holds an answer's head to send it with the body that follows.

    A write that is a whole head (status line to the empty line) but not an interim `100 Continue`
    waits for the next write, the next turn of the event loop, `close()` or `abort()`, whichever
    comes first; every other call goes to the transport as it is."""

    __slots__ = ("head", "loop", "transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self.transport = transport
        self.loop = loop
        self.head = b""

    def write(self, data: bytes) -> None:
        if self.head:
            data, self.head = self.head + data, b""
        elif data.startswith(b"HTTP/1.1 ") and data.endswith(b"\r\n\r\n") and not data.startswith(b"HTTP/1.1 1"):
            self.head = data
            self.loop.call_soon(self.flush)  # an answer whose body comes later (a file) is not held up
            return
        self.transport.write(data)

    def flush(self) -> None:
        if self.head:
            head, self.head = self.head, b""
            self.transport.write(head)

    def close(self) -> None:
        self.flush()
        self.transport.close()

    def abort(self) -> None:
        self.head = b""
        self.transport.abort()

    def get_write_buffer_size(self) -> int:
        return len(self.head) + self.transport.get_write_buffer_size()

    def is_closing(self) -> bool:
        return self.transport.is_closing()

    def get_extra_info(self, name: str, default: Any = None) -> Any:  # three calls a connection, spared __getattr__
        return self.transport.get_extra_info(name, default)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.transport, name)


def closing_response(status: int, phrase: bytes, message: str) -> bytes:
    """A complete error response in the layer's format that closes the connection, sent by the protocol."""
    body = error_body(status, message)
    head = b"HTTP/1.1 %d %b\r\ncontent-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n"
    return head % (status, phrase, len(body)) + body


def timeout_response(request_s: float) -> bytes:
    """The complete 408 response, sent where the request deadline passes."""
    return closing_response(408, b"Request Timeout", f"the request was not received within {request_s:g} s")


RESPONSE_431 = closing_response(
    431, b"Request Header Fields Too Large", f"the request line and headers must be at most {MAX_HEAD_BYTES} bytes"
)


@dataclass
class Held:
    """Bytes a worker holds for some of its connections (the unsent data of those stalled on their
    clients, or the requests still arriving), longest held first, and their sum. An object, so a
    connection updates it without assigning to an attribute of DeadlineProtocol: every such
    assignment (the sum as a class attribute, at each connection's end) invalidates CPython's caches
    of the class's attributes, and each connection then looked them up again: with a new connection
    per request, CPython's attribute lookups fell from 6.7% to 3.8% of the workers' CPU samples
    without it (perf, docs/performance.md)."""

    sizes: dict["DeadlineProtocol", int] = field(default_factory=dict)
    total: int = 0


class DeadlineProtocol(HttpToolsProtocol):
    """uvicorn's HTTP protocol with an idle and a request deadline and a per-worker connection cap."""

    limits: ClassVar[Limits]  # set by configure(), once per worker
    response_408: ClassVar[bytes]
    # Connections without a request in the application, oldest first: the order of eviction.
    # One event loop per worker process: no lock needed.
    waiting: ClassVar[dict["DeadlineProtocol", None]] = {}
    stalled: ClassVar[Held] = Held()  # unsent data past WRITE_HIGH_WATER
    arriving: ClassVar[Held] = Held()  # requests not whole after a read

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # uvicorn's own timer closes idle keep-alive connections; typed int there, call_later takes a float
        self.timeout_keep_alive = self.limits.idle_s  # type: ignore[assignment]
        self.deadline: asyncio.TimerHandle | None = None
        self.send_deadline: asyncio.TimerHandle | None = None
        self.receiving = False  # a request has started to arrive and is not complete yet
        self.head_bytes = -1  # bytes of the head of the request arriving, while it is not whole; else -1

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]  # as uvicorn's
        if len(self.connections) >= self.limits.max_connections and not self.evict_oldest():
            self.transport = transport  # uvicorn's connection_lost closes it
            self.limits.on_close("refused")
            transport.abort()
            return
        super().connection_made(OneSendTransport(transport, self.loop))  # type: ignore[arg-type]  # its stand-in
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)
        self.waiting[self] = None
        self.deadline = self.loop.call_later(self.limits.idle_s, self.close_idle)

    def connection_lost(self, exc: Exception | None) -> None:
        self.cancel_deadline()
        self.cancel_send_deadline()
        self.unstall()
        self.release_arriving()
        self.waiting.pop(self, None)
        if self.flow is not None:  # None where connection_made refused it
            super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if not self.receiving:
            self.receiving = True
            self.head_bytes = 0
            self.cancel_deadline()
            self.deadline = self.loop.call_later(self.limits.request_s, self.close_late_request)
        super().data_received(data)
        if self.receiving:  # the request is not whole yet: what has arrived of it is held until it is
            self.hold_arriving(len(data))
        if self.head_bytes >= 0:  # the head is not whole yet: all of `data` was head
            self.head_bytes += len(data)
            if self.head_bytes > MAX_HEAD_BYTES and not self.transport.is_closing():
                self.refuse_head()

    def hold_arriving(self, size: int) -> None:
        """Count `size` more bytes of this connection's request still arriving; past the worker's bound,
        abort the connection whose request has been arriving longest."""
        if self.transport.is_closing():
            return
        held = self.arriving
        held.sizes[self] = held.sizes.get(self, 0) + size  # an update keeps the connection's place
        held.total += size
        while held.total > self.limits.max_arriving_bytes:
            next(iter(held.sizes)).abort("arriving_bytes")

    def release_arriving(self) -> None:
        self.arriving.total -= self.arriving.sizes.pop(self, 0)

    def on_headers_complete(self) -> None:
        self.head_bytes = -1
        super().on_headers_complete()

    def refuse_head(self) -> None:
        """The head passed MAX_HEAD_BYTES: 431 where no answer is being sent, then close."""
        self.cancel_deadline()
        if self.cycle is not None and not self.cycle.response_complete:  # an earlier request's answer is going out
            self.abort("head_too_large")
            return
        self.transport.write(RESPONSE_431)
        self.close_or_abort("head_too_large")

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self.receiving = False
        if self.arriving.sizes:  # requests that arrive in one read, nearly all, were never held
            self.release_arriving()
        self.cancel_deadline()
        self.waiting.pop(self, None)

    def on_response_complete(self) -> None:
        super().on_response_complete()  # arms uvicorn's keep-alive timer (idle_s) unless closing or pipelined
        if self.transport.is_closing():
            if self.transport.get_write_buffer_size() and self.send_deadline is None:
                self.arm_send_deadline()  # closed after its answer, which the client has not taken yet
        elif self.timeout_keep_alive_task is not None:  # waiting for its next request, not answering one
            self.waiting.pop(self, None)
            self.waiting[self] = None  # at the end: it has waited since now

    def pause_writing(self) -> None:
        """The unsent data passed WRITE_HIGH_WATER: the connection is stalled on its client."""
        super().pause_writing()
        size = self.transport.get_write_buffer_size()
        self.stalled.sizes[self] = size
        self.stalled.total += size
        self.waiting.pop(self, None)
        self.waiting[self] = None  # evictable: its client, not the application, holds it
        if self.send_deadline is None:
            self.arm_send_deadline()
        while self.stalled.total > self.limits.max_unsent_bytes:
            next(iter(self.stalled.sizes)).abort("unsent_bytes")

    def resume_writing(self) -> None:
        """The client took the unsent data down to the low-water mark: no longer stalled."""
        super().resume_writing()
        self.unstall()
        if not self.transport.is_closing():  # a closing one must still hand over its data in time
            self.cancel_send_deadline()
        if self.cycle is not None and not self.cycle.response_complete:  # back to answering
            self.waiting.pop(self, None)

    def unstall(self) -> None:
        self.stalled.total -= self.stalled.sizes.pop(self, 0)

    def arm_send_deadline(self) -> None:
        self.send_deadline = self.loop.call_later(
            self.limits.send_s, self.check_send_progress, self.transport.get_write_buffer_size()
        )

    def check_send_progress(self, unsent_before: int) -> None:
        """The send deadline: abort unless the client took some of the unsent data since the last check."""
        unsent = self.transport.get_write_buffer_size()
        if unsent and unsent >= unsent_before:
            self.send_deadline = None
            self.abort("send_deadline")
            return
        if self in self.stalled.sizes:
            self.stalled.total -= self.stalled.sizes[self] - unsent
            self.stalled.sizes[self] = unsent
        if unsent:
            self.arm_send_deadline()
        else:
            self.send_deadline = None

    def abort(self, reason: str | None) -> None:
        """Count the reason (None: counted already) and reset the connection, dropping its unsent data
        (here and in the kernel)."""
        if reason is not None:
            self.limits.on_close(reason)
        self.unstall()
        self.release_arriving()
        self.waiting.pop(self, None)
        self.cancel_deadline()
        self.cancel_send_deadline()
        sock = self.transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):  # already gone
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, RESET)
        self.transport.abort()

    def close_or_abort(self, reason: str) -> None:
        """Close a connection the service is done with: at once if nothing is unsent, else abort it."""
        if self.transport.get_write_buffer_size():
            self.abort(reason)
        else:
            self.limits.on_close(reason)
            self.transport.close()

    def shutdown(self) -> None:
        """uvicorn's start of a graceful shutdown, bounded (the drain in the module's docstring)."""
        cycle = self.cycle
        if self.receiving and (
            cycle is None or cycle.response_complete or (cycle.more_body and not cycle.response_started)
        ):  # a request still arriving, none being answered
            self.close_or_abort("shutdown")
        else:
            super().shutdown()
        self.loop.call_later(self.limits.drain_s, self.drain_passed)

    def drain_passed(self) -> None:
        if self in self.connections:  # still open
            self.abort("shutdown")

    def timeout_keep_alive_handler(self) -> None:
        if self.transport.is_closing():
            return
        if self.transport.get_write_buffer_size():  # its last answer is still unread: do not wait for it
            self.abort("idle")
            return
        self.limits.on_close("idle")
        super().timeout_keep_alive_handler()

    def cancel_deadline(self) -> None:
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None

    def cancel_send_deadline(self) -> None:
        if self.send_deadline is not None:
            self.send_deadline.cancel()
            self.send_deadline = None

    def close_idle(self) -> None:
        """Nothing arrived within the idle deadline: close without an answer."""
        self.deadline = None
        if not self.transport.is_closing():
            self.close_or_abort("idle")

    def close_late_request(self) -> None:
        """The request was not in within the request deadline: 408 where no answer has started, then close."""
        self.deadline = None
        if self.transport.is_closing():
            return
        self.limits.on_close("request_deadline")
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete and not cycle.more_body:
            cycle.keep_alive = False  # answering an earlier request: close once that answer is sent
            return
        if cycle is not None and not cycle.response_complete:  # the application is waiting for the body
            started = cycle.response_started
            cycle.disconnected = True  # its receive() now returns http.disconnect; its sends are dropped
            cycle.message_event.set()
            if started:
                self.transport.close()
                return
        self.transport.write(self.response_408)
        if self.transport.get_write_buffer_size():  # its client reads nothing: do not wait for it to
            self.abort(None)  # counted already
        else:
            self.transport.close()

    def evict_oldest(self) -> bool:
        """Abort the connection that has waited longest without a request in the application, or stalled
        longest on its client, if any."""
        for victim in self.waiting:
            victim.abort("evicted")
            return True
        return False


def raise_open_file_limit() -> int:
    """Raise this process's soft limit of open files to its hard limit; the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):  # an unlimited hard limit cannot be the soft one on Linux
            return soft
    return hard


def configure(limits: Limits) -> Limits:
    """Set the limits DeadlineProtocol enforces, the cap kept FD_RESERVE under the open-file limit
    (serving/internals.py makes uvicorn serve with it). Returns the limits in force."""
    open_files = raise_open_file_limit()
    capped = min(limits.max_connections, max(open_files - FD_RESERVE, 1))
    DeadlineProtocol.limits = dataclasses.replace(limits, max_connections=capped)
    DeadlineProtocol.response_408 = timeout_response(limits.request_s)
    return DeadlineProtocol.limits
