"""The statements behind job inspection, progress, cancellation and the worker registry.

``$1`` is the queue name where one is needed, as in :mod:`._sql`. Listings
read one index each, in that index's order, so a deep page costs what the
first does (see :meth:`ControlStatements.for_schema` for which index).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from lexigram.tasks.postgres.migrate import quote_ident

#: The state a job shows: status refined by ``state``, and the clock.
#: A running row whose lease lapsed is queued again (its worker died).
_SHOWN_STATE = (
    "CASE status"
    " WHEN 'ready' THEN CASE WHEN state = 'retrying' THEN 'retrying'"
    " WHEN run_at > now() THEN 'scheduled' ELSE 'queued' END"
    " WHEN 'running' THEN CASE WHEN lease_expires_at > now() THEN 'running' ELSE 'queued' END"
    " ELSE coalesce(state, CASE status WHEN 'done' THEN 'succeeded' ELSE 'failed' END) END"
)

_COLUMNS = (
    "id, status, job_id, payload, priority, attempt, task, cancel_requested,"
    " extract(epoch FROM enqueued_at)::float8 AS enqueued_at,"
    " extract(epoch FROM run_at)::float8 AS run_at,"
    " extract(epoch FROM started_at)::float8 AS started_at,"
    " extract(epoch FROM finished_at)::float8 AS finished_at,"
    " error_type, error_message, failure_reason, progress, progress_message, meta::text AS meta,"
    f" {_SHOWN_STATE} AS shown_state,"
    # The keys of the listings' cursors, as text so they round-trip exactly.
    " run_at::text AS run_at_key, finished_at::text AS finished_at_key"
)

_TASK = "($2::text IS NULL OR task = $2)"
_MAX_ID = "9223372036854775807"


@functools.lru_cache(maxsize=64)
def budgeted(statement: str, params: int) -> str:
    """``statement`` (its task parameter given NULL, its page size the budget)
    with the task filter applied to the rows it read.

    Kept: the first ``$(params + 2)`` rows whose task is ``$(params + 1)``,
    and the last row read (its ``scan_count`` says how many were read).
    """
    task, wanted = f"${params + 1}", f"${params + 2}"
    return (
        "SELECT * FROM (SELECT s.*, row_number() OVER () AS scan_rn,"
        " count(*) OVER () AS scan_count,"
        f" count(*) FILTER (WHERE s.task = {task}::text)"
        " OVER (ROWS UNBOUNDED PRECEDING) AS scan_matched"
        f" FROM ({statement}) AS s) AS b"
        f" WHERE (b.task = {task}::text AND b.scan_matched <= {wanted}::bigint)"
        " OR b.scan_rn = b.scan_count ORDER BY b.scan_rn"
    )


@dataclass(frozen=True, slots=True)
class ControlStatements:
    cancel_channel: str
    get_job: str
    list_ready: dict[str, str]
    list_lapsed: str
    list_running: str
    list_finished: str
    list_all: str
    record_progress: str
    cancel: str
    cancel_requested: str
    register_worker: str
    deregister_worker: str
    list_workers: str
    purge_workers: str

    @classmethod
    def for_schema(cls, schema: str) -> ControlStatements:
        t = f"{quote_ident(schema)}.jobs"
        w = f"{quote_ident(schema)}.workers"
        # Ready jobs in the order they run (priority, then run_at), one
        # priority at a time so each branch is a range of jobs_ready_idx (or
        # jobs_retrying_idx). Cursor: ($3 priority, $4 run_at, $5 id) of the
        # last job shown; $6 the page size.
        after_run_at = "CASE WHEN p.priority = $3 THEN $4::text::timestamptz ELSE '-infinity' END"
        after_id = "CASE WHEN p.priority = $3 THEN $5::bigint ELSE 0 END"
        ready = (
            f"SELECT j.* FROM generate_series($3::int, 0, -1) AS p(priority),"
            f" LATERAL (SELECT {_COLUMNS} FROM {t} AS r"
            " WHERE queue_name = $1 AND status = 'ready' AND priority = p.priority AND {when}"
            f" AND {_TASK} AND (run_at, id) > ({{after}})"
            # r.run_at: the column, not the epoch of the same name in _COLUMNS.
            " ORDER BY r.run_at, r.id LIMIT $6) AS j"
            " ORDER BY j.priority DESC, j.run_at_key::timestamptz, j.id LIMIT $6"
        )
        # Scheduled jobs start after now(): folded into the one lower bound,
        # as a separate `run_at > now()` the index scan would start there and
        # step over every page already shown.
        after_now = (
            f"greatest({after_run_at}, now()),"
            f" CASE WHEN {after_run_at} > now() THEN {after_id} ELSE {_MAX_ID} END"
        )
        not_retrying = "state IS DISTINCT FROM 'retrying'"
        # The newest row of job $2 in queue $1. The job-id index leaves running
        # rows out (migration 0006: every lease would add an entry to it);
        # they are few, and found through jobs_running_idx.
        newest = (
            f"(SELECT max(id) FROM (SELECT id FROM {t}"
            " WHERE job_id = $2 AND queue_name = $1 AND status <> 'running'"
            f" UNION ALL SELECT id FROM {t}"
            " WHERE queue_name = $1 AND status = 'running' AND job_id = $2) AS found)"
        )
        return cls(
            cancel_channel=f"{schema}.cancel",
            # Only a job's own page shows its worker and attempts (listings leave them out).
            get_job=(
                f"SELECT {_COLUMNS}, worker_id, attempts::text AS attempts"
                f" FROM {t} WHERE id = {newest}"
            ),
            list_ready={
                "queued": ready.replace("{when}", f"run_at <= now() AND {not_retrying}").replace(
                    "{after}", f"{after_run_at}, {after_id}"
                ),
                "scheduled": ready.replace("{when}", not_retrying).replace("{after}", after_now),
                "retrying": ready.replace("{when}", "state = 'retrying'").replace(
                    "{after}", f"{after_run_at}, {after_id}"
                ),
            },
            # Running rows whose lease lapsed show as queued; listed first,
            # by id ($3), before the ready ones (a dequeue takes them first too).
            list_lapsed=(
                f"SELECT {_COLUMNS} FROM {t} WHERE queue_name = $1 AND status = 'running'"
                f" AND lease_expires_at <= now() AND {_TASK} AND id > $3 ORDER BY id LIMIT $4"
            ),
            # Few rows run at once: read them all from jobs_running_idx, then
            # sort by id (the fence keeps the planner off a primary-key walk).
            list_running=(
                "WITH running AS MATERIALIZED ("
                f" SELECT id FROM {t} WHERE queue_name = $1 AND status = 'running'"
                f" AND lease_expires_at > now() AND {_TASK} AND id > $3)"
                f" SELECT {_COLUMNS} FROM {t}"
                " WHERE id IN (SELECT id FROM running ORDER BY id LIMIT $4)"
                " ORDER BY id"
            ),
            # jobs_finished_idx (queue_name, status, state, finished_at, id): the
            # state's range under each finished status, merged in order.
            # Cursor: ($4 finished_at, $5 id); $3 the state.
            list_finished=(
                f"SELECT {_COLUMNS} FROM ("
                + " UNION ALL ".join(
                    f"(SELECT * FROM {t} WHERE queue_name = $1 AND status = '{status}'"
                    " AND state = $3 AND (finished_at, id) > ($4::text::timestamptz, $5::bigint)"
                    f" AND {_TASK} ORDER BY finished_at, id LIMIT $6)"
                    for status in ("done", "failed")
                )
                + ") AS f ORDER BY f.finished_at, f.id LIMIT $6"
            ),
            list_all=(
                f"SELECT {_COLUMNS} FROM {t} WHERE queue_name = $1 AND {_TASK} AND id > $3"
                " ORDER BY id LIMIT $4"
            ),
            record_progress=(
                f"UPDATE {t} SET progress = coalesce($3, progress),"
                " progress_message = coalesce($4, progress_message),"
                " meta = CASE WHEN $5::jsonb IS NULL THEN meta"
                " ELSE coalesce(meta, '{}'::jsonb) || $5::jsonb END"
                " WHERE id = $1 AND lease_token = $2 AND status = 'running'"
            ),
            # One statement: the newest row of the id, locked; a pending one
            # (or a running one whose lease lapsed) ends cancelled and frees
            # its dedup key; a running one is marked and its worker told by
            # NOTIFY (delivered when this commits, so the mark is visible).
            cancel=(
                "WITH target AS ("
                f" SELECT id, status, lease_expires_at <= now() AS lapsed FROM {t}"
                f" WHERE id = {newest} FOR UPDATE),"
                f" stopped AS (UPDATE {t} AS j SET status = 'done', state = 'cancelled',"
                " finished_at = now(), lease_token = NULL, lease_expires_at = NULL"
                " FROM target WHERE j.id = target.id"
                " AND (target.status = 'ready' OR (target.status = 'running' AND target.lapsed))"
                " RETURNING j.id),"
                f" asked AS (UPDATE {t} AS j SET cancel_requested = true"
                " FROM target WHERE j.id = target.id AND target.status = 'running'"
                " AND NOT target.lapsed RETURNING j.id)"
                " SELECT CASE WHEN EXISTS (SELECT FROM stopped) THEN 'cancelled'"
                " WHEN EXISTS (SELECT FROM asked) THEN 'requested'"
                " WHEN EXISTS (SELECT FROM target) THEN 'finished' ELSE 'not_found' END,"
                " (SELECT pg_notify($3, json_build_array($1::text, $2::text)::text) FROM asked)"
            ),
            cancel_requested=(
                f"SELECT id FROM {t} WHERE id = ANY($1::bigint[]) AND cancel_requested"
            ),
            register_worker=(
                f"INSERT INTO {w} (id, info, heartbeat_at, expires_at)"
                " VALUES ($1, $2::jsonb, now(), now() + make_interval(secs => $3))"
                " ON CONFLICT (id) DO UPDATE SET info = excluded.info,"
                " heartbeat_at = excluded.heartbeat_at, expires_at = excluded.expires_at"
            ),
            deregister_worker=f"DELETE FROM {w} WHERE id = $1",
            list_workers=f"SELECT info::text FROM {w} WHERE expires_at > now() ORDER BY id",
            purge_workers=f"DELETE FROM {w} WHERE expires_at <= now()",
        )
