-- lexigram-tasks-postgres migration 0004: job states for a paired backend (PostgresJobStateStore).
--
-- A backend that cannot look inside its queue (RabbitMQ) records each job's life
-- here: one row per job id, numbered in enqueue order (seq) for keyset listing per
-- queue, by state or by task. Finished rows are deleted after the store's TTL, in
-- batches. state_workers is the live-worker registry of such backends.

CREATE SEQUENCE job_states_seq;

CREATE TABLE job_states (
    id               text             PRIMARY KEY,
    seq              bigint           NOT NULL DEFAULT nextval('job_states_seq'),
    queue            text             NOT NULL,
    task             text             NOT NULL,
    state            text             NOT NULL,
    args             json             NOT NULL,
    kwargs           json             NOT NULL,
    attempt          integer          NOT NULL DEFAULT 0,
    max_attempts     integer          NOT NULL DEFAULT 1,
    priority         integer          NOT NULL DEFAULT 0,
    enqueued_at      double precision,
    run_at           double precision,
    started_at       double precision,
    finished_at      double precision,
    lease_until      double precision,
    error_type       text,
    error_message    text,
    progress         double precision,
    progress_message text,
    meta             jsonb            NOT NULL DEFAULT '{}',
    cancel_requested boolean          NOT NULL DEFAULT false,
    trace_id         text
);

COMMENT ON TABLE job_states IS 'lexigram-tasks job states recorded by a paired backend (RabbitMQ); finished rows are purged after a TTL';

CREATE INDEX job_states_queue_seq_idx ON job_states (queue, seq);
CREATE INDEX job_states_queue_state_seq_idx ON job_states (queue, state, seq);
CREATE INDEX job_states_queue_task_seq_idx ON job_states (queue, task, seq);
CREATE INDEX job_states_finished_idx ON job_states (finished_at) WHERE finished_at IS NOT NULL;

CREATE TABLE state_workers (
    queue      text             NOT NULL,
    id         text             NOT NULL,
    info       json             NOT NULL,
    expires_at double precision NOT NULL,
    PRIMARY KEY (queue, id)
);
