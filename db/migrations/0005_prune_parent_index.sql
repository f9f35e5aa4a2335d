-- Pruning old job rows (db/retention.py) deletes them in batches; each deleted row makes
-- SQLite look for jobs that name it as their parent (parent_job_id ... ON DELETE SET NULL).
-- Without an index that is a scan of the whole table per deleted row.
CREATE INDEX jobs_by_parent ON jobs (parent_job_id);
