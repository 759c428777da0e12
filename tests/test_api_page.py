"""The API page at / and /docs: the service's own, complete, self-contained, and usable in a real browser."""

import json
import re
import shutil
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from helpers import skip_unless_ci
from openapi_schema_validator import OAS31Validator
from openapi_spec_validator import validate

from models.schema import EXAMPLE_OUTCOMES, EXAMPLE_REQUEST

PUBLIC_ROUTES = {
    "/v1/prediction": "post",
    "/predict": "post",
    "/v1/outcomes": "post",
    "/health": "get",
    "/v1/model": "get",
    "/v1/monitoring": "get",
}
POST_EXAMPLES = {"/v1/prediction": EXAMPLE_REQUEST, "/predict": EXAMPLE_REQUEST, "/v1/outcomes": EXAMPLE_OUTCOMES}
CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
ASSET = re.compile(r"(?:src|href|url)[=:]\s*\"([^\"]+)\"")  # src="...", href="..." and Swagger UI's url: "..."


@pytest.mark.parametrize("path", ["/", "/docs"])
def test_api_page_is_the_services_own(client: httpx.Client, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert "<title>Flight delay at SCL: API</title>" in response.text
    assert "googletagmanager" not in response.text and "BentoML" not in response.text


def test_api_page_loads_nothing_from_another_host(client: httpx.Client) -> None:
    targets = ASSET.findall(client.get("/docs").text)
    assert len(targets) == 4  # icon, style sheet, script, spec
    for target in targets:
        assert target.startswith("/") and not target.startswith("//"), target


def test_api_page_assets_are_served_by_bentoml(client: httpx.Client) -> None:
    # Pins BentoML 1.4.40's internal /static_content mount, which the page's Swagger UI comes from.
    for target in ASSET.findall(client.get("/docs").text):
        assert client.get(target).status_code == 200, target


def test_api_spec_names_service_and_model(client: httpx.Client) -> None:
    spec = client.get("/docs.json").json()
    assert spec["info"]["title"] == "Flight delay at SCL"
    assert spec["info"]["version"] == client.get("/v1/model").json()["tag"]
    assert "BentoML" not in json.dumps(spec["info"]) and "contact" not in spec["info"]


@pytest.mark.parametrize(("route", "method"), PUBLIC_ROUTES.items())
def test_api_spec_lists_every_public_route_with_an_example(client: httpx.Client, route: str, method: str) -> None:
    operation = client.get("/docs.json").json()["paths"][route][method]
    assert operation["description"]
    if method == "post":
        assert operation["requestBody"]["content"]["application/json"]["example"] == POST_EXAMPLES[route]
    else:
        example = operation["responses"]["200"]["content"]["application/json"]["example"]
        live = client.get(route).json()
        if route == "/v1/monitoring":  # its figures change with the traffic; its shape does not
            assert (
                example.keys() == live.keys() and example["drift"]["airline"].keys() <= live["drift"]["airline"].keys()
            )
        else:
            assert example == live


def test_api_spec_is_a_valid_openapi_3_1_document(client: httpx.Client) -> None:
    # BentoML labels its document 3.0.2, which pydantic's schemas (a null type, `examples`) are not
    spec = client.get("/docs.json").json()
    assert spec["openapi"] == "3.1.0"
    validate(spec)


def body_validator(spec: dict[str, Any], route: str) -> OAS31Validator:
    """A validator of `route`'s request body by the document's own schema, its references resolved in it."""
    content = spec["paths"][route]["post"]["requestBody"]["content"]["application/json"]
    return OAS31Validator({**content["schema"], "components": spec["components"]})


@pytest.mark.parametrize("route", POST_EXAMPLES)
def test_api_spec_examples_are_valid_by_its_own_schemas(client: httpx.Client, route: str) -> None:
    spec = client.get("/docs.json").json()
    assert list(body_validator(spec, route).iter_errors(POST_EXAMPLES[route])) == []


@pytest.mark.parametrize(
    ("schedule", "accepted"),
    [
        ("2017-07-21 19:40", True),
        ("2017-07-21 19:40:05", True),
        ("2017-07-21T19:40:00Z", False),
        ("2017-07-21 19:4", False),
    ],
)
def test_api_spec_describes_schedules_as_the_service_reads_them(
    client: httpx.Client, schedule: str, accepted: bool
) -> None:
    # a client generated from the document sends what its schema admits: an RFC 3339 date-time was, and got 400
    flight = {**EXAMPLE_REQUEST["flights"][1], "Fecha-I": schedule}
    valid = body_validator(client.get("/docs.json").json(), "/v1/prediction").is_valid({"flights": [flight]})
    answered = client.post("/v1/prediction", json={"flights": [flight]}).status_code
    assert (valid, answered) == (accepted, 200 if accepted else 400)


def test_api_spec_lists_the_404_of_the_routes_that_need_monitoring_and_the_keys_it_refuses(
    client: httpx.Client,
) -> None:
    """With monitoring off, POST /v1/outcomes and GET /v1/monitoring answer 404; the document said neither,
    nor which Idempotency-Key gets 400."""
    paths = client.get("/docs.json").json()["paths"]
    for route, method in (("/v1/outcomes", "post"), ("/v1/monitoring", "get")):
        not_found = paths[route][method]["responses"]["404"]
        assert not_found["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}
        assert "FLIGHT_DELAY_MONITORING" in not_found["description"]
    (key,) = paths["/v1/outcomes"]["post"]["parameters"]
    valid = [OAS31Validator(key["schema"]).is_valid(value) for value in ("retry-7", "", "clé", "k" * 256)]
    assert valid == [True, False, False, False]
    assert "Idempotency-Key" in paths["/v1/outcomes"]["post"]["responses"]["400"]["description"]


def test_api_spec_errors_have_the_services_error_shape(client: httpx.Client) -> None:
    spec = client.get("/docs.json").json()
    for route in POST_EXAMPLES:
        responses = spec["paths"][route]["post"]["responses"]
        assert {"400", "413", "415", "503", "504"} <= responses.keys(), route
        for status, response in responses.items():
            if int(status) >= 400:
                assert response["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}
    error = OAS31Validator({**spec["components"]["schemas"]["Error"], "components": spec["components"]})
    for answer in (
        client.post("/v1/prediction", json={"flights": [{"MES": 13}]}),
        client.post("/v1/prediction", content=b"{}", headers={"Content-Type": "text/plain"}),
    ):
        assert answer.status_code >= 400 and list(error.iter_errors(answer.json())) == []


def test_api_spec_names_no_schema_after_bentoml(client: httpx.Client) -> None:
    text = client.get("/docs.json").text
    assert "IODescriptor" not in text and "TaskStatusResponse" not in text and "InvalidArgument" not in text


@pytest.fixture(scope="module")
def browser() -> Iterator["object"]:
    """Headless Debian Chromium driven by selenium; skipped where it is not installed, except in CI."""
    if not (CHROMIUM and CHROMEDRIVER):
        skip_unless_ci("no chromium and chromedriver (apt-get install -y chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",  # root in CI
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",  # no calls home: this machine's network is closed
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--window-size=1280,2000",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()


@pytest.mark.integration
def test_api_page_try_it_out_predicts_the_prefilled_example(browser: "object", service_url: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.remote.webdriver import WebDriver
    from selenium.webdriver.support import expected_conditions as ready
    from selenium.webdriver.support.ui import WebDriverWait

    assert isinstance(browser, WebDriver)
    wait = WebDriverWait(browser, 30)
    browser.get(f"{service_url}/docs")
    assert browser.title == "Flight delay at SCL: API"
    operation = wait.until(
        ready.presence_of_element_located(
            (By.XPATH, "//div[contains(@class,'opblock-post')][.//*[@data-path='/v1/prediction']]")
        )
    )
    operation.find_element(By.CSS_SELECTOR, ".opblock-summary-control").click()
    wait.until(lambda _: operation.find_elements(By.CSS_SELECTOR, ".try-out__btn"))[0].click()
    prefilled = operation.find_element(By.CSS_SELECTOR, "textarea.body-param__text").get_attribute("value")
    assert prefilled is not None and json.loads(prefilled) == EXAMPLE_REQUEST
    operation.find_element(By.CSS_SELECTOR, "button.execute").click()
    status = wait.until(
        lambda _: operation.find_elements(By.CSS_SELECTOR, ".live-responses-table tr.response td.response-col_status")
    )
    assert status[0].text.strip().startswith("200")
    answer = json.loads(operation.find_element(By.CSS_SELECTOR, ".live-responses-table tr.response .microlight").text)
    assert len(answer) == len(EXAMPLE_REQUEST["flights"])
    assert all(set(prediction) == {"delay", "probability"} for prediction in answer)
    loaded = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert loaded and {urlsplit(url).netloc for url in loaded} == {urlsplit(service_url).netloc}
