"""POST /v1/outcomes with an Idempotency-Key, driven in-process: a retried request is answered once."""

import asyncio
import json
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from pydantic import SecretStr
from starlette.requests import Request

from models.schema import EXAMPLE_OUTCOMES
from serving import routes
from serving.idempotency import Claim, IdempotencyStore

TOKEN = "test-token-not-a-secret"


def outcomes_request(key: str, body: bytes) -> Any:
    """A POST /v1/outcomes as routes.outcomes reads it, with TOKEN configured."""
    headers = [(b"authorization", f"Bearer {TOKEN}".encode()), (b"idempotency-key", key.encode())]
    scope = {"type": "http", "method": "POST", "path": "/v1/outcomes", "headers": headers}

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    request = Request(scope, receive)
    state = SimpleNamespace(settings=SimpleNamespace(outcomes_token=SecretStr(TOKEN)))
    request.scope["app"] = SimpleNamespace(state=state)
    return request


def test_a_keyed_outcomes_request_cut_by_its_deadline_is_counted_once_and_its_retry_replayed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the request layer cancels a request's task at its deadline: the count went on in its thread, the
    # key was released, and the retry counted the same flights again (or, cut while claiming, the key
    # stayed claimed without an answer and retries got 409 for a minute)
    counts: list[int] = []

    def slow_count(service: Any, flights: list[Any]) -> dict[str, Any]:
        time.sleep(0.2)
        counts.append(len(flights))
        return {"model": "flight_delay:test", "flights": len(flights), "delayed": 1, "not_counted": []}

    store = IdempotencyStore(tmp_path / "idempotency.sqlite")
    monkeypatch.setattr(routes, "idempotency_store", lambda: store)
    monkeypatch.setattr(routes, "count_outcomes", slow_count)
    monkeypatch.setattr(routes.bentoml, "get_current_service", lambda: SimpleNamespace(monitor=object()))
    body = json.dumps(EXAMPLE_OUTCOMES).encode()

    async def cut_then_retry() -> Any:
        first = asyncio.ensure_future(routes.outcomes(outcomes_request("feed-1", body)))
        await asyncio.sleep(0.05)  # the count takes 0.2 s: cut in the middle of it
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        await asyncio.sleep(0.4)  # the thread the cut request left behind finishes
        return await routes.outcomes(outcomes_request("feed-1", body))

    try:
        retry = asyncio.run(cut_then_retry())
    finally:
        store.close()
    assert counts == [1]
    assert retry.status_code == 200 and retry.headers["idempotent-replayed"] == "true"
    assert json.loads(retry.body)["flights"] == 1


def test_the_store_stays_within_its_bytes_dropping_the_oldest_keys(tmp_path: Path) -> None:
    """A feed may send a new key with every post, and the store lives in the pod's /tmp, an emptyDir the
    pod is evicted past: before, nothing bounded it but the day a key is kept."""
    path, bound = tmp_path / "idempotency.sqlite", 1_048_576
    store = IdempotencyStore(path, max_bytes=bound)
    answer = b"x" * 10_000
    try:
        for number in range(400):  # 4 MB of answers
            assert store.claim(f"key-{number}", "fingerprint")[0] is Claim.NEW
            store.finish(f"key-{number}", answer)
        assert path.stat().st_size < 1.5 * bound
        assert store.claim("key-399", "fingerprint") == (Claim.DONE, answer)  # the newest are kept
        assert store.claim("key-0", "fingerprint")[0] is Claim.NEW  # the oldest were dropped
    finally:
        store.close()
