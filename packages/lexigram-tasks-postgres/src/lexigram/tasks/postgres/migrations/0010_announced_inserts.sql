-- lexigram-tasks-postgres migration 0010: inserts that announce themselves skip the wake-up trigger.
--
-- The queue's single enqueue sends its own NOTIFY (channel '<schema>.jobs',
-- the queue name as payload) from its INSERT statement, and marks its
-- transaction with the setting lexigram_tasks.announced = 'on'
-- (set_config(..., true): it ends with the transaction). The trigger then
-- does not run its function for that statement, which saved about a quarter
-- of an enqueue's server time. Every other INSERT (bulk enqueues, enqueues
-- inside the caller's transaction, rows written with plain SQL by foreign
-- producers) still wakes the workers through the trigger, as before.
--
-- A statement-level WHEN cannot see the rows, so the transition table is
-- still filled for an announced statement; filling it costs far less than
-- the function's query and NOTIFY.

DROP TRIGGER jobs_inserted_notify ON jobs;

CREATE TRIGGER jobs_inserted_notify
    AFTER INSERT ON jobs
    REFERENCING NEW TABLE AS inserted
    FOR EACH STATEMENT
    WHEN (current_setting('lexigram_tasks.announced', true) IS DISTINCT FROM 'on')
    EXECUTE FUNCTION notify_jobs_inserted();
