"""The API's documentation page in a real browser (Debian's Chromium, driven by Playwright): Swagger UI renders
the API from assets this server serves, and the browser asks no other host for anything, also when the server
is reached by a name other than loopback (``--allowed-host``).

Skipped without Chromium or Playwright, unless ``HPO_REQUIRE_BROWSER=1`` (as in CI).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator

import pytest
import uvicorn

from hpo_service.api.app import create_app
from hpo_service.store.database import database_url
from tests.test_dashboard_browser import CHROMIUM, CHROMIUM_ARGS

HOST = "hpo.lab.example"  # resolved to loopback by the browser alone (--host-resolver-rules)


@pytest.fixture(scope="module")
def browser() -> Iterator:
    """Chromium that resolves ``HOST`` to this machine."""
    why = None if CHROMIUM.is_file() else f"no Chromium at {CHROMIUM} (apt-get install chromium)"
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        why = "Playwright is not installed (pip install -e '.[dev]')"
    if why:
        if os.environ.get("HPO_REQUIRE_BROWSER") == "1":
            pytest.fail(f"the browser tests are required (HPO_REQUIRE_BROWSER=1): {why}")
        pytest.skip(why)
    args = [*CHROMIUM_ARGS, f"--host-resolver-rules=MAP {HOST} 127.0.0.1"]
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=args)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """A controller without the engine on a free loopback port, answering as ``HOST`` too; its port."""
    url = database_url(str(tmp_path_factory.mktemp("docs") / "hpo.db"))
    app = create_app(url, run_engine=False, allowed_hosts=[HOST])
    running = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=running.run, daemon=True)
    thread.start()
    while not running.started:
        time.sleep(0.05)
    try:
        yield running.servers[0].sockets[0].getsockname()[1]
    finally:
        running.should_exit = True
        thread.join(10)


def test_the_documentation_renders_offline(browser, server):
    context = browser.new_context()
    for origin in (f"http://127.0.0.1:{server}", f"http://{HOST}:{server}"):
        page = context.new_page()
        requested: list[str] = []
        page.on("request", lambda request, seen=requested: seen.append(request.url))
        page.goto(f"{origin}/docs")
        page.wait_for_selector(".swagger-ui .info .title:has-text('completedp-hpo')", timeout=30_000)
        page.wait_for_load_state("networkidle")
        assert f"{origin}/openapi.json" in requested
        assert all(url.startswith((origin, "data:", "blob:")) for url in requested), requested
    context.close()
