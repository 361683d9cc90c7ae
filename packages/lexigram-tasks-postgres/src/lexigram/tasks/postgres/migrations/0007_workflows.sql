-- lexigram-tasks-postgres migration 0007: workflow state (chains, groups, chords).
--
-- One row per workflow (its status, plan and, once failed, the error) and
-- one per step: how many of its inputs are not done yet (pending), its
-- result once done, its span, and whether its job was enqueued. Recording a
-- step locks its workflow's row first, so the transaction that takes a
-- step's pending count to zero is the only one that sees it there (the claim).

CREATE TABLE workflows (
    id         text        PRIMARY KEY,
    status     text        NOT NULL DEFAULT 'running',
    plan       text        NOT NULL,
    error      text,
    steps      int         NOT NULL,
    remaining  int         NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL
);

CREATE INDEX workflows_expires_idx ON workflows (expires_at);

CREATE TABLE workflow_steps (
    workflow_id text    NOT NULL REFERENCES workflows (id) ON DELETE CASCADE,
    step        int     NOT NULL,
    pending     int     NOT NULL,
    enqueued    boolean NOT NULL DEFAULT false,
    result      text,
    span        text,
    PRIMARY KEY (workflow_id, step)
);

COMMENT ON TABLE workflows IS 'lexigram-tasks workflows: status and plan, until expires_at';
COMMENT ON TABLE workflow_steps IS 'lexigram-tasks workflow steps: fan-in counters and results';
