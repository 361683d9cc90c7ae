"""Fixtures of the dashboard's tests: the real services, a server thread, a headless browser.

The services come from the same variables as ``tests-integration``
(``LEXIGRAM_TEST_REDIS_URL``, ``LEXIGRAM_TEST_POSTGRES_DSN``,
``LEXIGRAM_TEST_AMQP_URL``); a missing one fails the test with how to
provide it. The dashboard under test runs in uvicorn on a free loopback port,
on an event loop of its own thread, next to the workers that put jobs in
every state.
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

T = TypeVar("T")

#: Debian's packages by default; elsewhere (a CI image with Chrome) the variables say where.
CHROMIUM = os.environ.get("LEXIGRAM_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("LEXIGRAM_TEST_CHROMEDRIVER", "/usr/bin/chromedriver")
ROOT = Path(__file__).resolve().parents[3]
#: Set to 1 to rewrite the PNGs docs/dashboard.md shows (else they go to a temporary folder).
SCREENSHOTS_VARIABLE = "LEXIGRAM_WRITE_SCREENSHOTS"


def _service(variable: str, what: str, example: str) -> str:
    url = os.environ.get(variable)
    if not url:
        pytest.fail(f"{what} is needed: set {variable} (e.g. {example})", pytrace=False)
    return url


@pytest.fixture(scope="session")
def redis_url() -> str:
    return _service("LEXIGRAM_TEST_REDIS_URL", "Redis", "redis://127.0.0.1:6379/0")


@pytest.fixture(scope="session")
def postgres_dsn() -> str:
    return _service(
        "LEXIGRAM_TEST_POSTGRES_DSN", "PostgreSQL", "postgresql://postgres@127.0.0.1:5432/test"
    )


@pytest.fixture(scope="session")
def amqp_url() -> str:
    return _service("LEXIGRAM_TEST_AMQP_URL", "RabbitMQ", "amqp://guest:guest@127.0.0.1:5672/")


class ServiceLoop:
    """An event loop running in a thread: the server and the workers live on it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


@pytest.fixture(scope="module")
def service_loop() -> Iterator[ServiceLoop]:
    loop = ServiceLoop()
    yield loop
    loop.close()


class Server:
    """uvicorn serving an ASGI app on a free 127.0.0.1 port (call :meth:`start` on its loop)."""

    def __init__(self, app: Any) -> None:
        import uvicorn

        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.bind(("127.0.0.1", 0))
        self.port = self._socket.getsockname()[1]
        config = uvicorn.Config(app, lifespan="off", log_level="warning")
        self._server = uvicorn.Server(config)
        self._task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._task = asyncio.create_task(self._server.serve(sockets=[self._socket]))
        await wait_for(lambda: self._server.started, "the server to start")

    async def stop(self) -> None:
        self._server.should_exit = True
        if self._task is not None:
            await asyncio.wait_for(self._task, 10)


async def wait_for(condition: Callable[[], Any], what: str, timeout: float = 15) -> Any:
    """Poll ``condition`` (sync or async) until truthy; fail naming ``what`` at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    """Headless Debian Chromium through its own ChromeDriver: Selenium Manager never runs."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common import selenium_manager

    def no_download(*args: object, **kwargs: object) -> Any:
        raise AssertionError("Selenium Manager was asked for a driver: it must not download")

    patched = pytest.MonkeyPatch()
    patched.setattr(selenium_manager.SeleniumManager, "binary_paths", no_download)
    for path in (CHROMIUM, CHROMEDRIVER):
        if not os.path.exists(path):
            pytest.fail(
                f"{path} is needed: apt-get install chromium chromium-driver, or set "
                "LEXIGRAM_TEST_CHROMIUM and LEXIGRAM_TEST_CHROMEDRIVER",
                pytrace=False,
            )
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1200,800",
        "--disable-extensions",
        "--no-first-run",
        "--disable-background-networking",
    ):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()
        patched.undo()


@pytest.fixture(scope="session")
def screenshots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the browser tests save their screenshots (docs/images/dashboard when asked to)."""
    if os.environ.get(SCREENSHOTS_VARIABLE) == "1":
        folder = ROOT / "docs" / "images" / "dashboard"
        folder.mkdir(parents=True, exist_ok=True)
        return folder
    return tmp_path_factory.mktemp("screenshots")
