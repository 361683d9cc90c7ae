-- lexigram-tasks-postgres migration 0009: attempt histories (Capability.ATTEMPTS).
--
-- worker_id is the worker that settled the job's last attempt; attempts holds
-- the records of the attempts that did not succeed (failed, timed out, set
-- aside), a JSON array, oldest first, cut to its last MAX_ATTEMPTS_KEPT (25)
-- by append_attempt. A successful attempt writes no record: its row's state,
-- started_at, finished_at and worker_id say it (the provider completes the
-- history from them). Both columns are nullable, so adding them does not
-- rewrite the tables; job_states is the paired store's (RabbitMQ) table.

ALTER TABLE jobs
    ADD COLUMN worker_id text,
    ADD COLUMN attempts  jsonb;

ALTER TABLE job_states
    ADD COLUMN worker_id text,
    ADD COLUMN attempts  jsonb;

-- history with record appended, keeping the last `keep` elements; a NULL
-- record leaves history as it is.
CREATE FUNCTION append_attempt(history jsonb, record jsonb, keep integer)
RETURNS jsonb LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE
        WHEN record IS NULL THEN history
        WHEN history IS NULL THEN jsonb_build_array(record)
        WHEN jsonb_array_length(history) < keep THEN history || jsonb_build_array(record)
        ELSE (
            SELECT jsonb_agg(e ORDER BY n)
            FROM jsonb_array_elements(history || jsonb_build_array(record))
                WITH ORDINALITY AS a(e, n)
            WHERE n > jsonb_array_length(history) + 1 - keep
        )
    END
$$;
