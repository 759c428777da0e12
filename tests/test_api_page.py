"""The API page at / and /docs: the service's own, complete, self-contained, and usable in a real browser."""

import json
import re
import shutil
from collections.abc import Iterator
from urllib.parse import urlsplit

import httpx
import pytest
from helpers import skip_unless_ci

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
