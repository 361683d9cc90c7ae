"""lexigram.tasks.integrations.asgi on the memory backend, through Starlette's TestClient
(which runs the app's lifespan and its requests on one event loop in a thread)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Annotated, Any, TypeVar

import pytest
from fastapi import Depends, FastAPI, WebSocket
from fastapi.testclient import TestClient
from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from lexigram.tasks import ConfigurationError, MemoryTaskQueue, TaskProvider, UnknownTaskError
from lexigram.tasks.integrations.asgi import (
    STATE_KEY,
    get_provider,
    get_task,
    task_dependency,
    tasks_lifespan,
)
from lexigram.tasks.task import Task
from lexigram.tasks.testing import run_without

pytestmark = pytest.mark.timeout(30)

T = TypeVar("T")
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"

Provider = Annotated[TaskProvider, Depends(get_provider)]


class RecordingQueue(MemoryTaskQueue):
    """The memory backend, noting when it is connected and disconnected."""

    def __init__(self, log: list[str], queue_name: str = "default") -> None:
        super().__init__(queue_name)
        self.log = log

    async def connect(self) -> None:
        self.log.append(f"{self.queue_name} connect")
        await super().connect()

    async def disconnect(self) -> None:
        self.log.append(f"{self.queue_name} disconnect")
        await super().disconnect()


def shop_provider(queue: MemoryTaskQueue | None = None, **options: Any) -> TaskProvider:
    # a short poll interval only makes stopping in-process workers quick
    provider = TaskProvider(queue=queue or MemoryTaskQueue(), poll_interval=0.02, **options)

    @provider.task(name="shop.send_welcome")
    async def send_welcome(user_id: int) -> str:
        return f"welcome {user_id}"

    return provider


#: Where the routes' task dependencies come from; each test serves a provider of its own.
CATALOG = shop_provider()
send_welcome: Task[[int], str] = CATALOG.tasks["shop.send_welcome"]
# FastAPI reads annotations by name from the module: the aliases live at module level.
SendWelcome = Annotated[Task[[int], str], Depends(task_dependency(send_welcome))]
SendWelcomeByName = Annotated[Task[..., Any], Depends(task_dependency("shop.send_welcome"))]
Unregistered = Annotated[Task[..., Any], Depends(task_dependency("shop.nope"))]


def shop_app(provider: TaskProvider, **lifespan_options: Any) -> FastAPI:
    """Enqueues on POST /signups; with ?wait=1 answers with the job's result."""
    app = FastAPI(lifespan=tasks_lifespan(provider, **lifespan_options))

    @app.post("/signups")
    async def signup(user_id: int, tasks: Provider, wait: bool = False) -> dict[str, Any]:
        handle = await tasks.enqueue("shop.send_welcome", user_id)
        job = await handle.status()
        assert job is not None
        answer = {"job_id": handle.id, "traceparent_trace_id": job.trace_id}
        if wait:
            answer["result"] = await handle.result(timeout=5)
        return answer

    return app


def on_app_loop(client: TestClient, call: Callable[..., Awaitable[T]], *args: Any) -> T:
    """Await ``call(*args)`` on the event loop the app runs on (the provider's)."""
    assert client.portal is not None, "only inside `with TestClient(app)`"
    return client.portal.call(call, *args)


def test_lifespan_connects_the_provider_without_workers_and_disconnects_at_shutdown() -> None:
    log: list[str] = []
    provider = shop_provider(RecordingQueue(log))
    with TestClient(shop_app(provider)) as client:
        assert log == ["default connect"]
        response = client.post("/signups", params={"user_id": 7})
        assert response.status_code == 200, response.text
        assert provider.pools == {}  # a producer only: the job waits for a worker elsewhere
        job = on_app_loop(client, provider.get_job, response.json()["job_id"])
        assert job is not None and job.state.value == "queued"
    assert log == ["default connect", "default disconnect"]


def test_workers_true_runs_the_jobs_in_the_web_process() -> None:
    provider = shop_provider(result_store=None)
    with TestClient(shop_app(provider, workers=True)) as client:
        assert list(provider.pools) == ["default"]
        response = client.post("/signups", params={"user_id": 7, "wait": True})
        assert response.status_code == 200, response.text
        assert response.json()["result"] == "welcome 7"
    assert provider.pools == {}  # stopped with the app


def test_workers_names_the_backends_whose_workers_run_here() -> None:
    log: list[str] = []
    provider = TaskProvider(
        backends={"fast": RecordingQueue(log, "fast"), "bulk": RecordingQueue(log, "bulk")},
        primary="fast",
        poll_interval=0.02,
    )

    @provider.task(name="noop")
    async def noop() -> None: ...

    with TestClient(shop_app(provider, workers=["bulk"])):
        assert list(provider.pools) == ["bulk"]
        assert sorted(log) == ["bulk connect", "fast connect"]  # both send, one works
    assert provider.pools == {}
    assert sorted(log[2:]) == ["bulk disconnect", "fast disconnect"]


def test_the_apps_own_lifespan_runs_inside_and_its_state_is_kept() -> None:
    log: list[str] = []
    provider = shop_provider(RecordingQueue(log))

    @asynccontextmanager
    async def own(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        # the provider is already connected: start-up code may enqueue
        handle = await provider.enqueue("shop.send_welcome", 1)
        log.append(f"app start {type(app).__name__} enqueued={handle.id is not None}")
        yield {"greeting": "hello"}
        log.append("app stop")

    app = FastAPI(lifespan=tasks_lifespan(provider, lifespan=own))

    @app.get("/state")
    async def state(request: Request, tasks: Provider) -> dict[str, Any]:
        return {"greeting": request.state.greeting, "same": tasks is provider}

    with TestClient(app) as client:
        assert client.get("/state").json() == {"greeting": "hello", "same": True}
    assert log == [
        "default connect",
        "app start FastAPI enqueued=True",
        "app stop",
        "default disconnect",
    ]


def test_a_failing_app_lifespan_still_disconnects_the_provider() -> None:
    log: list[str] = []
    provider = shop_provider(RecordingQueue(log))

    @asynccontextmanager
    async def broken(app: FastAPI) -> AsyncIterator[None]:
        raise RuntimeError("database unreachable")
        yield

    app = FastAPI(lifespan=tasks_lifespan(provider, lifespan=broken))
    with pytest.raises(RuntimeError, match="database unreachable"), TestClient(app):
        pass
    assert log == ["default connect", "default disconnect"]


def test_usable_inside_the_apps_own_lifespan() -> None:
    provider = shop_provider()
    seen: dict[str, Any] = {}

    @asynccontextmanager
    async def own(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        async with tasks_lifespan(provider)(app) as state:
            seen.update(state)
            yield {**state, "extra": 1}

    with TestClient(Starlette(lifespan=own)):
        assert seen == {STATE_KEY: provider}


def test_task_dependency_hands_a_route_the_task_of_the_serving_provider() -> None:
    provider = shop_provider()  # not CATALOG: the dependency looks the task up by name
    app = FastAPI(lifespan=tasks_lifespan(provider, workers=True))

    @app.post("/by-object")
    async def by_object(task: SendWelcome) -> dict[str, Any]:
        result = await (await task.enqueue(1)).result(timeout=5)
        return {"result": result, "serving": task.provider is provider}

    @app.post("/by-name")
    async def by_name(task: SendWelcomeByName) -> Any:
        return await (await task.enqueue(2)).result(timeout=5)

    @app.post("/unknown")
    async def unknown(task: Unregistered) -> None: ...

    with TestClient(app) as client:
        assert client.post("/by-object").json() == {"result": "welcome 1", "serving": True}
        assert client.post("/by-name").json() == "welcome 2"
        with pytest.raises(UnknownTaskError, match=r"'shop.nope'.*registered: shop.send_welcome"):
            client.post("/unknown")


def test_overriding_get_provider_swaps_the_provider_and_its_tasks() -> None:
    real = shop_provider()
    app = shop_app(real)

    @app.post("/task")
    async def via_task(task: SendWelcomeByName) -> bool:
        return task.provider is stand_in

    stand_in = shop_provider()
    app.dependency_overrides[get_provider] = lambda: stand_in
    with TestClient(app) as client:
        response = client.post("/signups", params={"user_id": 3})
        assert on_app_loop(client, stand_in.get_job, response.json()["job_id"]) is not None
        assert on_app_loop(client, real.get_job, response.json()["job_id"]) is None
        assert client.post("/task").json() is True


def test_starlette_endpoints_call_get_provider_and_get_task() -> None:
    provider = shop_provider()

    async def signup(request: Request) -> JSONResponse:
        tasks = get_provider(request)
        send_welcome = get_task(request, "shop.send_welcome")
        handle = await send_welcome.enqueue(int(request.query_params["user_id"]))
        return JSONResponse({"result": await handle.result(timeout=5), "same": tasks is provider})

    app = Starlette(
        routes=[Route("/signups", signup, methods=["POST"])],
        lifespan=tasks_lifespan(provider, workers=True),
    )
    with TestClient(app) as client:
        assert client.post("/signups?user_id=5").json() == {"result": "welcome 5", "same": True}


def test_a_websocket_route_gets_the_provider_too() -> None:
    provider = shop_provider()
    app = shop_app(provider)

    @app.websocket("/live")
    async def live(websocket: WebSocket, tasks: Provider) -> None:
        await websocket.accept()
        await websocket.send_json({"same": tasks is provider})
        await websocket.close()

    with TestClient(app) as client, client.websocket_connect("/live") as socket:
        assert socket.receive_json() == {"same": True}


def test_get_provider_without_the_lifespan_says_what_to_do() -> None:
    app = FastAPI()

    @app.get("/")
    async def index(tasks: Provider) -> None: ...

    with (
        TestClient(app) as client,
        pytest.raises(ConfigurationError, match=r"lifespan=tasks_lifespan\(provider\)"),
    ):
        client.get("/")


def test_bad_arguments_are_refused_with_what_was_given() -> None:
    provider = shop_provider()
    with pytest.raises(TypeError, match="needs a TaskProvider, got MemoryTaskQueue"):
        tasks_lifespan(MemoryTaskQueue())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="not the string 'default'"):
        tasks_lifespan(provider, workers="default")
    with pytest.raises(ValueError, match=r"unknown backends \['bulk'\] \(backends: default\)"):
        tasks_lifespan(provider, workers=["bulk"])
    with pytest.raises(TypeError, match="lifespan must be the app's own lifespan function"):
        tasks_lifespan(provider, lifespan=object())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="takes a task or a task name, got int"):
        task_dependency(3)  # type: ignore[call-overload]


# -- traces ----------------------------------------------------------------------------


def test_without_an_sdk_the_asgi_middleware_carries_the_request_trace_into_the_job() -> None:
    provider = shop_provider()
    app = shop_app(provider, workers=True)
    app.add_middleware(OpenTelemetryMiddleware)  # the one line; no SDK in this process
    with TestClient(app) as client:
        traced = client.post(
            "/signups", params={"user_id": 1}, headers={"traceparent": TRACEPARENT}
        )
        untraced = client.post("/signups", params={"user_id": 2})
    assert traced.json()["traceparent_trace_id"] == TRACE_ID
    assert untraced.json()["traceparent_trace_id"] is None


def test_without_the_middleware_the_request_trace_is_not_continued() -> None:
    with TestClient(shop_app(shop_provider())) as client:
        response = client.post(
            "/signups", params={"user_id": 1}, headers={"traceparent": TRACEPARENT}
        )
    assert response.json()["traceparent_trace_id"] is None


def test_with_an_sdk_request_send_and_process_spans_form_one_trace(
    tracer_provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    provider = shop_provider(tracer_provider=tracer_provider)
    app = shop_app(provider, workers=True)
    app.add_middleware(OpenTelemetryMiddleware, tracer_provider=tracer_provider)
    with TestClient(app) as client:
        response = client.post(
            "/signups", params={"user_id": 1, "wait": True}, headers={"traceparent": TRACEPARENT}
        )
    assert response.json()["result"] == "welcome 1"
    finished = exporter.get_finished_spans()
    [server] = [s for s in finished if s.kind is SpanKind.SERVER]
    [send] = [s for s in finished if s.name == "send default"]
    [process] = [s for s in finished if s.name == "process default"]
    assert {format(s.context.trace_id, "032x") for s in (server, send, process) if s.context} == {
        TRACE_ID
    }
    assert send.parent is not None and server.context is not None
    assert send.parent.span_id == server.context.span_id
    assert process.parent is not None and send.context is not None
    assert process.parent.span_id == send.context.span_id


# -- optional dependencies -------------------------------------------------------------

WITHOUT_STARLETTE = """
try:
    import lexigram.tasks.integrations.asgi
except ImportError as exc:
    print(exc)
"""

WITHOUT_FASTAPI = """
from starlette.applications import Starlette
from starlette.testclient import TestClient

from lexigram.tasks import MemoryTaskQueue, TaskProvider
from lexigram.tasks.integrations.asgi import task_dependency, tasks_lifespan

provider = TaskProvider(queue=MemoryTaskQueue())
with TestClient(Starlette(lifespan=tasks_lifespan(provider))):
    print("served")
try:
    task_dependency("shop.send_welcome")
except ImportError as exc:
    print(exc)
"""


def test_without_starlette_the_import_error_gives_the_pip_command() -> None:
    result = run_without(["starlette", "fastapi"], WITHOUT_STARLETTE)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == (
        "lexigram.tasks.integrations.asgi needs the 'starlette' extra of lexigram-tasks-core "
        "('starlette' is not installed): pip install \"lexigram-tasks-core[starlette]\""
    )


def test_starlette_alone_serves_the_lifespan_and_fastapi_is_asked_for_only_by_depends() -> None:
    result = run_without(["fastapi"], WITHOUT_FASTAPI)
    assert result.returncode == 0, result.stderr
    served, error = result.stdout.strip().splitlines()
    assert served == "served"
    assert error.endswith('pip install "lexigram-tasks-core[fastapi]"')
    assert json.dumps(error).startswith("\"task_dependency needs the 'fastapi' extra")
