-- lexigram-tasks-postgres migration 0010: inserts that announce themselves skip the wake-up trigger's work.
--
-- The queue's single enqueue sends its own NOTIFY (channel '<schema>.jobs',
-- the queue name as payload) from its INSERT statement, and marks its
-- transaction with the setting lexigram_tasks.announced = 'on'
-- (set_config(..., true): it ends with the transaction). The trigger's
-- function then returns at once instead of reading the inserted rows and
-- notifying again. Every other INSERT (bulk enqueues, enqueues inside the
-- caller's transaction, rows written with plain SQL by foreign producers)
-- still wakes the workers through the trigger, as before.
--
-- The test is in the function rather than in a WHEN clause on the trigger:
-- PostgreSQL reads a trigger's WHEN expression back from its stored form on
-- every statement, which cost more server time than the call it saved.

CREATE OR REPLACE FUNCTION notify_jobs_inserted() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    queue text;
BEGIN
    IF current_setting('lexigram_tasks.announced', true) = 'on' THEN
        RETURN NULL;
    END IF;
    FOR queue IN SELECT DISTINCT queue_name FROM inserted LOOP
        PERFORM pg_notify(TG_TABLE_SCHEMA || '.jobs', queue);
    END LOOP;
    RETURN NULL;
END
$$;
