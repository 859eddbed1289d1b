"""The API docs in a real browser: headless Chromium (Debian's ``chromium``, driven by
Playwright; no browser is ever downloaded) opens ``/docs`` and ``/redoc`` with every request
to anything but the server on 127.0.0.1 aborted, and a person's path through Swagger UI works:
every operation listed, Authorize with a key, Try it out, Execute, a 200 in the page.

``make test`` installs chromium first (the Makefile's ``browser`` step); elsewhere these tests
are skipped when it is missing.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from urllib.parse import urlparse

import httpx
import pytest
from pydantic import SecretStr

from app.config import Settings
from app.llm.fake import FakeGenerator
from app.main import create_app
from tests.api.replies import reply
from tests.remote.servers import serve

sync_api = pytest.importorskip("playwright.sync_api",
                               reason="playwright is not installed (pip install -e '.[test]')")
CHROMIUM = shutil.which("chromium")
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (make browser, or "
                       "apt-get install -y chromium)"),
]

KEY = "browser-key-0123456789abcdef"
#: Slow shared CPUs: Swagger UI parses 1.5 MB of JavaScript and a 150 kB schema.
TIMEOUT_MS = 60_000


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The app on the scripted model, API keys on, served by uvicorn on loopback."""
    state = tmp_path_factory.mktemp("browser")
    settings = Settings(summary_cache_dir=state / "summaries", archive_enabled=False,
                        rate_limit_per_minute=0, rate_limit_concurrent=0,
                        api_keys=SecretStr(f"me:{KEY}"))
    with serve(create_app(settings, generator=FakeGenerator(replies=[reply]))) as url:
        yield url


class Offline:
    """A page whose requests may reach 127.0.0.1 only: any other is aborted and recorded.

    ``aborted``: requests that reached the network layer for another host (must stay empty).
    ``refused``: (url, resource type, failure) of requests for another host that the browser
    refused before that: only images, by the pages' Content-Security-Policy (ReDoc's vendor
    logo), may be.
    """

    def __init__(self, browser: sync_api.Browser) -> None:
        self.context = browser.new_context()
        self.context.set_default_timeout(TIMEOUT_MS)
        self.aborted: list[str] = []
        self.refused: list[tuple[str, str, str | None]] = []
        self.context.route("**/*", self._route)
        self.page = self.context.new_page()
        self.page.on("requestfailed", self._failed)

    def _route(self, route: sync_api.Route) -> None:
        if urlparse(route.request.url).hostname == "127.0.0.1":
            route.continue_()
        else:
            self.aborted.append(route.request.url)
            route.abort("internetdisconnected")

    def _failed(self, request: sync_api.Request) -> None:
        if urlparse(request.url).hostname != "127.0.0.1":
            self.refused.append((request.url, request.resource_type, request.failure))

    def assert_offline(self) -> None:
        assert self.aborted == [], f"requests left for the network: {self.aborted}"
        for url, kind, failure in self.refused:  # "csp" or net::ERR_BLOCKED_BY_CSP
            assert kind == "image" and failure and "csp" in failure.lower(), (url, kind, failure)


@pytest.fixture(scope="module")
def browser() -> Iterator[sync_api.Browser]:
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True,
            # nothing of Chromium's own (updates, safe browsing...) tries the network either
            args=["--disable-background-networking", "--disable-component-update"])
        yield chromium
        chromium.close()


@pytest.fixture
def offline(browser: sync_api.Browser) -> Iterator[Offline]:
    page = Offline(browser)
    yield page
    page.context.close()


def schema_operations(base: str) -> set[tuple[str, str]]:
    schema = httpx.get(f"{base}/openapi.json").json()
    return {(method.upper(), path) for path, item in schema["paths"].items() for method in item}


def execute(page: sync_api.Page, path: str) -> sync_api.Locator:
    """Open the operation at ``path``, Try it out with its example body, Execute; returns the
    operation's block once the live response is in."""
    operation = page.locator(f".opblock:has(.opblock-summary-path[data-path='{path}'])")
    operation.locator(".opblock-summary").click()
    operation.locator(".try-out__btn").click()
    body = operation.locator("textarea.body-param__text").input_value()
    assert "Alice" in body, body  # the example of the operation
    operation.locator("button.execute").click()
    operation.locator(".live-responses-table tbody .response-col_status").wait_for()
    return operation


def test_swagger_ui_offline_lists_every_operation_and_runs_one_with_a_key(base, offline):
    page = offline.page
    page.goto(f"{base}/docs")
    page.wait_for_selector(".opblock")
    listed = page.eval_on_selector_all(".opblock", """blocks => blocks.map(b => [
        b.querySelector('.opblock-summary-method').textContent,
        b.querySelector('.opblock-summary-path').getAttribute('data-path')])""")
    assert len(listed) == len(set(map(tuple, listed)))
    assert {tuple(op) for op in listed} == schema_operations(base)

    # Authorize with the key as a bearer token.
    page.click("button.authorize")
    bearer = page.locator(".auth-container", has_text="bearerAuth")
    bearer.locator("#auth-bearer-value").fill(KEY)
    bearer.locator("button[type=submit]").click()
    bearer.locator("h6", has_text="Authorized").wait_for()
    bearer.locator("button.btn-done").click()

    counted = execute(page, "/api/v1/tokens/count")
    assert counted.locator(".live-responses-table tbody .response-col_status").inner_text() \
        == "200"
    assert f"Authorization: Bearer {KEY}" in counted.locator(".curl-command").inner_text()
    assert '"total_tokens"' in counted.locator(".live-responses-table tbody").inner_text()

    reviewed = execute(page, "/api/v1/editor-review")
    assert reviewed.locator(".live-responses-table tbody .response-col_status").inner_text() \
        == "200"
    assert '"suggestions"' in reviewed.locator(".live-responses-table tbody").inner_text()
    offline.assert_offline()


def test_without_authorize_the_page_shows_the_401(base, offline):
    page = offline.page
    page.goto(f"{base}/docs")
    page.wait_for_selector(".opblock")
    refused = execute(page, "/api/v1/tokens/count")
    assert refused.locator(".live-responses-table tbody .response-col_status").inner_text() \
        == "401"
    offline.assert_offline()


def test_redoc_renders_offline(base, offline):
    page = offline.page
    page.goto(f"{base}/redoc")
    page.wait_for_selector("[data-section-id^='operation/']")
    sections = page.locator("[data-section-id^='operation/']").count()
    assert sections == len(schema_operations(base))
    assert "Writer Assistant" in page.locator("h1").first.inner_text()
    offline.assert_offline()
