"""The slow-client drills' attacker: thousands of slow connections from one process, each reopened 1 s after it closes.

A connection never finishes its request, or (never-read kinds) asks for a large answer and never reads it.
Raw sockets, since an HTTP client would finish the request. A process may hold 20,000 open files here,
so `loadtest.reliability` runs several; each prints one JSON line: how long the server kept each
connection (0.1-s bins), how each ended and what it answered first, the connections held each second.

    python -m loadtest.slow_client KIND HOST PORT CONNECTIONS SECONDS
"""

import argparse
import asyncio
import json
import resource
import socket
import time
from collections import Counter
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Kind:
    """What a slow connection sends at once, then every `every_s` seconds."""

    head: bytes
    trickle: bytes
    every_s: float


POST = b"POST /v1/prediction HTTP/1.1\r\nHost: attacker\r\nContent-Type: application/json\r\n"
KINDS = {
    "silent": Kind(b"", b"", 4),  # connects and sends nothing
    "slow-headers": Kind(POST, b"X-Slow: 1\r\n", 4),  # one header line every 4 s, never the blank line
    "slow-body": Kind(POST + b"Content-Length: 100000\r\n\r\n", b" ", 4),  # one body byte every 4 s
    # A large body at a steady 2 KB/s: each read arrives in time, so only a deadline on the whole request ends it.
    "large-body": Kind(POST + b"Content-Length: 1000000\r\n\r\n", b" " * 2048, 1),
    # All but 16 bytes of the largest body at once, then one byte every 4 s: held by the worker as it arrives.
    "stalled-body": Kind(POST + b"Content-Length: 1048576\r\n\r\n" + b" " * 1_048_560, b" ", 4),
}
FLIGHT = {"OPERA": "Grupo LATAM", "TIPOVUELO": "N", "MES": 3, "Fecha-I": "2017-03-14 08:30", "SIGLADES": "Lima"}
THOUSAND_FLIGHTS = json.dumps({"flights": [FLIGHT] * 1000}).encode()
LARGE_ANSWERS = (  # the service's largest answers, asked for with a 4 KB receive buffer: unsent data stays with it
    b"GET /static_content/swagger-ui-bundle.js HTTP/1.1\r\nHost: attacker\r\n\r\n",
    b"GET /docs.json HTTP/1.1\r\nHost: attacker\r\n\r\n",
    b"GET /metrics HTTP/1.1\r\nHost: attacker\r\n\r\n",
    POST + b"Content-Length: %d\r\n\r\n" % len(THOUSAND_FLIGHTS) + THOUSAND_FLIGHTS,
)
UNREAD_KINDS = {  # never-read takes the four in turn; the others one of them, to tell their costs apart
    "never-read": LARGE_ANSWERS,
    "never-read-script": LARGE_ANSWERS[:1],
    "never-read-docs": LARGE_ANSWERS[1:2],
    "never-read-metrics": LARGE_ANSWERS[2:3],
    "never-read-1000": LARGE_ANSWERS[3:],
}
REOPEN_AFTER_S = 1.0
RECEIVE_BUFFER = 4096
CHECK_EVERY_S = 1.0  # how often a never-reading connection looks, without reading, whether it was reset


@dataclass
class Tally:
    """What the process's connections saw: lifetimes by 0.1 s, outcomes, connections open now."""

    lifetimes: Counter[float] = field(default_factory=Counter)
    stats: Counter[str] = field(default_factory=Counter)

    async def ended(self, opened: float, how: str, answer: str) -> None:
        """Count a connection the server ended (not the drill), then wait before reopening."""
        self.lifetimes[round(time.monotonic() - opened, 1)] += 1
        self.stats[f"{how}_answer_{answer}"] += 1
        await asyncio.sleep(REOPEN_AFTER_S)


async def hold(kind: Kind, host: str, port: int, until: float, tally: Tally) -> None:
    """Keep one slow connection open until `until`, reopening it after each close."""
    while time.monotonic() < until:
        try:
            reader, writer = await asyncio.open_connection(host, port)
        except OSError:
            tally.stats["connect_failed"] += 1
            await asyncio.sleep(REOPEN_AFTER_S)
            continue
        opened, first, how = time.monotonic(), b"", "drill_end"
        tally.stats["open"] += 1
        try:
            writer.write(kind.head)
            while time.monotonic() < until:
                try:
                    chunk = await asyncio.wait_for(reader.read(4096), kind.every_s)
                except TimeoutError:
                    writer.write(kind.trickle)
                    continue
                if not chunk:
                    how = "closed"
                    break
                first = first or chunk
        except OSError:
            how = "reset"
        finally:
            tally.stats["open"] -= 1
            writer.close()
        if how != "drill_end":
            answer = first[9:12].decode(errors="replace") if first.startswith(b"HTTP/") else "none"
            await tally.ended(opened, how, answer)


async def hold_unread(request: bytes, host: str, port: int, until: float, tally: Tally) -> None:
    """Keep one connection that asked for `request` and reads nothing open until `until`; reopened after
    the server aborts it (a reset, seen by peeking)."""
    loop = asyncio.get_running_loop()
    while time.monotonic() < until:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, (host, port))
            await loop.sock_sendall(sock, request)
        except OSError:
            tally.stats["connect_failed"] += 1
            sock.close()
            await asyncio.sleep(REOPEN_AFTER_S)
            continue
        opened, how = time.monotonic(), "drill_end"
        tally.stats["open"] += 1
        while time.monotonic() < until:
            await asyncio.sleep(CHECK_EVERY_S)
            try:
                if sock.recv(1, socket.MSG_PEEK) == b"":
                    how = "closed"
                    break
            except BlockingIOError:  # nothing sent yet: still open
                continue
            except OSError:
                how = "reset"
                break
        tally.stats["open"] -= 1
        sock.close()
        if how != "drill_end":
            await tally.ended(opened, how, "unread")


async def sample(until: float, tally: Tally, held: list[int], lags: list[float]) -> None:
    """Once a second: the connections held, and how late this process's event loop woke up (a busy
    attacker notices a close late, which lengthens the lifetimes it reports)."""
    while (now := time.monotonic()) < until:
        held.append(tally.stats["open"])
        await asyncio.sleep(1)
        lags.append(time.monotonic() - now - 1)


async def attack(kind: str, host: str, port: int, connections: int, seconds: float) -> dict[str, object]:
    """`connections` slow connections for `seconds`; the process's report."""
    until, tally = time.monotonic() + seconds, Tally()
    held: list[int] = []
    lags: list[float] = []
    tasks = [asyncio.create_task(sample(until, tally, held, lags))]
    for index in range(connections):  # opened at about 2,000/s, as a single attacking host would
        if kind in KINDS:
            tasks.append(asyncio.create_task(hold(KINDS[kind], host, port, until, tally)))
        else:
            requests = UNREAD_KINDS[kind]
            tasks.append(asyncio.create_task(hold_unread(requests[index % len(requests)], host, port, until, tally)))
        if len(tasks) % 100 == 0:
            await asyncio.sleep(0.05)
    await asyncio.gather(*tasks)
    return {"held_per_second": held, "loop_lag_s_max": round(max(lags, default=0), 2),
            "lifetimes_s": dict(tally.lifetimes), "stats": dict(tally.stats)}  # fmt: skip


def more_files() -> None:
    """Raise this process's limit of open files to the hard limit: each connection is one."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("kind", choices=[*KINDS, *UNREAD_KINDS])
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    parser.add_argument("connections", type=int)
    parser.add_argument("seconds", type=float)
    args = parser.parse_args()
    more_files()
    print(json.dumps(asyncio.run(attack(args.kind, args.host, args.port, args.connections, args.seconds))))


if __name__ == "__main__":
    main()
