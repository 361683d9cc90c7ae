-- lexigram-tasks-dlq migration 0001: the failure_records table.
--
-- Run by PostgresDeadLetterStorage at connect (or `await storage.migrate()`)
-- inside one transaction, under an advisory lock, with search_path set to
-- the storage's schema (default "lexigram_tasks", beside the queue's `jobs`
-- table), so the names below are unqualified. Applied versions are recorded
-- in <schema>.dlq_schema_migrations.
--
-- One row per dead-lettered job, keyed by the job id (a message that was not
-- a valid job gets a generated id and keeps its bytes in `payload`). `job`
-- is the job's JSON wire document (docs/job-format.md) as it last ran; `json`
-- rather than `jsonb` keeps it byte for byte, "\u0000" included. The columns
-- the filters use are copied out of it.

CREATE TABLE failure_records (
    id              text             PRIMARY KEY,
    -- Changes each time the same id is dead-lettered again: a replay deletes
    -- the row only if it still has the revision the replay read.
    revision        text             NOT NULL,
    task            text,            -- NULL for a message that was not a valid job
    queue_name      text             NOT NULL,
    error_type      text             NOT NULL,
    error_message   text             NOT NULL,
    reason          text             NOT NULL,
    traceback       text             NOT NULL,
    attempts        integer          NOT NULL,
    worker_id       text             NOT NULL,
    -- Epoch seconds exactly as the worker recorded them; failed_time is the
    -- same instant as a timestamp, for people writing SQL.
    failed_at       double precision NOT NULL,
    failed_time     timestamptz      GENERATED ALWAYS AS (to_timestamp(failed_at)) STORED,
    job             json,
    payload         bytea,
    trace_context   json             NOT NULL DEFAULT '{}',
    source          text             NOT NULL DEFAULT 'worker',
    details         json             NOT NULL DEFAULT '{}'
);

COMMENT ON TABLE failure_records IS
    'lexigram-tasks dead letter queue: jobs that failed for good (lexigram-tasks-dlq)';

-- Listing in failure-time order, whole or filtered by one field.
CREATE INDEX failure_records_time_idx  ON failure_records (failed_at, id);
CREATE INDEX failure_records_task_idx  ON failure_records (task, failed_at, id);
CREATE INDEX failure_records_queue_idx ON failure_records (queue_name, failed_at, id);
CREATE INDEX failure_records_error_idx ON failure_records (error_type, failed_at, id);
