-- Delivery of finished pictures, apart from the job's status, and retention of files.
--
-- A job is 'done' as soon as its picture is saved (so the Re-roll and Variation buttons work
-- the moment it appears); whether the picture reached Discord is tracked here:
--   pending      the final edit is being sent (a crash now: it is sent again at start-up);
--   delivered    it landed;
--   undelivered  Discord kept failing; it is retried in the background and at start-up.
-- NULL: no picture to deliver (failed, cancelled) or a row from before this migration.
ALTER TABLE jobs ADD COLUMN delivery TEXT
    CHECK (delivery IN ('pending', 'delivered', 'undelivered'));
ALTER TABLE jobs ADD COLUMN delivery_attempts INTEGER NOT NULL DEFAULT 0;
-- What the image check decided ('show', 'spoiler', 'withhold', 'unchecked'): a redelivery
-- shows the picture exactly as the first attempt would have.
ALTER TABLE jobs ADD COLUMN image_verdict TEXT;
-- When the retention sweep deleted the job's output file (its buttons then say it expired).
ALTER TABLE jobs ADD COLUMN expired_at REAL;

CREATE INDEX jobs_undelivered ON jobs (delivery) WHERE delivery IN ('pending', 'undelivered');
