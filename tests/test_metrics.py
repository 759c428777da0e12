"""serving/metrics.py: the /metrics page made at most once per interval, on the BentoML method it wraps."""

import asyncio
import inspect

from _bentoml_impl.server.app import ServiceAppFactory
from starlette.responses import Response

from serving.metrics import Recent, cache_metrics_page


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


def test_bentoml_makes_the_metrics_page_in_the_method_cache_metrics_page_wraps() -> None:
    own = getattr(ServiceAppFactory.metrics, "made_by", ServiceAppFactory.metrics)
    assert inspect.iscoroutinefunction(own) and list(inspect.signature(own).parameters) == ["self", "_"]
    assert "generate_latest" in inspect.getsource(own)
    cache_metrics_page(1.0)
    assert ServiceAppFactory.metrics.made_by is own  # type: ignore[attr-defined]
    cache_metrics_page(1.0)  # twice wraps BentoML's own, not the wrapper
    assert ServiceAppFactory.metrics.made_by is own  # type: ignore[attr-defined]
