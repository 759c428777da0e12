"""The service's own API page and OpenAPI document: BentoML's generated document of the prediction
routes, with the service's title, description and version, and the routes BentoML leaves out."""

from typing import Any

from models.schema import EXAMPLE_OUTCOMES, EXAMPLE_REQUEST, OutcomeRequest
from serving.layer import MAX_LISTED_PROBLEMS
from serving.settings import MONITORING_OFF, OUTCOMES_ROUTE, PREDICTION_ROUTES

SCHEMAS = "#/components/schemas/"
BENTOML_SUFFIX = "IODescriptor"  # BentoML's name for the models it makes of an API's input and output
TASK_SCHEMA = "TaskStatusResponse"
NOT_FOUND = f"Not found: {MONITORING_OFF}"
# BentoML's error schemas, whose `detail` is a string: every error of this service has the shape of ERROR.
BENTOML_ERRORS = ("InvalidArgument", "NotFound", "InternalServerError")
ERROR = {
    "type": "object",
    "description": "Every error of every route: a short reason and, for invalid input, each problem.",
    "required": ["error", "detail"],
    "properties": {
        "error": {"type": "string", "examples": ["invalid request: 1 problem(s)"]},
        "detail": {
            "type": "array",
            "description": f"The first {MAX_LISTED_PROBLEMS} problems, each naming its field (loc) and its fault.",
            "items": {
                "type": "object",
                "required": ["type", "loc", "msg"],
                "properties": {
                    "type": {"type": "string", "examples": ["less_than_equal"]},
                    "loc": {"type": "array", "items": {"anyOf": [{"type": "string"}, {"type": "integer"}]}},
                    "msg": {"type": "string"},
                },
            },
        },
    },
}
# What the request layer answers on the routes it admits (serving/layer.py), besides each route's own.
ADMITTED_ERRORS = {
    "413": "The body is over the size limit (FLIGHT_DELAY_MAX_BODY_BYTES, 1 MiB unless set)",
    "415": "The body is not JSON, or is compressed",
    "500": "The service failed to answer",
    "503": "Overloaded: retry after the seconds of Retry-After",
    "504": "No answer within the time-out",
}

# The service's own API page, at / and /docs, instead of BentoML's (a page titled with the bento
# name, "This is a Machine Learning Service created with BentoML", badges and a Google Tag Manager
# frame loaded from the internet). It runs the Swagger UI that BentoML 1.4.40 ships and serves
# under /static_content (an internal path: serving/internals.py, reliance 8), so nothing loads
# from another host; validatorUrl null keeps Swagger UI from calling validator.swagger.io.
PAGE = """<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>Flight delay at SCL: API</title>
  <link rel="icon" type="image/png" href="/static_content/favicon-light-32x32.png">
  <link rel="stylesheet" href="/static_content/swagger-ui.css">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="/static_content/swagger-ui-bundle.js"></script>
  <script>
    window.ui = SwaggerUIBundle({
      url: "/docs.json", dom_id: "#swagger-ui", deepLinking: true, validatorUrl: null,
      presets: [SwaggerUIBundle.presets.apis], layout: "BaseLayout",
    });
  </script>
</body>
</html>
"""
DESCRIPTION = """Will a flight leave Santiago de Chile (SCL) more than 15 minutes late?

`POST /v1/prediction` answers, for each flight, `delay` (0 or 1) and `probability`, the calibrated
chance of a delay over 15 minutes. `POST /predict` is the LATAM challenge's contract (labels only).
A flight needs `OPERA`, `TIPOVUELO` and `MES`; `Fecha-I` and `SIGLADES` sharpen the prediction.
Invalid input is answered with 400 and a `detail` naming each field; `GET /v1/model` lists the
accepted airlines and cities, the model's metrics and its threshold. The version above is the tag
of the model this service is running."""


MONITORING_EXAMPLE = {  # the shape of GET /v1/monitoring for the API page: one input of seven, after 1,200 flights
    "model": "flight_delay:<version>",
    "predictions": {"flights": 1200, "since": "2026-12-03T08:47:38.048942+00:00"},
    "drift": {
        "airline": {
            "score": None,
            "threshold": 0.1,
            "drifted": None,
            "flights": 1200,
            "missing": 0,
            "min_flights": 2300,
        }
    },
    "estimated": {
        "delay_rate": 0.1876,
        "brier": 0.1346,
        "roc_auc": 0.7251,
        "precision": 0.3097,
        "recall": 0.6713,
        "f1": 0.4238,
    },
    "outcomes": {"flights": 0, "delay_rate": None, "brier": None, "calibration_error": None, "roc_auc": None},
    "reference": {"delay_rate": 0.1812, "brier": 0.1329, "roc_auc": 0.7141},
    "refused": {"airline": 0, "destination": 0},
}


def document(spec: dict[str, Any], card: dict[str, Any], gets: dict[str, Any], outcomes: Any) -> dict[str, Any]:
    """BentoML's generated document `spec` of the prediction routes, with the service's own title,
    description and version (the model's tag, from `card`), the GET routes `gets` (path: endpoint,
    described by its docstring) and the outcomes route, which BentoML leaves out."""
    spec["openapi"] = "3.1.0"  # BentoML says 3.0.2, but pydantic's schemas are 3.1's (a null type, `examples`)
    spec["info"] = {"title": "Flight delay at SCL", "version": card["tag"], "description": DESCRIPTION}
    spec.setdefault("components", {})["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
    del spec["servers"]  # BentoML's "." shows as a one-choice server menu; without it, the page's own origin
    app_tag = spec["tags"][0]  # BentoML's tag of the service's own routes
    app_tag["description"] = "Predictions, and what the service is running."
    paths = spec.pop("paths")
    for route in PREDICTION_ROUTES:
        operation = paths[route]["post"]
        operation["requestBody"]["content"]["application/json"]["example"] = EXAMPLE_REQUEST  # the README's
        answered = {str(status): response for status, response in operation["responses"].items()}  # BentoML's ints
        operation["responses"] = {
            "200": answered["200"],
            **errors({"400": "Invalid flights, each problem named", **ADMITTED_ERRORS}),
        }
    examples = {"/health": {"status": "OK"}, "/v1/model": card, "/v1/monitoring": MONITORING_EXAMPLE}
    for path, endpoint in gets.items():
        not_found = NOT_FOUND if path == "/v1/monitoring" else None
        paths[path] = {"get": get_operation(endpoint, app_tag["name"], examples[path], not_found)}
    paths[OUTCOMES_ROUTE] = {"post": outcomes_operation(outcomes, app_tag["name"])}
    public = [*PREDICTION_ROUTES, OUTCOMES_ROUTE, *gets]  # the README's order
    spec["paths"] = {**{route: paths.pop(route) for route in public}, **paths}
    schemas = spec["components"]["schemas"]
    for name in BENTOML_ERRORS:
        schemas.pop(name, None)
    schemas["Error"] = ERROR
    return own_schema_names(spec)


def errors(descriptions: dict[str, str]) -> dict[str, Any]:
    """OpenAPI responses of these error statuses, each with the service's error body."""
    body = {"application/json": {"schema": {"$ref": f"{SCHEMAS}Error"}}}
    return {status: {"description": description, "content": body} for status, description in descriptions.items()}


def own_schema_names(spec: dict[str, Any]) -> dict[str, Any]:
    """The document with the service's own schema names: BentoML's `IODescriptor` suffix dropped (from
    the components' names and every title), and without its `TaskStatusResponse`, which is for
    services with tasks (this one has none)."""
    schemas = spec["components"]["schemas"]
    schemas.pop(TASK_SCHEMA, None)
    names = {name: name.removesuffix(BENTOML_SUFFIX) for name in schemas}
    refs = {f"{SCHEMAS}{old}": f"{SCHEMAS}{new}" for old, new in names.items()}

    def renamed(node: Any) -> Any:
        if isinstance(node, dict):
            return {key: own(key, value) for key, value in node.items()}
        if isinstance(node, list):
            return [renamed(item) for item in node]
        return node

    def own(key: str, value: Any) -> Any:
        if key == "$ref":
            return refs.get(value, value)
        if key == "title" and isinstance(value, str):
            return value.removesuffix(BENTOML_SUFFIX)
        return renamed(value)

    spec["components"]["schemas"] = {
        names[name]: {**schema, "title": names[name]} if schema.get("title") == name else schema
        for name, schema in schemas.items()
    }
    return renamed(spec)  # type: ignore[no-any-return]  # a dict in, a dict out


def outcomes_operation(endpoint: Any, tag: str) -> dict[str, Any]:
    """The OpenAPI POST operation of the outcomes route, with its body's schema, example and bearer token."""
    return {
        "tags": [tag],
        "description": endpoint.__doc__,
        "operationId": "flight_delay__outcomes",
        "security": [{"bearer": []}],
        "parameters": [
            {
                "name": "Idempotency-Key",
                "in": "header",
                "required": False,
                "description": "A key of the request (1 to 255 printable ASCII characters): a retry with the same key "
                "and body within 24 h is answered as the first and counts nothing again.",
                "schema": {"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[ -~]+$"},
            }
        ],
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": OutcomeRequest.model_json_schema(),
                    "example": EXAMPLE_OUTCOMES,
                }
            },
        },
        "responses": {
            "200": {
                "description": "Counted",
                "content": {
                    "application/json": {
                        "example": {"model": "flight_delay:<version>", "flights": 1, "delayed": 1, "not_counted": []}
                    }
                },
            },
            **errors(
                {
                    "400": "Invalid flights, each problem named, or an Idempotency-Key that is not 1 to 255 "
                    "printable ASCII characters",
                    "401": "Missing or wrong token",
                    "403": "Outcomes are off: no token is configured",
                    "404": NOT_FOUND,
                    "409": "A request with this Idempotency-Key is being answered",
                    "422": "This Idempotency-Key was used with another body",
                    **ADMITTED_ERRORS,
                }
            ),
        },
    }


def get_operation(endpoint: Any, tag: str, example: dict[str, Any], not_found: str | None = None) -> dict[str, Any]:
    """An OpenAPI GET operation answering JSON, described by the endpoint's docstring (and 404 when
    `not_found` says when)."""
    ok = {"200": {"description": "OK", "content": {"application/json": {"example": example}}}}
    return {
        "tags": [tag],
        "description": endpoint.__doc__,
        "operationId": f"flight_delay__{endpoint.__name__}",
        "responses": {**ok, **(errors({"404": not_found}) if not_found else {})},
    }
