"""serving/metrics.py: a value made at most once per interval, for any number of callers."""

import asyncio

from starlette.responses import Response

from serving.metrics import Recent


def test_metrics_page_is_made_once_per_interval_for_any_number_of_callers() -> None:
    made: list[int] = []

    async def make() -> Response:
        made.append(1)
        await asyncio.sleep(0.05)
        return Response(f"page {len(made)}".encode(), media_type="text/plain")

    async def scenario() -> list[bytes]:
        recent: Recent[Response] = Recent(fresh_s=0.3)
        pages = await asyncio.gather(*(recent.get(make) for _ in range(50)))
        later = await recent.get(make)
        await asyncio.sleep(0.35)
        return [bytes(page.body) for page in [*pages, later, await recent.get(make)]]

    pages = asyncio.run(scenario())
    assert pages == [b"page 1"] * 51 + [b"page 2"] and len(made) == 2
