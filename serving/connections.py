"""Deadlines and a cap on a worker's connections, which uvicorn leaves unbounded.

uvicorn 0.55, as BentoML 1.4.40 runs it, has no deadline for receiving a request: its keep-alive
time-out covers only the idle time between requests, every byte resets it, and a connection that
sends nothing is never timed out. One client holding 28,000 slow connections left 0 of 100 requests
answered (issue 18). `DeadlineProtocol`, uvicorn's httptools protocol with three additions, closes them:

- **idle deadline**: a connection that sends nothing, new or between requests, is closed after `idle_s`;
- **request deadline**: from the first byte of a request, its headers and body must be in within
  `request_s`; otherwise the client gets 408 (unless its answer has started) and the connection closes;
- **cap**: at `max_connections` open connections in the worker, a new connection evicts the one that
  has waited longest without a request in the application (idle or slow: a request sent at once is
  never the oldest); when every connection has a request in the application, the new one is refused.
  The cap sits below the worker's open-file limit, so `accept()` never fails for want of descriptors.

No timer runs while the application holds a complete request: answers in progress, keep-alive reuse
and requests received in time are untouched. Every close is counted by reason through `on_close`.

Reliance on uvicorn internals (pinned in requirements.txt, checked by tests/test_connections.py):
BentoML's worker builds `uvicorn.Config` without `http=`, so the protocol class comes from
`uvicorn.config.HTTP_PROTOCOLS["auto"]`, which `install()` points here; the subclass uses
`HttpToolsProtocol`'s `connections`, `cycle`, `transport`, `timeout_keep_alive`, `data_received`,
`on_message_complete`, `on_response_complete`, `timeout_keep_alive_handler`, and the cycle's
`more_body`, `response_started`, `response_complete`, `disconnected`, `message_event`, `keep_alive`.
"""

import asyncio
import resource
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from uvicorn.config import HTTP_PROTOCOLS
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from serving.guard import error_body

FD_RESERVE = 512  # descriptors a worker keeps for everything but connections (model, metric files, logs)
CLOSE_REASONS = ("idle", "request_deadline", "evicted", "refused")  # the label values of on_close


@dataclass(frozen=True)
class Limits:
    """The deadlines, the cap and the counter of one worker's connections."""

    idle_s: float
    request_s: float
    max_connections: int
    on_close: Callable[[str], None] = lambda reason: None


def timeout_response(request_s: float) -> bytes:
    """The complete 408 response, in the guard's error format, sent where the deadline passes."""
    body = error_body(408, f"the request was not received within {request_s:g} s")
    head = (
        b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
        b"content-length: %d\r\nconnection: close\r\n\r\n" % len(body)
    )
    return head + body


class DeadlineProtocol(HttpToolsProtocol):
    """uvicorn's HTTP protocol with an idle and a request deadline and a per-worker connection cap."""

    limits: ClassVar[Limits]  # set by install(), once per worker
    response_408: ClassVar[bytes]
    # Connections without a request in the application, oldest first: the order of eviction.
    # One event loop per worker process: no lock needed.
    waiting: ClassVar[dict["DeadlineProtocol", None]] = {}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # uvicorn's own timer closes idle keep-alive connections; typed int there, call_later takes a float
        self.timeout_keep_alive = self.limits.idle_s  # type: ignore[assignment]
        self.deadline: asyncio.TimerHandle | None = None
        self.receiving = False  # a request has started to arrive and is not complete yet

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]  # as uvicorn's
        if len(self.connections) >= self.limits.max_connections and not self.evict_oldest():
            self.transport = transport  # uvicorn's connection_lost closes it
            self.limits.on_close("refused")
            transport.abort()
            return
        super().connection_made(transport)
        self.waiting[self] = None
        self.deadline = self.loop.call_later(self.limits.idle_s, self.close_idle)

    def connection_lost(self, exc: Exception | None) -> None:
        self.cancel_deadline()
        self.waiting.pop(self, None)
        if self.flow is not None:  # None where connection_made refused it
            super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if not self.receiving:
            self.receiving = True
            self.cancel_deadline()
            self.deadline = self.loop.call_later(self.limits.request_s, self.close_late_request)
        super().data_received(data)

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self.receiving = False
        self.cancel_deadline()
        self.waiting.pop(self, None)

    def on_response_complete(self) -> None:
        super().on_response_complete()  # arms uvicorn's keep-alive timer (idle_s) unless closing
        if not self.transport.is_closing():
            self.waiting[self] = None

    def timeout_keep_alive_handler(self) -> None:
        if not self.transport.is_closing():
            self.limits.on_close("idle")
        super().timeout_keep_alive_handler()

    def cancel_deadline(self) -> None:
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None

    def close_idle(self) -> None:
        """Nothing arrived within the idle deadline: close without an answer."""
        self.deadline = None
        if not self.transport.is_closing():
            self.limits.on_close("idle")
            self.transport.close()

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
        self.transport.close()

    def evict_oldest(self) -> bool:
        """Close the connection that has waited longest without a request in the application, if any."""
        for victim in self.waiting:
            del self.waiting[victim]
            victim.cancel_deadline()
            self.limits.on_close("evicted")
            victim.transport.close()
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


def install(limits: Limits) -> Limits:
    """Make the worker's uvicorn serve with DeadlineProtocol; the cap is kept FD_RESERVE under the
    open-file limit. Returns the limits in force."""
    open_files = raise_open_file_limit()
    capped = min(limits.max_connections, max(open_files - FD_RESERVE, 1))
    DeadlineProtocol.limits = Limits(limits.idle_s, limits.request_s, capped, limits.on_close)
    DeadlineProtocol.response_408 = timeout_response(limits.request_s)
    HTTP_PROTOCOLS["auto"] = f"{__name__}:DeadlineProtocol"
    return DeadlineProtocol.limits
