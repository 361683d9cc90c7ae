-- lexigram-tasks-postgres migration 0012: one index for finished rows instead of three.
--
-- Every index of jobs costs every statement that writes a row, even an index
-- whose predicate leaves the row out: PostgreSQL opens and locks it, and
-- plans and compiles its predicate, once per statement (callgrind, one
-- single enqueue: about 6k instructions per partial index it skips, 13k for
-- jobs_done_idx and jobs_failed_idx together, 11k for jobs_finished_idx).
-- Three indexes held the same rows, the finished ones:
--   jobs_done_idx     (queue_name, finished_at)            WHERE status = 'done'
--   jobs_failed_idx   (queue_name, finished_at, id)        WHERE status = 'failed'
--   jobs_finished_idx (queue_name, state, finished_at, id) WHERE status IN ('done', 'failed')
-- One index keyed (queue_name, status, state, finished_at, id) does the work
-- of the three (a single enqueue: about 15k fewer of its 250k instructions),
-- each query reading ranges of it in (finished_at, id) order:
--   - list_jobs of a finished state: that state's range under 'done' and
--     under 'failed', merged;
--   - dead letters, oldest first: one range per value `state` may hold
--     (jobs_row_check, and NULL) under 'failed', merged;
--   - retention cleanup: the same ranges of 'done' or 'failed', up to the
--     cutoff, until a batch is full;
--   - counts().failed: the ('failed') range.
-- Each of these plans uses this index, on a table of 200,000 finished rows
-- (EXPLAIN, tests-integration/postgres/test_index_plans.py).
--
-- A new name is built first, then the three are dropped, then it takes the
-- old name (the queries name no index). Building it reads the finished rows
-- once, holding off writes to the table meanwhile, as every CREATE INDEX of
-- these migrations does.

CREATE INDEX jobs_ended_idx ON jobs (queue_name, status, state, finished_at, id)
    WHERE status IN ('done', 'failed');

DROP INDEX jobs_done_idx;
DROP INDEX jobs_failed_idx;
DROP INDEX jobs_finished_idx;

ALTER INDEX jobs_ended_idx RENAME TO jobs_finished_idx;
