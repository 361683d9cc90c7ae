-- lexigram-tasks-postgres migration 0005: concurrency limits (PostgresConcurrencyLimiter).
--
-- One row per slot held: the semaphore's name, its holder (worker and job)
-- and when its lease lapses. acquire_slots takes a slot of every name for a
-- holder, or none: it locks the names (advisory transaction locks, in sorted
-- order so two acquires never deadlock), drops lapsed slots, counts the rest
-- against each limit and inserts. Being plpgsql, each of its statements sees
-- the rows committed while it waited for the locks.

CREATE TABLE concurrency_slots (
    name       text        NOT NULL,
    holder     text        NOT NULL,
    expires_at timestamptz NOT NULL,
    PRIMARY KEY (name, holder)
);

COMMENT ON TABLE concurrency_slots IS 'lexigram-tasks concurrency limits: one row per slot held until expires_at';

CREATE FUNCTION acquire_slots(names text[], limits int[], holder_id text, lease float8)
RETURNS boolean
LANGUAGE plpgsql
SET search_path FROM CURRENT
AS $$
DECLARE
    i int;
    held int;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtextextended('lexigram.slots:' || n, 0))
    FROM unnest(names) AS n ORDER BY n;
    DELETE FROM concurrency_slots WHERE name = ANY(names) AND expires_at <= now();
    FOR i IN 1 .. coalesce(array_length(names, 1), 0) LOOP
        SELECT count(*) INTO held FROM concurrency_slots
        WHERE name = names[i] AND holder <> holder_id;
        IF held >= limits[i] THEN
            RETURN false;
        END IF;
    END LOOP;
    INSERT INTO concurrency_slots (name, holder, expires_at)
    SELECT n, holder_id, now() + make_interval(secs => lease) FROM unnest(names) AS n
    ON CONFLICT (name, holder) DO UPDATE SET expires_at = EXCLUDED.expires_at;
    RETURN true;
END
$$;
