"""The statements the queue runs, for one schema.

Every statement is a single round trip; asyncpg prepares each once per
connection. ``$1`` is always the queue name where one is needed.
"""

from __future__ import annotations

from dataclasses import dataclass

from lexigram.tasks.postgres.migrate import quote_ident

#: How a pending job ends when it is cancelled (or its lapsed lease is found cancelled).
_CANCELLED = "status = 'done', state = 'cancelled', finished_at = now()"

_DEDUP_CONFLICT = (
    "ON CONFLICT (queue_name, dedup_key)"
    " WHERE dedup_key IS NOT NULL AND status IN ('ready', 'running') DO NOTHING"
)


#: The transaction-local setting with which an INSERT says it sent its own NOTIFY.
ANNOUNCED = "lexigram_tasks.announced"


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


#: Every condition a row's ``state`` can meet: the values jobs_row_check
#: allows (migration 0011), and NULL. Finished rows are indexed by status,
#: then state (jobs_finished_idx, migration 0012), so a query over all the
#: finished rows of a status reads one range per condition.
STATE_CONDITIONS = (
    *(f"state = {_literal(s)}" for s in ("succeeded", "cancelled", "failed", "dead", "retrying")),
    "state IS NULL",
)


def by_state(select: str) -> str:
    """``select`` once per :data:`STATE_CONDITIONS`, its ``{state}`` replaced, as UNION ALL."""
    return " UNION ALL ".join(f"({select.replace('{state}', c)})" for c in STATE_CONDITIONS)


@dataclass(frozen=True, slots=True)
class Statements:
    channel: str
    insert_one: str
    insert_one_plain: str
    insert_announced: str
    insert_announced_now: str
    insert_many: str
    insert_many_plain: str
    dedup_holders: str
    claim: str
    ack_delete: str
    ack_keep: str
    ack_keep_attempts: str
    requeue: str
    dead_letter: str
    extend: str
    counts: str
    dead_letters: str
    purge_done: str
    purge_failed: str

    @classmethod
    def for_schema(cls, schema: str) -> Statements:
        t = f"{quote_ident(schema)}.jobs"
        append = f"{quote_ident(schema)}.append_attempt"
        pairs = "unnest($1::bigint[], $2::bigint[]) AS s(id, token)"
        owned = f"{t}.id = s.id AND {t}.lease_token = s.token AND {t}.status = 'running'"
        released = "lease_token = NULL, lease_expires_at = NULL"
        # Seconds until a delayed job is due or a lease lapses (NULL: never):
        # one index probe per priority, however many jobs wait.
        next_due = (
            "extract(epoch FROM least("
            " (SELECT min(r.run_at) FROM generate_series(0, 9) AS p(priority),"
            f" LATERAL (SELECT run_at FROM {t} WHERE queue_name = $1 AND status = 'ready'"
            " AND priority = p.priority ORDER BY run_at LIMIT 1) AS r),"
            f" (SELECT min(lease_expires_at) FROM {t}"
            " WHERE queue_name = $1 AND status = 'running')) - now())::float8"
        )
        announce = (
            f"set_config('{ANNOUNCED}', 'on', true) IS NOT NULL"
            f" AND pg_notify({_literal(f'{schema}.jobs')}, $1) IS NOT NULL"
        )
        insert_many = (
            f"INSERT INTO {t} (queue_name, job_id, priority, run_at, attempt, dedup_key, payload,"
            " task)"
            " SELECT $1, j.job_id, j.priority, coalesce(to_timestamp(j.run_at), now()),"
            " j.attempt, j.dedup_key, j.payload, j.task"
            " FROM unnest($2::text[], $3::int2[], $4::float8[], $5::int4[], $6::text[],"
            " $7::bytea[], $8::text[]) WITH ORDINALITY AS j(job_id, priority, run_at, attempt,"
            " dedup_key, payload, task, n)"
            " ORDER BY j.n"
        )
        return cls(
            channel=f"{schema}.jobs",
            insert_one=(
                f"INSERT INTO {t} (queue_name, job_id, priority, run_at, attempt, dedup_key,"
                " payload, task)"
                " VALUES ($1, $2, $3, coalesce(to_timestamp($4), now()), $5, $6, $7, $8)"
                f" {_DEDUP_CONFLICT} RETURNING job_id"
            ),
            # One job without a dedup key: it cannot conflict (the unique index
            # holds only rows with a key), so no speculative insertion, no reply rows.
            insert_one_plain=(
                f"INSERT INTO {t} (queue_name, job_id, priority, run_at, attempt, payload, task)"
                " VALUES ($1, $2, $3, coalesce(to_timestamp($4), now()), $5, $6, $7)"
            ),
            # insert_one_plain for a connection outside any transaction (the
            # producer's): the statement sends its own NOTIFY (delivered only if it
            # commits) and marks its transaction, so the trigger's function returns
            # at once (migration 0010). The mark lasts until the transaction ends:
            # inside a caller's transaction, its later plain INSERTs would go
            # unannounced. Both calls are in the WHERE clause of the row's SELECT
            # (always true), so the mark is set before the statement-level trigger
            # reads it; a FROM item holding them cost a subquery scan more.
            insert_announced=(
                f"INSERT INTO {t} (queue_name, job_id, priority, run_at, attempt, payload, task)"
                " SELECT $1, $2, $3, coalesce(to_timestamp($4), now()), $5, $6, $7"
                f" WHERE {announce}"
            ),
            # insert_announced for the common job: due now, priority 0, first attempt
            # (the columns' defaults), so three parameters fewer to send and bind.
            insert_announced_now=(
                f"INSERT INTO {t} (queue_name, job_id, payload, task)"
                f" SELECT $1, $2, $3, $4 WHERE {announce}"
            ),
            insert_many=insert_many + f" {_DEDUP_CONFLICT} RETURNING job_id",
            # No dedup key in the batch: no conflict to resolve, no ids to send back.
            insert_many_plain=insert_many,
            dedup_holders=(
                f"SELECT dedup_key, job_id FROM {t} WHERE queue_name = $1"
                " AND dedup_key = ANY($2::text[]) AND status IN ('ready', 'running')"
            ),
            # Ready jobs, plus running ones whose lease lapsed (their worker
            # died); both locked with SKIP LOCKED so concurrent workers never
            # wait on or share a row. MATERIALIZED keeps each locking scan a
            # single execution. When nothing was leased, the one row returned
            # instead says in how many seconds something will be (`due`), so
            # an idle worker knows how long it may sleep without a second
            # round trip. (UNION ALL keeps the sorted branch's order.)
            claim=(
                "WITH ready AS MATERIALIZED ("
                f" SELECT id FROM {t}"
                " WHERE queue_name = $1 AND status = 'ready' AND run_at <= now()"
                " ORDER BY priority DESC, run_at, id LIMIT $2 FOR UPDATE SKIP LOCKED),"
                " lapsed AS MATERIALIZED ("
                f" SELECT id, cancel_requested FROM {t}"
                " WHERE queue_name = $1 AND status = 'running' AND lease_expires_at <= now()"
                " ORDER BY lease_expires_at LIMIT $2 FOR UPDATE SKIP LOCKED),"
                " picked AS (SELECT id FROM lapsed WHERE NOT cancel_requested"
                " UNION ALL SELECT id FROM ready LIMIT $2),"
                f" dropped AS (UPDATE {t} AS j SET {_CANCELLED}, {released}"
                " FROM lapsed WHERE j.id = lapsed.id AND lapsed.cancel_requested),"
                f" leased AS (UPDATE {t} AS j SET status = 'running', attempt = j.attempt + 1,"
                " started_at = now(),"
                " lease_token = $3, lease_expires_at = now() + make_interval(secs => $4)"
                " FROM picked WHERE j.id = picked.id"
                " RETURNING j.id, j.attempt, j.payload, j.priority, j.run_at)"
                " (SELECT id, attempt, payload, NULL::float8 AS due FROM leased"
                " ORDER BY priority DESC, run_at, id)"
                f" UNION ALL SELECT NULL, NULL, NULL, {next_due}"
                " WHERE NOT EXISTS (SELECT FROM leased)"
            ),
            ack_delete=f"DELETE FROM {t} USING {pairs} WHERE {owned}",
            ack_keep=(
                f"UPDATE {t} SET status = 'done', finished_at = now(), {released},"
                " state = coalesce(s.state, 'succeeded'),"
                f" error_type = coalesce(s.error_type, {t}.error_type),"
                f" error_message = coalesce(s.error_message, {t}.error_message),"
                " worker_id = $6"
                " FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::text[], $5::text[])"
                f" AS s(id, token, state, error_type, error_message) WHERE {owned}"
            ),
            # The same, for a batch holding attempt records ($7, JSON; $8: how many kept).
            ack_keep_attempts=(
                f"UPDATE {t} SET status = 'done', finished_at = now(), {released},"
                " state = coalesce(s.state, 'succeeded'),"
                f" error_type = coalesce(s.error_type, {t}.error_type),"
                f" error_message = coalesce(s.error_message, {t}.error_message),"
                f" worker_id = $6, attempts = {append}({t}.attempts, s.record::jsonb, $8)"
                " FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::text[], $5::text[],"
                f" $7::text[]) AS s(id, token, state, error_type, error_message, record)"
                f" WHERE {owned}"
            ),
            # A job whose cancellation was asked for is not run again: it ends cancelled.
            requeue=(
                f"WITH requeued AS (UPDATE {t} SET"
                " status = CASE WHEN cancel_requested THEN 'done' ELSE 'ready' END,"
                " state = CASE WHEN cancel_requested THEN 'cancelled' ELSE $9 END,"
                " finished_at = CASE WHEN cancel_requested THEN now() END,"
                " payload = $3, attempt = $4, priority = $5,"
                " run_at = now() + make_interval(secs => $6), failure_reason = $7,"
                " error_type = coalesce($10, error_type),"
                f" error_message = coalesce($11, error_message), {released},"
                f" worker_id = coalesce($12, worker_id),"
                f" attempts = {append}(attempts, $13::jsonb, $14)"
                " WHERE id = $1 AND lease_token = $2 AND status = 'running'"
                " RETURNING queue_name, status)"
                " SELECT pg_notify($8, queue_name) FROM requeued WHERE status = 'ready'"
            ),
            dead_letter=(
                f"UPDATE {t} SET status = 'failed', finished_at = now(), failure_reason = $3,"
                " job_id = coalesce($4, job_id), state = coalesce($5, 'failed'),"
                " error_type = coalesce($6, error_type),"
                f" error_message = coalesce($7, error_message), {released},"
                f" worker_id = coalesce($8, worker_id),"
                f" attempts = {append}(attempts, $9::jsonb, $10)"
                " WHERE id = $1 AND lease_token = $2 AND status = 'running'"
            ),
            extend=(
                f"UPDATE {t} SET lease_expires_at = now() + make_interval(secs => $3)"
                f" FROM {pairs} WHERE {owned}"
            ),
            # Each count reads one partial index; a lapsed lease counts as ready.
            counts=(
                "SELECT"
                f" (SELECT count(*) FROM {t} WHERE queue_name = $1 AND status = 'ready'"
                " AND run_at <= now())"
                f" + (SELECT count(*) FROM {t} WHERE queue_name = $1 AND status = 'running'"
                " AND lease_expires_at <= now()) AS ready,"
                f" (SELECT count(*) FROM {t} WHERE queue_name = $1 AND status = 'ready'"
                " AND run_at > now()) AS delayed,"
                f" (SELECT count(*) FROM {t} WHERE queue_name = $1 AND status = 'running'"
                " AND lease_expires_at > now()) AS running,"
                f" (SELECT count(*) FROM {t} WHERE queue_name = $1 AND status = 'failed')"
                " AS failed"
            ),
            # Oldest first: the status's range of jobs_finished_idx under each
            # state, each cut to the page, then merged.
            dead_letters=(
                "SELECT payload, failure_reason, job_id, extract(epoch FROM finished_at)::float8"
                " AS failed_at FROM ("
                + by_state(
                    f"SELECT payload, failure_reason, job_id, finished_at, id FROM {t}"
                    " WHERE queue_name = $1 AND status = 'failed' AND {state}"
                    " ORDER BY finished_at, id LIMIT $2"
                )
                + ") AS f ORDER BY f.finished_at, f.id LIMIT $2"
            ),
            # Small batches, skipping rows someone else holds: cleanup never
            # blocks the hot path and never holds many locks at once.
            purge_done=_purge(t, "done"),
            purge_failed=_purge(t, "failed"),
        )


def _purge(table: str, status: str) -> str:
    """Delete up to ``$3`` rows of queue ``$1`` in ``status`` finished over ``$2`` seconds ago.

    The rows are read from jobs_finished_idx, one range per state, until the
    batch is full, each range locking its rows and skipping those someone
    else holds (inside a subquery of its own: a locking clause cannot stand in
    a UNION); the batch's ids then go to the primary key as one array, so the
    plan does not hang on row estimates.
    """
    locked = by_state(
        f"SELECT id FROM (SELECT id FROM {table} WHERE queue_name = $1"
        f" AND status = {_literal(status)} AND {{state}}"
        " AND finished_at < now() - make_interval(secs => $2)"
        " ORDER BY finished_at LIMIT $3 FOR UPDATE SKIP LOCKED) AS expired"
    )
    return f"DELETE FROM {table} WHERE id = ANY(ARRAY(SELECT id FROM ({locked}) AS batch LIMIT $3))"
