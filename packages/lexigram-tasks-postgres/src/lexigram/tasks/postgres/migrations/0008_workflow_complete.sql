-- lexigram-tasks-postgres migration 0008: recording finished workflow steps in one call.
--
-- workflow_complete does what PostgresWorkflowStore.complete did in five
-- statements of one transaction, in one: it locks the workflows of the batch
-- (in id order, so two batches never deadlock), records each step's result
-- once, lowers the pending counts of the steps waiting for it, and returns
-- the steps left with nothing pending and not enqueued (claim_fresh: this
-- call took the count to zero). The row locks are held for one round trip
-- instead of five, which is what a wide fan-in waits on.
--
-- Arguments, one entry per finished step: workflow id, step, result, span,
-- how many dependents it has; deps holds all the dependents, in that order.

CREATE FUNCTION workflow_complete(
    wfs text[], steps_done int[], results text[], spans text[], dep_counts int[], deps int[]
)
RETURNS TABLE (claim_workflow text, claim_step int, claim_fresh boolean)
LANGUAGE plpgsql
SET search_path FROM CURRENT
AS $$
DECLARE
    i int;
    j int;
    offs int := 0;
    v_wf text;
    v_step int;
    v_dep int;
    v_fresh boolean;
    v_status text;
    v_counted int;
    v_pending int;
BEGIN
    PERFORM 1 FROM workflows w WHERE w.id = ANY(wfs) ORDER BY w.id FOR UPDATE;
    FOR i IN 1 .. coalesce(array_length(wfs, 1), 0) LOOP
        v_wf := wfs[i];
        v_step := steps_done[i];
        SELECT w.status, w.steps INTO v_status, v_counted FROM workflows w WHERE w.id = v_wf;
        IF FOUND THEN
            UPDATE workflow_steps t SET result = results[i], span = spans[i], enqueued = true
            WHERE t.workflow_id = v_wf AND t.step = v_step AND t.result IS NULL;
            v_fresh := FOUND;
            IF v_fresh AND v_step < v_counted THEN
                UPDATE workflows w SET remaining = w.remaining - 1,
                    status = CASE WHEN w.status = 'running' AND w.remaining = 1
                                  THEN 'succeeded' ELSE w.status END
                WHERE w.id = v_wf
                RETURNING w.status INTO v_status;
            END IF;
            FOR j IN 1 .. dep_counts[i] LOOP
                v_dep := deps[offs + j];
                IF v_fresh THEN
                    UPDATE workflow_steps t SET pending = t.pending - 1
                    WHERE t.workflow_id = v_wf AND t.step = v_dep
                    RETURNING t.pending INTO v_pending;
                ELSE
                    SELECT t.pending INTO v_pending FROM workflow_steps t
                    WHERE t.workflow_id = v_wf AND t.step = v_dep;
                END IF;
                IF v_status = 'running' AND v_pending = 0 AND EXISTS (
                    SELECT 1 FROM workflow_steps t
                    WHERE t.workflow_id = v_wf AND t.step = v_dep
                      AND NOT t.enqueued AND t.result IS NULL
                ) THEN
                    claim_workflow := v_wf;
                    claim_step := v_dep;
                    claim_fresh := v_fresh;
                    RETURN NEXT;
                END IF;
            END LOOP;
        END IF;
        offs := offs + dep_counts[i];
    END LOOP;
END;
$$;
