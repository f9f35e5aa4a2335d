-- Job groups: /imagine count:N asks for N pictures of one prompt (consecutive seeds), painted
-- together and delivered as one reply. Each picture keeps its own row (history, re-roll,
-- variation, cancel, restart recovery and redelivery work per picture); the rows of one
-- request share group_id (the id of its first row) and are numbered by group_index 0..N-1.
ALTER TABLE jobs ADD COLUMN group_id INTEGER;
ALTER TABLE jobs ADD COLUMN group_index INTEGER;
ALTER TABLE jobs ADD COLUMN group_size INTEGER NOT NULL DEFAULT 1;
CREATE INDEX jobs_by_group ON jobs (group_id, group_index) WHERE group_id IS NOT NULL;

-- Fairness: a group taken at once counts as group_size turns of its user in the round-robin;
-- the turns beyond the first are spent (skipped) when the user's next job would be taken.
ALTER TABLE users ADD COLUMN skip_turns INTEGER NOT NULL DEFAULT 0;
