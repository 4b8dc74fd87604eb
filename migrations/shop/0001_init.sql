-- The mall back office: members, products, operators, campaigns, per-recipient send
-- status, events (the board's source), chats per campaign, and the export audit log.

CREATE TABLE members (
    id              INTEGER PRIMARY KEY,
    email           TEXT NOT NULL UNIQUE COLLATE NOCASE,
    name            TEXT NOT NULL,
    login           TEXT,                       -- CH login, when the member has one
    consent         INTEGER NOT NULL DEFAULT 1, -- 0: never mail
    unsubscribed_at REAL,                       -- unix time; NULL: subscribed
    age_band        TEXT NOT NULL DEFAULT '',
    job             TEXT NOT NULL DEFAULT '',
    hobbies         TEXT NOT NULL DEFAULT '',   -- comma-separated, as imported
    lang            TEXT NOT NULL DEFAULT 'en',
    created_at      REAL NOT NULL,
    updated_at      REAL NOT NULL
);
CREATE INDEX members_login ON members(login);

CREATE TABLE member_interests (
    member_id  INTEGER NOT NULL REFERENCES members(id) ON DELETE CASCADE,
    interest   TEXT NOT NULL,
    source     TEXT NOT NULL DEFAULT 'import',  -- 'import' or 'chat'
    tagged_by  TEXT NOT NULL DEFAULT '',        -- operator login for 'chat'
    tagged_at  REAL NOT NULL,
    PRIMARY KEY (member_id, interest)
);
CREATE INDEX member_interests_interest ON member_interests(interest);

CREATE TABLE products (
    sku          TEXT PRIMARY KEY,
    title        TEXT NOT NULL,
    description  TEXT NOT NULL DEFAULT '',
    price        TEXT NOT NULL DEFAULT '',
    image_url    TEXT NOT NULL DEFAULT '',
    landing_url  TEXT NOT NULL DEFAULT '',
    created_at   REAL NOT NULL
);

CREATE TABLE operators (
    login       TEXT PRIMARY KEY,
    role        TEXT NOT NULL DEFAULT 'operator' CHECK (role IN ('operator', 'admin')),
    created_at  REAL NOT NULL
);

CREATE TABLE canned_replies (
    id     INTEGER PRIMARY KEY,
    key    TEXT NOT NULL UNIQUE,
    text   TEXT NOT NULL
);

CREATE TABLE campaigns (
    id            INTEGER PRIMARY KEY,
    name          TEXT NOT NULL,
    subject_tpl   TEXT NOT NULL,
    body_tpl      TEXT NOT NULL,
    sku           TEXT REFERENCES products(sku),
    lang          TEXT NOT NULL DEFAULT 'en',
    segment       TEXT NOT NULL DEFAULT '{}',   -- JSON segment filter
    from_addr     TEXT NOT NULL,
    status        TEXT NOT NULL DEFAULT 'draft'
                  CHECK (status IN ('draft', 'sending', 'paused', 'done')),
    pause_reason  TEXT NOT NULL DEFAULT '',
    secret        TEXT NOT NULL,                -- per-campaign key for Message-IDs
    created_at    REAL NOT NULL,
    started_at    REAL,
    finished_at   REAL
);

CREATE TABLE campaign_pool (
    campaign_id  INTEGER NOT NULL REFERENCES campaigns(id) ON DELETE CASCADE,
    login        TEXT NOT NULL REFERENCES operators(login),
    PRIMARY KEY (campaign_id, login)
);

-- One row per (campaign, member), written when the send starts (the snapshot of the
-- segment). status: pending -> sending (recorded before DATA) -> sent | failed;
-- 'skipped' when consent was withdrawn before the member's turn.
CREATE TABLE recipients (
    campaign_id   INTEGER NOT NULL REFERENCES campaigns(id) ON DELETE CASCADE,
    member_id     INTEGER NOT NULL REFERENCES members(id),
    email         TEXT NOT NULL,
    message_id    TEXT NOT NULL UNIQUE,
    status        TEXT NOT NULL DEFAULT 'pending'
                  CHECK (status IN ('pending', 'sending', 'sent', 'failed', 'skipped')),
    attempts      INTEGER NOT NULL DEFAULT 0,
    uncertain     INTEGER NOT NULL DEFAULT 0,   -- times found 'sending' after a crash
    next_at       REAL NOT NULL DEFAULT 0,      -- earliest next attempt (retry backoff)
    ch_headers    TEXT NOT NULL DEFAULT '',     -- X-CH header block leased for this mail
    last_error    TEXT NOT NULL DEFAULT '',
    updated_at    REAL NOT NULL DEFAULT 0,
    sent_at       REAL,
    PRIMARY KEY (campaign_id, member_id)
);
CREATE INDEX recipients_status ON recipients(campaign_id, status, next_at);
CREATE INDEX recipients_sent_at ON recipients(sent_at);

-- What happened, in order: the board reads these, never the whole recipients table.
CREATE TABLE events (
    id           INTEGER PRIMARY KEY,
    campaign_id  INTEGER NOT NULL,
    kind         TEXT NOT NULL,
    member_id    INTEGER,
    at           REAL NOT NULL,
    data         TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX events_campaign ON events(campaign_id, id);

CREATE TABLE chats (
    id           INTEGER PRIMARY KEY,
    campaign_id  INTEGER,
    member_id    INTEGER,
    member_login TEXT NOT NULL DEFAULT '',
    operator     TEXT NOT NULL DEFAULT '',
    asked_at     REAL NOT NULL,
    answered_at  REAL,
    ended_at     REAL,
    summary      TEXT NOT NULL DEFAULT ''
);
CREATE INDEX chats_member ON chats(member_id);

CREATE TABLE audit_log (
    id      INTEGER PRIMARY KEY,
    at      REAL NOT NULL,
    actor   TEXT NOT NULL,
    role    TEXT NOT NULL,
    action  TEXT NOT NULL,
    detail  TEXT NOT NULL DEFAULT ''
);

CREATE TABLE settings (
    key    TEXT PRIMARY KEY,
    value  TEXT NOT NULL
);
