-- The queue: users and their jobs.

-- Discord users who ever asked for a job. Ids are Discord snowflakes (fit in 64 bits).
CREATE TABLE users (
    id INTEGER PRIMARY KEY,
    first_seen REAL NOT NULL,
    last_seen REAL NOT NULL,
    jobs_submitted INTEGER NOT NULL DEFAULT 0,
    -- Fairness: the serve counter's value when a job of this user was last taken by a worker;
    -- NULL = never served. The user with the lowest value goes next (round-robin).
    last_served_seq INTEGER
);

CREATE TABLE jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL DEFAULT 'imagine' CHECK (kind IN ('imagine', 'reroll', 'variation')),
    parent_job_id INTEGER REFERENCES jobs (id) ON DELETE SET NULL,
    user_id INTEGER NOT NULL REFERENCES users (id),
    guild_id INTEGER,  -- NULL: asked in a direct message
    channel_id INTEGER,
    status TEXT NOT NULL DEFAULT 'queued'
        CHECK (status IN ('queued', 'running', 'done', 'failed', 'cancelled')),

    -- Every parameter that decides the picture (mirrors generation.GenerationRequest).
    prompt TEXT NOT NULL,
    seed INTEGER NOT NULL,
    steps INTEGER NOT NULL CHECK (steps > 0),
    width INTEGER NOT NULL CHECK (width > 0),
    height INTEGER NOT NULL CHECK (height > 0),
    generator TEXT NOT NULL,
    cutn INTEGER NOT NULL CHECK (cutn > 0),
    cut_pow REAL NOT NULL,
    learning_rate REAL,
    optimizer TEXT NOT NULL,
    init_image TEXT,
    init_weight REAL NOT NULL DEFAULT 0,
    image_prompts TEXT NOT NULL DEFAULT '[]',  -- JSON list of "path[:weight[:stop]]"
    noise_prompts TEXT NOT NULL DEFAULT '[]',  -- JSON list of [seed, weight]
    guidance_scale REAL,
    skip_steps INTEGER NOT NULL DEFAULT 0,
    extra TEXT NOT NULL DEFAULT '{}',  -- JSON object: parameters without a column yet

    -- Lifecycle.
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    attempts INTEGER NOT NULL DEFAULT 0,  -- times a worker took it; > 0 while queued = interrupted
    error TEXT,
    output_path TEXT,
    clip_score REAL,
    cancelled_by INTEGER,

    -- Progress, for replies rebuilt after a restart.
    last_step INTEGER NOT NULL DEFAULT 0,
    total_steps INTEGER,
    progress_at REAL,

    -- Discord message details. The interaction token edits the reply for 15 minutes; after
    -- that the bot continues in its own channel message.
    interaction_id INTEGER,
    interaction_token TEXT,
    token_expires_at REAL,
    application_id INTEGER,
    reply_message_id INTEGER,
    channel_message_id INTEGER
);

-- The fair-order query and the waiting counts look at queued/running jobs by user.
CREATE INDEX jobs_by_status_user ON jobs (status, user_id, id);
-- Jobs per hour: one user's recent jobs in one guild.
CREATE INDEX jobs_by_user_guild_time ON jobs (user_id, guild_id, created_at);
CREATE INDEX jobs_by_guild_status ON jobs (guild_id, status);
CREATE INDEX jobs_done_by_generator ON jobs (generator, finished_at) WHERE status = 'done';

-- /history: finished pictures with what is needed to run them again.
CREATE VIEW history AS
SELECT
    id AS job_id, kind, user_id, guild_id, prompt, seed, steps, width, height, generator,
    clip_score, created_at, finished_at, output_path
FROM jobs
WHERE status = 'done';
