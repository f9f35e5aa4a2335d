-- Delivery gives up after a bound, and finished rows can be pruned by age.
--
-- When the final edit of a picture failed delivery_attempts times in a row (Discord refusing
-- it for hours: the message or channel deleted, no permission to attach files), the bot stops
-- trying and records when: the row keeps delivery 'undelivered' (its file is kept, as for every
-- picture not yet delivered) and the user can fetch it with /repost.
ALTER TABLE jobs ADD COLUMN delivery_gave_up_at REAL;

-- Retention of rows: finished jobs by the time they finished (their interaction tokens are
-- cleared, old rows deleted), and the moderation log by time alone.
CREATE INDEX jobs_finished_at ON jobs (finished_at) WHERE finished_at IS NOT NULL;
CREATE INDEX modlog_by_time ON modlog (at);
