-- Optional DM delivery: /imagine dm:True (or a user's /dms default) sends the final picture to
-- the requester's DMs as well. The request itself travels in the job's extra parameters
-- ("dm": true); what happened to the DM is kept here, so a restart neither loses nor repeats
-- it: NULL not tried yet (or not asked), 'sent', 'closed' (the user's DMs refuse the bot,
-- Discord's 50007), 'failed' (any other error; the picture is in the channel anyway).
ALTER TABLE jobs ADD COLUMN dm_delivery TEXT
    CHECK (dm_delivery IS NULL OR dm_delivery IN ('sent', 'closed', 'failed'));

-- /dms: a user's default for the dm option (0 off, 1 on).
ALTER TABLE users ADD COLUMN dm_default INTEGER NOT NULL DEFAULT 0;
