"""The attacker of the slow-client drills: one process holding thousands of connections that never
finish a request, or (`never-read`) that ask for a large answer and never read it, each reopened
1 s after the server closes it, so the attack keeps its size.

    python -m loadtest.slow_client KIND HOST PORT CONNECTIONS SECONDS   # prints one JSON line
    (KIND: one of KINDS or of UNREAD_KINDS)

A process here may hold 20,000 open files, so `loadtest.reliability slow-clients` runs several. The line
reports how long the server kept each connection (histogram in 0.1 s), what it answered first, how
many connects failed, and how many connections the process held, once a second.
"""

import asyncio
import json
import resource
import socket
import sys
import time
from collections import Counter
from dataclasses import dataclass


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
}
REOPEN_AFTER_S = 1.0
# never-read: the largest answers the service has, one per connection in turn, asked for with a 4 KB
# receive buffer (so the server's unsent data stays with the server); nothing is ever read.
THOUSAND_FLIGHTS = json.dumps(
    {
        "flights": [
            {"OPERA": "Grupo LATAM", "TIPOVUELO": "N", "MES": 3, "Fecha-I": "2017-03-14 08:30", "SIGLADES": "Lima"}
        ]
        * 1000
    }
).encode()
LARGE_ANSWERS = (
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
RECEIVE_BUFFER = 4096
CHECK_EVERY_S = 1.0  # how often a never-reading connection looks, without reading, whether it was reset


async def hold(kind: Kind, host: str, port: int, until: float, lifetimes: Counter[float], stats: Counter[str]) -> None:
    """Keep one slow connection open until `until`, reopening it after each close."""
    while time.monotonic() < until:
        try:
            reader, writer = await asyncio.open_connection(host, port)
        except OSError:
            stats["connect_failed"] += 1
            await asyncio.sleep(REOPEN_AFTER_S)
            continue
        opened = time.monotonic()
        stats["open"] += 1
        first = b""
        closed = "drill_end"
        try:
            writer.write(kind.head)
            while time.monotonic() < until:
                try:
                    chunk = await asyncio.wait_for(reader.read(4096), kind.every_s)
                except TimeoutError:
                    writer.write(kind.trickle)
                    continue
                if not chunk:
                    closed = "closed"
                    break
                first = first or chunk
        except OSError:
            closed = "reset"
        finally:
            stats["open"] -= 1
            writer.close()
        if closed != "drill_end":
            lifetimes[round(time.monotonic() - opened, 1)] += 1
            answer = first[9:12].decode(errors="replace") if first.startswith(b"HTTP/") else "none"
            stats[f"{closed}_answer_{answer}"] += 1
            await asyncio.sleep(REOPEN_AFTER_S)


async def hold_unread(
    requests: tuple[bytes, ...],
    index: int,
    host: str,
    port: int,
    until: float,
    lifetimes: Counter[float],
    stats: Counter[str],
) -> None:
    """Keep one never-reading connection open until `until`, asking for requests[index % len(requests)]
    and reading nothing; reopened after the server aborts it (a reset, seen by peeking)."""
    loop = asyncio.get_running_loop()
    request = requests[index % len(requests)]
    while time.monotonic() < until:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, (host, port))
            await loop.sock_sendall(sock, request)
        except OSError:
            stats["connect_failed"] += 1
            sock.close()
            await asyncio.sleep(REOPEN_AFTER_S)
            continue
        opened = time.monotonic()
        stats["open"] += 1
        closed = "drill_end"
        while time.monotonic() < until:
            await asyncio.sleep(CHECK_EVERY_S)
            try:
                if sock.recv(1, socket.MSG_PEEK) == b"":
                    closed = "closed"
                    break
            except BlockingIOError:  # nothing sent yet: still open
                continue
            except OSError:
                closed = "reset"
                break
        stats["open"] -= 1
        sock.close()
        if closed != "drill_end":
            lifetimes[round(time.monotonic() - opened, 1)] += 1
            stats[f"{closed}_answer_unread"] += 1
            await asyncio.sleep(REOPEN_AFTER_S)


async def sample(until: float, stats: Counter[str], held: list[int], lags: list[float]) -> None:
    """Once a second: the connections held, and how late this process's own event loop woke up
    (a busy attacker notices a close late, which lengthens the lifetimes it reports)."""
    while (now := time.monotonic()) < until:
        held.append(stats["open"])
        await asyncio.sleep(1)
        lags.append(time.monotonic() - now - 1)


async def attack(kind: str, host: str, port: int, connections: int, seconds: float) -> dict[str, object]:
    """`connections` slow connections for `seconds`; the process's report."""
    until = time.monotonic() + seconds
    lifetimes: Counter[float] = Counter()
    stats: Counter[str] = Counter()
    held: list[int] = []
    lags: list[float] = []
    tasks = [asyncio.create_task(sample(until, stats, held, lags))]
    for index in range(connections):  # opened at about 2,000/s, as a single attacking host would
        held_open = (
            hold(KINDS[kind], host, port, until, lifetimes, stats)
            if kind in KINDS
            else hold_unread(UNREAD_KINDS[kind], index, host, port, until, lifetimes, stats)
        )
        tasks.append(asyncio.create_task(held_open))
        if len(tasks) % 100 == 0:
            await asyncio.sleep(0.05)
    await asyncio.gather(*tasks)
    return {
        "held_per_second": held,
        "loop_lag_s_max": round(max(lags, default=0), 2),
        "lifetimes_s": dict(lifetimes),
        "stats": dict(stats),
    }


def more_files() -> None:
    """Raise this process's limit of open files to the hard limit: each connection is one."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def main(argv: list[str]) -> None:
    kind, host, port, connections, seconds = argv
    more_files()
    report = asyncio.run(attack(kind, host, int(port), int(connections), float(seconds)))
    print(json.dumps(report))


if __name__ == "__main__":
    main(sys.argv[1:])
