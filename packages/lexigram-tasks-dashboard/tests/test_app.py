"""The dashboard on the memory backend, through HTTP: links, access, CSRF, escaping, errors."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from html import unescape
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request

from lexigram.tasks import JobState, MemoryTaskQueue, TaskProvider
from lexigram.tasks.dashboard import Access, dashboard
from lexigram.tasks.dlq import DeadLetterQueue
from lexigram.tasks.scheduler import ScheduleRegistry, TaskScheduler

XSS = "<script>window.__lexigram_xss=1</script>"


@pytest.fixture
async def provider() -> AsyncIterator[TaskProvider]:
    made = TaskProvider(queue=MemoryTaskQueue(), dead_letter=DeadLetterQueue())

    @made.task(name="demo.add")
    async def add(a: Any, b: Any) -> Any:
        return a + b

    await made.connect()
    yield made
    await made.disconnect()


def client(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


def links(html: str) -> list[str]:
    return re.findall(r'(?:href|action)="([^"]+)"', html)


async def post(http: httpx.AsyncClient, path: str, **data: str) -> httpx.Response:
    token = http.cookies.get("lexigram_dashboard_csrf") or ""
    return await http.post(path, data={"csrf_token": token, **data})


async def test_mounted_under_a_prefix_every_link_and_form_keeps_it(provider: TaskProvider) -> None:
    handle = await provider.enqueue("demo.add", 1, 2)
    host = Starlette()
    host.mount("/ops/tasks", dashboard(provider, allow_actions=True))
    async with client(host) as http:
        for path in ["/ops/tasks/", "/ops/tasks/jobs", f"/ops/tasks/jobs/{handle.id}"]:
            page = await http.get(path)
            assert page.status_code == 200
            assert links(page.text)
            assert all(link.startswith("/ops/tasks/") for link in links(page.text)), path
        css = await http.get("/ops/tasks/static/dashboard.css")
        assert css.status_code == 200 and "text/css" in css.headers["content-type"]


async def test_read_only_by_default_no_buttons_and_posts_refused(provider: TaskProvider) -> None:
    handle = await provider.enqueue("demo.add", 1, 2)
    async with client(dashboard(provider)) as http:
        page = await http.get(f"/jobs/{handle.id}")
        assert "Cancel" not in page.text and "read-only" in page.text
        refused = await post(http, f"/jobs/{handle.id}/cancel")
        assert refused.status_code == 403
        assert "allow_actions=True" in refused.text
    assert (await provider.get_job(handle.id)).state is JobState.QUEUED  # type: ignore[union-attr]


async def test_a_post_without_or_with_a_wrong_csrf_token_is_refused(provider: TaskProvider) -> None:
    handle = await provider.enqueue("demo.add", 1, 2)
    async with client(dashboard(provider, allow_actions=True)) as http:
        await http.get("/")  # sets the cookie
        missing = await http.post(f"/jobs/{handle.id}/cancel", data={})
        wrong = await http.post(f"/jobs/{handle.id}/cancel", data={"csrf_token": "x" * 43})
        assert missing.status_code == wrong.status_code == 403
        assert "CSRF" in wrong.text
        assert (await provider.get_job(handle.id)).state is JobState.QUEUED  # type: ignore[union-attr]
        done = await post(http, f"/jobs/{handle.id}/cancel")
        assert done.status_code == 303
        shown = await http.get(done.headers["location"])
        assert "Job cancelled" in shown.text
    assert (await provider.get_job(handle.id)).state is JobState.CANCELLED  # type: ignore[union-attr]


async def test_auth_hook_separates_seeing_from_acting(provider: TaskProvider) -> None:
    handle = await provider.enqueue("demo.add", 1, 2)

    async def auth(request: Request, access: Access) -> bool:
        role = request.headers.get("x-role")
        return role == "admin" or (role == "viewer" and access is Access.SEE)

    app = dashboard(provider, allow_actions=True, auth=auth)
    async with client(app) as http:
        assert (await http.get("/")).status_code == 403
        http.headers["x-role"] = "viewer"
        page = await http.get(f"/jobs/{handle.id}")
        assert page.status_code == 200 and "Yes, cancel it" not in page.text
        assert (await post(http, f"/jobs/{handle.id}/cancel")).status_code == 403
        http.headers["x-role"] = "admin"
        assert "Yes, cancel it" in (await http.get(f"/jobs/{handle.id}")).text
        assert (await post(http, f"/jobs/{handle.id}/cancel")).status_code == 303


async def test_basic_auth_recipe_asks_the_browser_for_a_password(provider: TaskProvider) -> None:
    def basic(request: Request) -> bool:
        if request.headers.get("authorization") != "Basic b3BzOnNlY3JldA==":  # ops:secret
            raise HTTPException(401, "Log in", headers={"WWW-Authenticate": 'Basic realm="tasks"'})
        return True

    async with client(dashboard(provider, auth=basic)) as http:
        refused = await http.get("/")
        assert refused.status_code == 401
        assert refused.headers["www-authenticate"] == 'Basic realm="tasks"'
        assert (await http.get("/", auth=("ops", "secret"))).status_code == 200


async def test_payloads_are_shown_escaped_never_as_markup(provider: TaskProvider) -> None:
    provider.strict = False
    handle = await provider.enqueue(XSS, XSS, note=f'"><img src=x onerror=alert(1)>{XSS}')
    async with client(dashboard(provider)) as http:
        for path in [f"/jobs/{handle.id}", "/jobs"]:
            page = await http.get(path)
            assert XSS not in page.text and "<img src=x" not in page.text
            assert "&lt;script&gt;window.__lexigram_xss=1&lt;/script&gt;" in page.text
            csp = page.headers["content-security-policy"]
            assert "script-src 'self'" in csp


async def test_trace_link_from_the_url_template(provider: TaskProvider) -> None:
    headers = {"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}
    job = provider.tasks["demo.add"].job(1, 2)
    job.headers.update(headers)
    handle = await provider.enqueue_job(job)
    app = dashboard(provider, trace_url="http://jaeger:16686/trace/{trace_id}")
    async with client(app) as http:
        page = await http.get(f"/jobs/{handle.id}")
    assert 'href="http://jaeger:16686/trace/4bf92f3577b34da6a3ce929d0e0e4736"' in page.text
    with pytest.raises(ValueError, match=r"must contain \{trace_id\}"):
        dashboard(provider, trace_url="http://jaeger:16686/trace/")
    with pytest.raises(ValueError, match="http"):
        dashboard(provider, trace_url="javascript:alert({trace_id})")


async def test_bad_input_gets_a_page_naming_the_problem(provider: TaskProvider) -> None:
    async with client(dashboard(provider)) as http:
        state = await http.get("/jobs?state=finished")
        assert state.status_code == 400 and "'finished' is not a job state" in unescape(state.text)
        when = await http.get("/jobs?since=yesterday")
        assert when.status_code == 400 and "since: 'yesterday' is not a time" in unescape(when.text)
        cursor = await http.get("/jobs?cursor=%21%21")
        assert cursor.status_code == 400 and "cursor" in cursor.text
        backend = await http.get("/jobs?backend=nope")
        assert backend.status_code == 400 and "'nope' is not a backend" in unescape(backend.text)
        missing = await http.get("/jobs?id=no-such-job")
        assert missing.status_code == 404 and "no-such-job" in missing.text
    with pytest.raises(TypeError, match="TaskProvider"):
        dashboard("not a provider")  # type: ignore[arg-type]


async def test_a_backend_url_is_shown_without_its_password() -> None:
    from lexigram.tasks.redis import RedisTaskQueue

    queue = RedisTaskQueue("redis://:s3cret@127.0.0.1:1/0", connect_timeout=0.5)
    provider = TaskProvider(queue=queue)
    async with client(dashboard(provider)) as http:
        page = await http.get("/")
        assert page.status_code == 200
        assert "s3cret" not in page.text
        assert "redis://:***@127.0.0.1:1/0" in page.text
        jobs = await http.get("/jobs")
        assert jobs.status_code == 503 and "s3cret" not in jobs.text


async def test_schedules_pause_resume_and_trigger(provider: TaskProvider) -> None:
    registry = ScheduleRegistry()

    @registry.scheduled(cron="0 6 * * *", name="nightly")
    def nightly() -> None: ...

    TaskScheduler(provider, registry=registry, attach=False)
    async with client(dashboard(provider, allow_actions=True)) as http:
        page = await http.get("/schedules")
        assert "nightly" in page.text and "0 6 * * *" in page.text
        paused = await post(http, "/schedules/action", name="nightly", op="pause")
        assert "paused" in (await http.get(paused.headers["location"])).text
        await post(http, "/schedules/action", name="nightly", op="resume")
        triggered = await post(http, "/schedules/action", name="nightly", op="trigger")
        assert "one job was enqueued" in (await http.get(triggered.headers["location"])).text
        unknown = await post(http, "/schedules/action", name="nope", op="pause")
        assert unknown.status_code == 404
    [fired] = (await provider.jobs()).jobs  # the trigger's job, nothing else
    assert fired.state is JobState.QUEUED


async def test_the_overview_shares_one_reading_between_refreshes(provider: TaskProvider) -> None:
    app = dashboard(provider, refresh=60)
    async with client(app) as http:
        for _ in range(5):
            assert (await http.get("/live")).status_code == 200
        await http.get("/")
    assert app.state.dashboard.sampler.readings == 1


async def test_retry_now_replays_a_dead_letter_or_enqueues_a_copy(provider: TaskProvider) -> None:
    @provider.task(name="demo.boom", max_retries=0)
    async def boom(n: int) -> None:
        raise ValueError(f"boom {n}")

    async with provider:
        failed = await boom.enqueue(7)
        dlq = provider.dead_letter
        assert isinstance(dlq, DeadLetterQueue)
        deadline = time.monotonic() + 10
        while await dlq.get(failed.id) is None:
            assert time.monotonic() < deadline, "the failure never reached the DLQ"
            await asyncio.sleep(0.01)
    cancelled = await provider.enqueue("demo.add", 1, 2)
    await provider.cancel(cancelled.id)
    async with client(dashboard(provider, allow_actions=True)) as http:
        page = await http.get(f"/jobs/{failed.id}")
        assert "Traceback" in page.text and "boom 7" in page.text and "Retry now" in page.text
        replayed = await post(http, f"/jobs/{failed.id}/retry")
        new_id = replayed.headers["location"].split("/jobs/")[1].split("?")[0]
        assert new_id != failed.id
        assert await dlq.get(failed.id) is None
        copied = await post(http, f"/jobs/{cancelled.id}/retry")
        copy_id = copied.headers["location"].split("/jobs/")[1].split("?")[0]
        shown = await http.get(copied.headers["location"])
        assert "A new job was enqueued" in shown.text
        refused = await post(http, f"/jobs/{copy_id}/retry")  # queued: nothing to retry
        assert refused.status_code == 400 and "only a failed, cancelled or dead job" in refused.text
    replay = await provider.get_job(new_id)
    copy = await provider.get_job(copy_id)
    assert replay is not None and (replay.task, replay.args) == ("demo.boom", [7])
    assert copy is not None and (copy.task, copy.args, copy.state) == (
        "demo.add",
        [1, 2],
        JobState.QUEUED,
    )
