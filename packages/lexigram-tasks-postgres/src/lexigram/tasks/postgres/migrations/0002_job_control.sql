-- lexigram-tasks-postgres migration 0002: job states, progress, cancellation, workers.
--
-- `status` stays what the lease statement filters on (ready, running, done,
-- failed); `state` refines it with what the worker reported when it settled
-- the job: 'retrying' on a ready row waiting for its next attempt, and how a
-- finished row ended ('succeeded', 'cancelled', 'failed', 'dead'). Whether a
-- ready row is queued or scheduled, and whether a running row's lease has
-- lapsed, is read from run_at and lease_expires_at when the job is looked at.
--
-- Every new column is nullable or has a constant default, so adding them
-- does not rewrite the table; only finished rows are updated below.

ALTER TABLE jobs
    ADD COLUMN state            text,
    ADD COLUMN task             text,
    ADD COLUMN started_at       timestamptz,
    ADD COLUMN error_type       text,
    ADD COLUMN error_message    text,
    ADD COLUMN progress         double precision,
    ADD COLUMN progress_message text,
    ADD COLUMN meta             jsonb,
    ADD COLUMN cancel_requested boolean NOT NULL DEFAULT false;

ALTER TABLE jobs ADD CONSTRAINT jobs_state_check CHECK (
    state IS NULL
    OR state IN ('retrying', 'succeeded', 'cancelled', 'failed', 'dead')
);

-- Rows finished before this migration: acked ones succeeded, dead-lettered
-- ones failed (0001 did not record which it was).
UPDATE jobs SET state = 'succeeded' WHERE status = 'done' AND state IS NULL;
UPDATE jobs SET state = 'failed' WHERE status = 'failed' AND state IS NULL;

-- get_job: a job by its id (the newest row when an enqueue retried after a
-- dropped connection stored it twice). A hash index: only equality is asked
-- of it, and its 4-byte entries are cheaper to add on the hot path (every
-- lease writes a new row version, which every index then records).
CREATE INDEX jobs_job_id_idx ON jobs USING hash (job_id);

-- list_jobs(state='retrying'): only the jobs waiting for their next attempt,
-- in the order they run (as jobs_ready_idx for the others).
CREATE INDEX jobs_retrying_idx ON jobs (queue_name, priority DESC, run_at, id)
    WHERE status = 'ready' AND state = 'retrying';

-- list_jobs of finished jobs by how they ended, oldest first. Holds only the
-- finished rows the backend keeps (keep_finished, dead letters).
CREATE INDEX jobs_finished_idx ON jobs (queue_name, state, finished_at, id)
    WHERE status IN ('done', 'failed');

-- Cancellations of running jobs: NOTIFY on '<schema>.cancel' with the
-- payload ["<queue>", "<job id>"] (sent by the queue's cancel statement).

-- Live worker processes: each refreshes its row; a row past expires_at is
-- a worker that stopped refreshing (killed), skipped and then deleted.
CREATE TABLE workers (
    id           text        PRIMARY KEY,
    info         jsonb       NOT NULL,
    heartbeat_at timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL
);
