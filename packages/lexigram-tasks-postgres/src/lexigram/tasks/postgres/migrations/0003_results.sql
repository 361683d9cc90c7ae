-- lexigram-tasks-postgres migration 0003: durable job results (PostgresResultStore).
--
-- One row per finished job whose result is kept: the JobResult as JSON text
-- (type json, not jsonb: the text is kept as written, and jsonb would refuse
-- a string holding "\u0000"), its status copied out for SQL inspection, and
-- when it expires. Readers ignore expired rows; the store's cleanup task
-- deletes them in batches. Storing a result NOTIFYs '<schema>.results' with
-- the job id, in the same statement, so waiters wake when it commits.

CREATE TABLE results (
    job_id     text        PRIMARY KEY,
    status     text        NOT NULL,
    result     json        NOT NULL,
    stored_at  timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL
);

COMMENT ON TABLE results IS 'lexigram-tasks job results (JobResult as JSON); rows past expires_at are ignored and cleaned up';

-- Retention cleanup finds expired rows here.
CREATE INDEX results_expires_idx ON results (expires_at);
