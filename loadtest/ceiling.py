"""The Python ceiling of this machine: a bare ASGI app answering every request with constant JSON.

Same server stack as the service (uvicorn, uvloop, httptools, no access log), no framework, no model.

    python loadtest/ceiling.py --port 3002 --workers 2
"""

import argparse
from pathlib import Path

import uvicorn

BODY = b'[{"delay":0,"probability":0.5}]'
HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(BODY)).encode())]


async def app(scope: dict, receive, send) -> None:  # type: ignore[no-untyped-def]  # raw ASGI callables
    """Read the request body, answer the constant."""
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    while (await receive()).get("more_body"):
        pass
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": BODY})


def serve(app: str, description: str, default_port: int) -> None:
    """Run app ("module:attribute" of loadtest/) on the service's server stack, from the command line."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--port", type=int, default=default_port, help="TCP port on 127.0.0.1")
    parser.add_argument("--workers", type=int, default=2, help="uvicorn worker processes")
    args = parser.parse_args()
    uvicorn.run(
        app, app_dir=str(Path(__file__).parent), host="127.0.0.1", port=args.port, workers=args.workers,
        loop="uvloop", http="httptools", access_log=False, log_level="warning",
    )  # fmt: skip


if __name__ == "__main__":
    serve("ceiling:app", __doc__.split("\n")[0], 3002)
