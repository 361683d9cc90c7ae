-- lexigram-tasks-postgres migration 0006: the job-id index leaves running rows out.
--
-- Every lease writes a new row version with status 'running', and an index
-- over every row records each of those versions: on the no-op drain that
-- cost about 3% of the throughput. Running rows are few and are found
-- through jobs_running_idx, so get_job and cancel look them up there and
-- this index holds only the others.

DROP INDEX jobs_job_id_idx;
CREATE INDEX jobs_job_id_idx ON jobs USING hash (job_id) WHERE status <> 'running';
