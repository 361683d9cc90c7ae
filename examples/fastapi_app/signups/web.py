"""The web application: ``uvicorn signups.web:app``.

``tasks_lifespan`` connects the provider when the server starts (its workers
run in ``lexigram-tasks worker signups.tasks:provider``, another process),
and OpenTelemetry's ASGI middleware makes an incoming ``traceparent`` the
current trace, which the enqueue writes into the job.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException
from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware

from lexigram.tasks import TaskProvider
from lexigram.tasks.integrations.asgi import get_provider, task_dependency, tasks_lifespan
from lexigram.tasks.task import Task
from signups.tasks import provider, send_welcome

Tasks = Annotated[TaskProvider, Depends(get_provider)]
SendWelcome = Annotated[Task[[int], dict[str, object]], Depends(task_dependency(send_welcome))]

app = FastAPI(title="signups", lifespan=tasks_lifespan(provider))
app.add_middleware(OpenTelemetryMiddleware)


@app.post("/signups", status_code=202)
async def sign_up(user_id: int, welcome: SendWelcome) -> dict[str, str]:
    handle = await welcome.enqueue(user_id)
    return {"job_id": handle.id}


@app.get("/jobs/{job_id}")
async def job_status(job_id: str, tasks: Tasks) -> dict[str, Any]:
    info = await tasks.get_job(job_id)
    if info is None:
        raise HTTPException(status_code=404, detail=f"no job {job_id}")
    return info.to_dict()
