-- Moderation and limits: guild settings, bans, blocked terms and concepts, the modlog.

-- One row per guild that changed something; a NULL column means "the default".
CREATE TABLE guild_settings (
    guild_id INTEGER PRIMARY KEY,
    moderator_role_id INTEGER,
    concept_threshold REAL CHECK (concept_threshold BETWEEN -1.0 AND 1.0),
    image_check_mode TEXT CHECK (image_check_mode IN ('off', 'spoiler', 'withhold')),
    jobs_per_hour INTEGER CHECK (jobs_per_hour >= 0),
    waiting_per_user INTEGER CHECK (waiting_per_user >= 0),
    waiting_per_guild INTEGER CHECK (waiting_per_guild >= 0),
    updated_by INTEGER,
    updated_at REAL
);

-- A banned user may never have used the bot, so no foreign key to users.
CREATE TABLE bans (
    guild_id INTEGER NOT NULL,
    user_id INTEGER NOT NULL,
    banned_by INTEGER,
    reason TEXT,
    banned_at REAL NOT NULL,
    PRIMARY KEY (guild_id, user_id)
);

CREATE TABLE blocked_terms (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    guild_id INTEGER NOT NULL,
    term TEXT NOT NULL,         -- as the moderator typed it
    normalized TEXT NOT NULL,   -- the moderation normalizer's form; what prompts are matched on
    match_mode TEXT NOT NULL DEFAULT 'word' CHECK (match_mode IN ('word', 'substring')),
    created_by INTEGER,
    created_at REAL NOT NULL,
    UNIQUE (guild_id, normalized)
);

CREATE TABLE blocked_concepts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    guild_id INTEGER NOT NULL,
    text TEXT NOT NULL COLLATE NOCASE,
    embedding BLOB NOT NULL,    -- float32 little-endian
    dim INTEGER NOT NULL CHECK (dim > 0 AND length(embedding) = 4 * dim),
    model TEXT NOT NULL,        -- the model that made the embedding
    created_by INTEGER,
    created_at REAL NOT NULL,
    UNIQUE (guild_id, text)
);

-- Moderator actions and refused prompts. Private to moderators: nothing here is posted.
CREATE TABLE modlog (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    guild_id INTEGER,
    actor_id INTEGER,
    action TEXT NOT NULL,
    target TEXT,
    detail TEXT,
    at REAL NOT NULL
);
CREATE INDEX modlog_by_guild_time ON modlog (guild_id, at);
