"""A keep-alive HTTP load client that accounts for every request it sends, for shutdown drills.

wrk counts a connection the server closes as a read error whether or not a request was being
answered on it. This client sorts each request into one outcome:
- the response status ("200", "503", ...): a complete response came back;
- "refused": the connection could not be opened, nothing was sent;
- "unanswered on a new connection" / "... on a reused connection": sent, then the connection
  closed before any byte of a response came back (a new one: accepted by the kernel's listening
  queue, never by the server; a reused one: closed by the server as idle);
- "cut": the connection closed in the middle of a response;
- "timed out": no complete response within the time-out.
"""

import asyncio
import json
import threading
from collections import Counter
from typing import Any
from urllib.parse import urlsplit

TIMEOUT_S = 30
CLOSED = (asyncio.IncompleteReadError, ConnectionError)


def request_bytes(host: str, port: int, path: str, payload: dict[str, Any]) -> bytes:
    """One keep-alive POST of payload as JSON."""
    body = json.dumps(payload).encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def parse_head(head: bytes) -> tuple[str, int, bool]:
    """Status, Content-Length and whether the server closes the connection after this response."""
    lines = head.decode("latin-1").split("\r\n")
    status = lines[0].split(" ")[1]
    fields = {
        name.strip().lower(): value.strip().lower() for name, _, value in (line.partition(":") for line in lines[1:])
    }
    return status, int(fields.get("content-length", "0")), fields.get("connection") == "close"


async def exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes
) -> tuple[str, bool, bytes]:
    """Send one request and read its response: (outcome, whether the connection is still usable, body)."""
    writer.write(request)
    try:
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
    except CLOSED:
        return "unanswered", False, b""
    status, length, close = parse_head(head)
    try:
        body = await reader.readexactly(length)
    except CLOSED:
        return "cut", False, b""
    return status, not close, body


async def connection(
    host: str, port: int, request: bytes, stop: threading.Event, counts: Counter[str], bodies: Counter[bytes]
) -> None:
    """One client connection sending requests back to back until stop is set, reconnecting as needed.

    Counts each outcome in counts and each 200 answer's body in bodies (a model rollout tells the
    old model's answers from the new one's by their bodies).
    """
    streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
    fresh = True
    while not stop.is_set():
        if streams is None:
            try:
                streams = await asyncio.open_connection(host, port)
            except OSError:
                counts["refused"] += 1
                await asyncio.sleep(0.05)
                continue
            fresh = True
        try:
            outcome, usable, body = await asyncio.wait_for(exchange(*streams, request), TIMEOUT_S)
        except TimeoutError:
            outcome, usable, body = "timed out", False, b""
        if outcome == "200":
            bodies[body] += 1
        if outcome == "unanswered":
            outcome += " on a new connection" if fresh else " on a reused connection"
        counts[outcome] += 1
        fresh = False
        if not usable:
            streams[1].close()
            streams = None
    if streams is not None:
        streams[1].close()


async def load(
    url: str, connections: int, payload: dict[str, Any], stop: threading.Event
) -> tuple[Counter[str], Counter[bytes]]:
    """`connections` clients posting payload to url until stop is set; outcome counts and 200 bodies."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    request = request_bytes(host, port, parts.path or "/", payload)
    counts: Counter[str] = Counter()
    bodies: Counter[bytes] = Counter()
    await asyncio.gather(*(connection(host, port, request, stop, counts, bodies) for _ in range(connections)))
    return counts, bodies


class BackgroundLoad:
    """load() running in a thread from construction until stop()."""

    def __init__(self, url: str, connections: int, payload: dict[str, Any]) -> None:
        self.stopping = threading.Event()
        self.counts: Counter[str] = Counter()
        self.bodies: Counter[bytes] = Counter()
        self.thread = threading.Thread(target=self.run, args=(url, connections, payload), daemon=True)
        self.thread.start()

    def run(self, url: str, connections: int, payload: dict[str, Any]) -> None:
        self.counts, self.bodies = asyncio.run(load(url, connections, payload, self.stopping))

    def stop(self) -> Counter[str]:
        """Stop every connection after its current request; the outcome counts."""
        self.stopping.set()
        self.thread.join()
        return self.counts
