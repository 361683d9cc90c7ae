"""The dashboard in headless Chromium against real Redis and PostgreSQL.

Each backend gets jobs in every state (a worker with one slot runs a job
that waits, so the jobs enqueued after it stay queued), a dead letter queue
on the same server, and a schedule. The browser opens every page, cancels
the running job, replays a failure and pauses the schedule, and checks what
the pages then show; ``<script>`` payloads in arguments, a task name and an
error never run. With ``LEXIGRAM_WRITE_SCREENSHOTS=1`` the Redis run writes
the PNGs of docs/dashboard.md.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from selenium.common.exceptions import NoAlertPresentException, StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from lexigram.tasks import Job, JobState, TaskProvider
from lexigram.tasks.dashboard import dashboard
from lexigram.tasks.dlq import DeadLetterQueue
from lexigram.tasks.scheduler import MemoryTemplateStore, ScheduleRegistry, TaskScheduler

from .conftest import Server, ServiceLoop, wait_for

XSS = "<script>window.__lexigram_xss=1</script>"
XSS_IMG = "<img src=x onerror=window.__lexigram_xss=1>"
TRACE_URL = "http://jaeger.example:16686/trace/{trace_id}"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"


@dataclass
class Served:
    """A provider with jobs in every state, its dashboard's URL and what to clean up."""

    url: str
    provider: TaskProvider
    dlq: DeadLetterQueue
    ids: dict[str, str] = field(default_factory=dict)
    #: A job that failed twice, then succeeded: three attempts.
    retried: str = ""
    release: asyncio.Event = field(default_factory=asyncio.Event)


def _backend(kind: str, redis_url: str, postgres_dsn: str, unique: str) -> tuple[Any, Any]:
    if kind == "redis":
        from lexigram.tasks.dlq.redis import RedisDeadLetterStorage
        from lexigram.tasks.redis import RedisTaskQueue

        return (
            RedisTaskQueue(redis_url, queue_name=unique),
            RedisDeadLetterStorage(redis_url, prefix=f"{unique}:dlq"),
        )
    from lexigram.tasks.dlq.postgres import PostgresDeadLetterStorage
    from lexigram.tasks.postgres import PostgresTaskQueue

    return (
        PostgresTaskQueue(postgres_dsn, queue_name="dash", schema=unique, keep_finished=3600),
        PostgresDeadLetterStorage(postgres_dsn, schema=unique),
    )


async def _cleanup(kind: str, queue: Any, redis_url: str, postgres_dsn: str, unique: str) -> None:
    if kind == "redis":
        from redis.asyncio import Redis

        client = Redis.from_url(redis_url)
        try:
            keys = [k async for k in client.scan_iter(match=f"*{unique}*", count=1000)]
            if keys:
                await client.delete(*keys)
        finally:
            await client.aclose()
        return
    import asyncpg

    connection = await asyncpg.connect(postgres_dsn)
    try:
        await connection.execute(f'DROP SCHEMA IF EXISTS "{unique}" CASCADE')
    finally:
        await connection.close()


@asynccontextmanager
async def served(kind: str, redis_url: str, postgres_dsn: str) -> AsyncIterator[Served]:
    unique = f"lxdash_{uuid.uuid4().hex[:10]}"
    queue, storage = _backend(kind, redis_url, postgres_dsn, unique)
    dlq = DeadLetterQueue(storage)
    provider = TaskProvider(
        queue=queue,
        dead_letter=dlq,
        worker_count=1,
        poll_interval=0.05,
        unknown_task_grace=0,
        # Its registry entry lapses after three intervals: 0.6 s lapsed between two
        # refreshes under a loaded CI run on a slow VM, and the Workers page found none.
        registry_interval=1.0,
        strict=False,
    )
    release = asyncio.Event()

    @provider.task(name="shop.send_receipt")
    async def send_receipt(order: str) -> str:
        return f"receipt for {order}"

    @provider.task(name="shop.charge", max_retries=0)
    async def charge(customer: str) -> None:
        raise ValueError(f"card declined for {customer}")

    @provider.task(name="shop.sync_stock", max_retries=3, retry_backoff=3600)
    async def sync_stock() -> None:
        raise ConnectionError("warehouse API unreachable")

    flaky_calls: list[str] = []

    @provider.task(name="shop.print_label", max_retries=3, retry_backoff=0.01)
    async def print_label(order: str) -> str:
        flaky_calls.append(order)
        if len(flaky_calls) < 3:
            raise TimeoutError(f"label printer busy ({len(flaky_calls)}) {XSS_IMG}")
        return f"label for {order}"

    @provider.task(name="reports.build")
    async def build_report(region: str) -> str:
        await release.wait()
        return region

    scheduler = TaskScheduler(
        provider, registry=ScheduleRegistry(), store=MemoryTemplateStore(), attach=False
    )
    board = Served("", provider, dlq, release=release)
    ids = board.ids
    try:
        async with provider:
            await scheduler.add(
                "nightly-report",
                build_report,
                "0 6 * * *",
                kwargs={"region": "eu"},
                description="Yesterday's sales, by region",
            )
            await scheduler.add("stock-sync", sync_stock, "*/15 * * * *")
            ids["succeeded"] = (await send_receipt.enqueue("A-1001")).id
            traced = charge.options(headers={"traceparent": TRACEPARENT})
            ids["failed"] = (await traced.enqueue(f"{XSS} {XSS_IMG}")).id
            ids["retrying"] = (await sync_stock.enqueue()).id
            dead = Job(task=XSS, args=[XSS], queue=queue.queue_name)
            ids["dead"] = (await provider.enqueue_job(dead)).id
            board.retried = (await print_label.enqueue("A-1005")).id
            for state in ("succeeded", "failed", "retrying", "dead"):
                await _until_state(provider, ids[state], state)
            await _until_state(provider, board.retried, "succeeded")
            ids["running"] = (await build_report.enqueue("eu")).id
            await _until_state(provider, ids["running"], "running")
            ids["queued"] = (await send_receipt.enqueue("A-1002")).id
            ids["scheduled"] = (await send_receipt.options(delay=3600).enqueue("A-1003")).id
            ids["cancelled"] = (await send_receipt.enqueue("A-1004")).id
            await provider.cancel(ids["cancelled"])
            for state in ("queued", "scheduled", "cancelled"):
                await _until_state(provider, ids[state], state)
            server = Server(dashboard(provider, allow_actions=True, trace_url=TRACE_URL, refresh=1))
            await server.start()
            board.url = server.url
            try:
                yield board
            finally:
                release.set()
                await server.stop()
    finally:
        await _cleanup(kind, queue, redis_url, postgres_dsn, unique)


async def burst(provider: TaskProvider) -> None:
    """Some quick runs (a few failing) for the overview's charts."""
    await provider.enqueue_many(
        [provider.tasks["shop.send_receipt"].job(f"B-{n}") for n in range(24)]
        + [provider.tasks["shop.charge"].job(f"customer {n}") for n in range(3)]
    )


async def _until_state(provider: TaskProvider, job_id: str, state: str) -> None:
    async def reached() -> bool:
        info = await provider.get_job(job_id)
        return info is not None and info.state is JobState(state)

    await wait_for(reached, f"job {job_id} to be {state}")


@pytest.fixture(params=["redis", "postgres"])
def board(
    request: pytest.FixtureRequest, service_loop: ServiceLoop, redis_url: str, postgres_dsn: str
) -> Iterator[tuple[str, Served, ServiceLoop]]:
    manager = served(request.param, redis_url, postgres_dsn)
    found = service_loop.run(manager.__aenter__())
    try:
        yield request.param, found, service_loop
    finally:
        service_loop.run(manager.__aexit__(None, None, None))


class Page:
    """The browser on the dashboard: open pages, click, read, check no script ran."""

    def __init__(self, driver: Any, base: str, shots: Path | None) -> None:
        self.driver, self.base, self.shots = driver, base, shots

    def open(self, path: str) -> None:
        self.driver.get(self.base + path)
        self.no_script_ran()

    def shot(self, name: str) -> None:
        if self.shots is not None:
            self.driver.save_screenshot(str(self.shots / f"{name}.png"))

    def text(self, css: str = "main") -> str:
        return str(self.driver.find_element(By.CSS_SELECTOR, css).text)

    def click(self, xpath: str) -> None:
        self.driver.find_element(By.XPATH, xpath).click()

    def confirm(self, summary: str, button: str) -> None:
        """Open the ``<details>`` named ``summary``, then press its ``button``."""
        self.click(f"//details/summary[normalize-space()='{summary}']")
        self.click(f"//details[@open]//button[normalize-space()='{button}']")
        self.no_script_ran()

    def wait_text(self, text: str, css: str = "main", reload: bool = False) -> None:
        def shown(driver: Any) -> bool:
            if text in self.text(css):
                return True
            if reload:
                driver.refresh()
            return False

        WebDriverWait(self.driver, 15, poll_frequency=0.2).until(shown, f"{text!r} in {css}")

    def no_script_ran(self) -> None:
        assert self.driver.execute_script("return window.__lexigram_xss") is None
        with pytest.raises(NoAlertPresentException):
            self.driver.switch_to.alert  # noqa: B018 (the property raises when there is none)


def test_every_page_and_the_actions_in_a_browser(
    board: tuple[str, Served, ServiceLoop], browser: Any, screenshots: Path
) -> None:
    kind, served_board, loop = board
    ids = served_board.ids
    page = Page(browser, served_board.url, screenshots if kind == "redis" else None)

    # Overview: the queue's counts, charts, and the script's live refresh.
    page.open("/")
    assert (
        "Ready" in page.text("table.counts")
        and served_board.provider.queue.queue_name in page.text()
    )
    WebDriverWait(browser, 10).until(
        lambda d: d.find_element(By.ID, "live").get_attribute("data-refreshed"), "a live refresh"
    )
    assert len(browser.find_elements(By.CSS_SELECTOR, ".chart svg")) == 2

    # Jobs: each state's tab lists its job.
    for state, job_id in ids.items():
        page.open(f"/jobs?state={state}")
        assert job_id in page.text("table.jobs"), state
    page.open("/jobs")
    page.shot("jobs")
    page.open(f"/jobs?id={ids['failed']}")  # the search box's query
    assert "card declined" in page.text()

    # Job detail: arguments and error shown as text, traceback from the DLQ record.
    assert XSS in page.text() and XSS_IMG in page.text()
    assert "ValueError" in page.text() and "Traceback" in page.text()
    trace = browser.find_element(By.LINK_TEXT, TRACE_ID)
    assert trace.get_attribute("href") == TRACE_URL.format(trace_id=TRACE_ID)
    page.shot("job")
    page.open(f"/jobs/{ids['dead']}")
    assert XSS in page.text("h1 + dl")

    # A job that failed twice then succeeded: its attempts, newest first, each with its
    # worker, outcome and error; a traceback opens on a click.
    page.open(f"/jobs/{served_board.retried}")
    rows = browser.find_elements(By.CSS_SELECTOR, "table#attempts tbody tr")
    cells = [[c.text for c in row.find_elements(By.TAG_NAME, "td")] for row in rows]
    assert [c[0] for c in cells] == ["3", "2", "1"]
    assert [c[4] for c in cells] == ["completed", "retrying", "retrying"]
    assert {c[1] for c in cells} == {served_board.provider.worker_id}
    assert cells[2][5].startswith(f"TimeoutError: label printer busy (1) {XSS_IMG}")
    assert cells[1][5].startswith(f"TimeoutError: label printer busy (2) {XSS_IMG}")
    assert cells[0][5] == "-"
    first = "table#attempts tbody tr:last-child"
    assert not browser.find_element(By.CSS_SELECTOR, f"{first} pre.traceback").is_displayed()
    browser.find_element(By.CSS_SELECTOR, f"{first} details.traceback > summary").click()
    assert "raise TimeoutError" in page.text(f"{first} pre.traceback")
    page.no_script_ran()
    browser.execute_script(
        "document.getElementById('attempts').previousElementSibling.scrollIntoView()"
    )
    page.shot("job-attempts")

    # Workers: the live worker, running the blocked job.
    page.open("/workers")
    assert served_board.provider.worker_id in page.text()
    page.wait_text(ids["running"], "table.workers", reload=True)
    page.shot("workers")

    # Cancel the running job: the worker stops it and the page says cancelled.
    page.open(f"/jobs/{ids['running']}")
    page.confirm("Cancel", "Yes, cancel it")
    page.wait_text("Cancellation sent", ".notice")
    page.wait_text("cancelled", "#job-state", reload=True)

    # Failures: replay the failed charge; it leaves the DLQ and runs again.
    page.open("/failures")
    assert "card declined" in page.text() and ids["failed"] in page.text()
    page.shot("failures")
    browser.find_element(By.CSS_SELECTOR, f"input[name=ids][value='{ids['failed']}']").click()
    page.confirm("Replay selected", "Yes, replay the selected")
    page.wait_text("Replayed 1 record(s)", ".notice")
    assert ids["failed"] not in page.text("table.failures")  # its job runs (and fails) anew

    # Schedules, with JavaScript off (the confirm steps need none): pause, then the row
    # says paused and offers Resume.
    browser.execute_cdp_cmd("Emulation.setScriptExecutionDisabled", {"value": True})
    page.open("/schedules")
    assert "nightly-report" in page.text() and "0 6 * * *" in page.text()
    page.click("//tr[@data-name='nightly-report']//summary[normalize-space()='Pause']")
    page.click("//tr[@data-name='nightly-report']//button[normalize-space()='Yes, pause']")
    page.wait_text("Schedule paused", ".notice")
    row = "tr[data-name='nightly-report'] td.schedule-state"
    assert page.text(row) == "paused"
    assert page.text("tr[data-name='stock-sync'] td.schedule-state") == "active"
    browser.execute_cdp_cmd("Emulation.setScriptExecutionDisabled", {"value": False})
    page.shot("schedules")

    # The overview's charts, once the freed worker has run a burst of jobs.
    loop.run(burst(served_board.provider))
    page.open("/")

    def runs_drawn(driver: Any) -> bool:
        caption = driver.find_element(By.CSS_SELECTOR, ".chart .caption").text
        return int(caption.split()[0]) >= 27  # "N runs in the last hour, ..."

    # The script replaces the chart while we read it: a stale element means "look again".
    patient = WebDriverWait(browser, 20, 0.2, ignored_exceptions=[StaleElementReferenceException])
    patient.until(runs_drawn, "the burst in the chart")
    assert patient.until(lambda d: d.find_elements(By.CSS_SELECTOR, ".chart rect.done"))
    assert patient.until(lambda d: d.find_elements(By.CSS_SELECTOR, ".chart rect.failed"))
    page.shot("overview")
