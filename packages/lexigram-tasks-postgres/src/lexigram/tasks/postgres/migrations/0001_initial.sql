-- lexigram-tasks-postgres migration 0001: the jobs table.
--
-- Run by lexigram.tasks.postgres.migrate inside one transaction, under an
-- advisory lock, with search_path set to the lexigram schema (default
-- "lexigram_tasks"), so the names below are unqualified.
--
-- One row per job. `payload` holds the job's JSON wire document byte for
-- byte (bytea: a message that is not valid JSON or UTF-8 must still be
-- storable, so it can be dead-lettered rather than lost). The columns the
-- queue filters and sorts on are copied out of the document at enqueue time.
--
-- Life of a row: ready -> running (leased: lease_token, lease_expires_at)
-- -> deleted on ack, or 'done' when finished jobs are kept for a while;
-- 'failed' when dead-lettered (kept for inspection and replay). A running
-- row whose lease has lapsed is leased again by the next dequeue.

CREATE TABLE jobs (
    id               bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    queue_name       text        NOT NULL,
    job_id           text,
    status           text        NOT NULL DEFAULT 'ready'
                                 CHECK (status IN ('ready', 'running', 'done', 'failed')),
    priority         smallint    NOT NULL DEFAULT 0 CHECK (priority BETWEEN 0 AND 9),
    run_at           timestamptz NOT NULL DEFAULT now(),
    attempt          integer     NOT NULL DEFAULT 0,
    dedup_key        text,
    payload          bytea       NOT NULL,
    lease_token      bigint,
    lease_expires_at timestamptz,
    enqueued_at      timestamptz NOT NULL DEFAULT now(),
    finished_at      timestamptz,
    failure_reason   text
);

COMMENT ON TABLE jobs IS 'lexigram-tasks jobs; payload is the JSON wire document (docs/job-format.md)';

-- Dequeue: the next ready jobs of one queue, highest priority first, then
-- oldest run_at. Only ready rows are indexed, so finished and failed rows,
-- however many, never slow it down.
CREATE INDEX jobs_ready_idx ON jobs (queue_name, priority DESC, run_at, id)
    WHERE status = 'ready';

-- Leases that lapsed (their worker died) are found here; it holds only the
-- jobs running right now.
CREATE INDEX jobs_running_idx ON jobs (queue_name, lease_expires_at)
    WHERE status = 'running';

-- A dedup key is unique among the pending and running jobs of a queue; a
-- row leaves this index (releasing its key) when it is acked or dead-lettered.
CREATE UNIQUE INDEX jobs_dedup_idx ON jobs (queue_name, dedup_key)
    WHERE dedup_key IS NOT NULL AND status IN ('ready', 'running');

-- Dead letters, oldest first, per queue.
CREATE INDEX jobs_failed_idx ON jobs (queue_name, finished_at, id)
    WHERE status = 'failed';

-- Retention cleanup of finished jobs kept for a while.
CREATE INDEX jobs_done_idx ON jobs (queue_name, finished_at)
    WHERE status = 'done';

-- Wake idle workers: one notification per queue that received rows in a
-- statement, on channel '<schema>.jobs' with the queue name as payload.
-- A statement-level trigger costs one call per INSERT however many rows it
-- writes, covers producers that write rows with plain SQL, and - being
-- NOTIFY - is delivered only if the inserting transaction commits.
CREATE FUNCTION notify_jobs_inserted() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    queue text;
BEGIN
    FOR queue IN SELECT DISTINCT queue_name FROM inserted LOOP
        PERFORM pg_notify(TG_TABLE_SCHEMA || '.jobs', queue);
    END LOOP;
    RETURN NULL;
END
$$;

CREATE TRIGGER jobs_inserted_notify
    AFTER INSERT ON jobs
    REFERENCING NEW TABLE AS inserted
    FOR EACH STATEMENT EXECUTE FUNCTION notify_jobs_inserted();
