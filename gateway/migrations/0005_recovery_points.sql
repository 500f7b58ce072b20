-- Recovery points for money routes that call out (gateway/idempotency.py, DESIGN.md section 7):
-- an Idempotency-Key remembers the last phase its request committed and the small JSON value
-- each phase saved, so that a retry after a crash resumes there instead of starting afresh.

-- NULL for one-transaction routes; 'started' until a recovery-point route's first phase
-- commits, then the name of the last phase committed.
ALTER TABLE idempotency_keys
    ADD COLUMN recovery_point text,
    -- {"<phase>": <the JSON value the phase saved>, ...}; '{}' when none has committed.
    ADD COLUMN recovery_data  jsonb NOT NULL DEFAULT '{}'
        CONSTRAINT idempotency_keys_recovery_data_object CHECK (jsonb_typeof(recovery_data) = 'object');
