"""What the service needs around BentoML, put in place when service.py is loaded: the model checked,
the request layer and its counters, the connection limits, the plain routes."""

from typing import Any

import bentoml

from models.config import MODEL_NAME
from models.features import FlightReader
from models.predictor import ModelError, check_metadata
from serving import connections, internals
from serving.layer import RequestLayer
from serving.metrics import counters
from serving.prediction_log import PredictionLog
from serving.routes import PATHS, plain_app
from serving.settings import FEW_REQUESTS, INLINE_FLIGHTS, OUTCOMES_ROUTE, PREDICTION_ROUTES, Settings

BENTOML_ROUTES = ("/livez", "/healthz", "/readyz", "/schema.json")  # BentoML's own (/metrics is not counted)


def trained_model(tag: str, variable: str) -> bentoml.models.BentoModel:
    """The flight_delay model `tag` (a version, `latest`, or `flight_delay:<version>`) of the store, or
    a one-line refusal to start that names `variable` and says how to fix it.

    Checked when the service is loaded, so `bentoml serve` exits at once instead of its workers
    failing and restarting forever.
    """
    name, _, version = tag.rpartition(":")
    if not name and version == MODEL_NAME:  # the name alone, as BentoML reads it: the latest
        version = "latest"
    refused = f"refusing to start: {variable}={tag!r} is not accepted: a {MODEL_NAME} version or tag"
    if name not in ("", MODEL_NAME) or not version:
        raise SystemExit(refused)
    try:
        model = bentoml.models.BentoModel(f"{MODEL_NAME}:{version}")
    except bentoml.exceptions.BentoMLException:  # "Invalid Tag": a space, a slash, ...
        raise SystemExit(f"{refused} (letters, digits, '_', '-' and '.')") from None
    stored = model.stored
    if stored is None:  # BentoML would try BentoCloud next and fail with a puzzling message
        if version == "latest":
            raise SystemExit(
                f"refusing to start: no {MODEL_NAME} model in the BentoML store; train one first: make train"
            )
        raise SystemExit(
            f"refusing to start: {variable}={tag!r} is not accepted: no such model in the BentoML store "
            f"(bentoml models list {MODEL_NAME})"
        )
    try:
        check_metadata(stored.info.metadata)
    except ModelError as exc:
        raise SystemExit(f"refusing to serve {stored.tag} ({variable}={tag!r}): {exc}") from None
    return bentoml.models.BentoModel(str(stored.tag))  # the version itself: `latest` moves as models are added


def served_models(settings: Settings) -> tuple[bentoml.models.BentoModel, bentoml.models.BentoModel | None]:
    """The champion (FLIGHT_DELAY_MODEL) and the challenger (FLIGHT_DELAY_CHALLENGER, or None) of the
    store; the same model twice is refused, since a challenger is judged against another model."""
    champion = trained_model(settings.model, "FLIGHT_DELAY_MODEL")
    if settings.challenger is None:
        return champion, None
    if not (settings.monitoring and settings.metrics):
        raise SystemExit(
            f"refusing to start: FLIGHT_DELAY_CHALLENGER={settings.challenger!r} is not accepted with monitoring off: "
            "a challenger is judged on monitoring's counts (FLIGHT_DELAY_MONITORING and FLIGHT_DELAY_METRICS)"
        )
    challenger = trained_model(settings.challenger, "FLIGHT_DELAY_CHALLENGER")
    if challenger.tag == champion.tag:
        raise SystemExit(
            f"refusing to start: FLIGHT_DELAY_CHALLENGER={settings.challenger!r} is not accepted: it is the champion "
            f"({champion.tag}, FLIGHT_DELAY_MODEL={settings.model!r}); name another model or unset it"
        )
    return champion, challenger


def wire(service: Any, settings: Settings, model: str, reader: FlightReader) -> None:
    """Put everything around BentoML's app of `service` (BentoML's Service) serving `model` (its tag),
    whose prediction bodies `reader` reads."""
    counted = counters(model)
    if settings.greedy_batching:
        internals.cap_learned_wait()
    internals.install_connection_limits(
        connections.Limits(
            idle_s=settings.idle_timeout_s,
            request_s=settings.request_timeout_s,
            max_connections=settings.max_connections,
            on_close=lambda reason: counted.connections_closed.labels(reason=reason).inc(),
            send_s=settings.send_timeout_s,
            max_unsent_bytes=settings.max_unsent_mb * 1_048_576,
            drain_s=settings.timeout_s + connections.DRAIN_MARGIN_S,
        )
    )
    internals.read_cached_addresses()
    internals.quiet_client_errors()
    internals.cache_metrics_page(settings.metrics_page_s)
    service.mount_asgi_app(plain_app(service, settings), path="/")

    def prediction_log() -> PredictionLog | None:
        """This worker's prediction log, opened at its start; None when FLIGHT_DELAY_LOG_SAMPLE is 0."""
        if not settings.log_sample:
            return None
        return PredictionLog(
            settings.log_dir,
            settings.log_sample,
            model=model,
            worker=bentoml.server_context.worker_index or 0,
            max_bytes=settings.log_max_mb * 1_048_576,
            on_drop=lambda reason: counted.log_drops.labels(reason=reason).inc(),
            challenger=None if settings.challenger is None else challenger_probabilities,
        )

    def challenger_probabilities(flights: list[dict[str, Any]]) -> list[float | None]:
        """The challenger's probabilities of logged flights: the service instance, made after the log
        is opened, is looked up when the writer thread first needs it."""
        return bentoml.get_current_service().challenger.probabilities_of(flights)  # type: ignore[no-any-return]

    internals.arrange_app(
        RequestLayer,
        tracing=settings.tracing_sample_rate > 0,
        batched_api="predict_batch" if settings.lean_route_applies() else None,
        reader=reader,
        batched_route=PREDICTION_ROUTES[0],
        metric_routes=frozenset([*PREDICTION_ROUTES, *PATHS, *BENTOML_ROUTES]),
        routes=(*PREDICTION_ROUTES, OUTCOMES_ROUTE),
        max_body_bytes=settings.max_body_bytes,
        max_in_flight=settings.max_in_flight,
        max_bytes_in_flight=settings.max_bytes_in_flight,
        shed_after_s=settings.shed_after_ms / 1000,
        timeout_s=settings.timeout_s,
        unbatched=(INLINE_FLIGHTS, FEW_REQUESTS),
        on_error_response=lambda status: counted.layer_errors.labels(status=str(status)).inc(),
        on_invalid=counted.count_unknown_values,
        prediction_log=prediction_log,
    )
