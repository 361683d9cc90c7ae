-- lexigram-tasks-postgres migration 0011: the jobs table's three CHECK constraints become one, in a function.
--
-- PostgreSQL reads every CHECK expression of a table back from its stored
-- form, and plans it, once per statement that writes rows (each enqueue,
-- lease, ack and retry). For jobs_status_check, jobs_priority_check and
-- jobs_state_check that was about a third of a single enqueue's server
-- instructions (callgrind: 121k of 364k). One constraint calling a PL/pgSQL
-- function is read back as a bare call, and the function's body is compiled
-- once per session; each row then costs one call (about 2.5k instructions
-- more per row of a 1,000-row INSERT, against 89k less per statement).
--
-- The rows allowed are exactly those the three constraints allowed (status
-- and priority are NOT NULL columns; state may be NULL).

CREATE FUNCTION job_row_valid(status text, priority smallint, state text) RETURNS boolean
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
BEGIN
    RETURN status IN ('ready', 'running', 'done', 'failed')
        AND priority BETWEEN 0 AND 9
        AND (state IS NULL OR state IN ('retrying', 'succeeded', 'cancelled', 'failed', 'dead'));
END
$$;

ALTER TABLE jobs
    DROP CONSTRAINT jobs_status_check,
    DROP CONSTRAINT jobs_priority_check,
    DROP CONSTRAINT jobs_state_check,
    ADD CONSTRAINT jobs_row_check CHECK (job_row_valid(status, priority, state));
