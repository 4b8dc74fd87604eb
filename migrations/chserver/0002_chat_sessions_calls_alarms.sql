-- Chat sessions and their members, calls (rings) and alarms (issue 4).
-- Times are unix seconds (REAL). Written only through chmail/chserver/chatstore.py.

-- A relay session per port at a time (state 'open'; the listener makes it unique, and a
-- session opened on port 0 gets an ephemeral port); an ended session keeps its history.
CREATE TABLE chat_sessions (
    id          INTEGER PRIMARY KEY,
    port        INTEGER NOT NULL,
    lease       INTEGER NOT NULL,
    owner       TEXT NOT NULL,            -- the login that holds the port (the mail's sender)
    message_id  TEXT NOT NULL,            -- the mail the chat is about
    subject     TEXT NOT NULL DEFAULT '',
    mode        TEXT NOT NULL DEFAULT 'relay',   -- 'relay' (server-hosted) or 'direct'
    host        TEXT NOT NULL,            -- where the session listens
    state       TEXT NOT NULL DEFAULT 'open',    -- 'open' or 'ended'
    created_at  REAL NOT NULL,
    last_active REAL NOT NULL,
    ended_at    REAL,
    end_reason  TEXT NOT NULL DEFAULT ''
);
CREATE INDEX chat_sessions_open_port ON chat_sessions(port) WHERE state = 'open';

CREATE TABLE chat_members (
    session_id INTEGER NOT NULL REFERENCES chat_sessions(id) ON DELETE CASCADE,
    login      TEXT NOT NULL,
    joined_at  REAL NOT NULL,
    left_at    REAL,
    read_seq   INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (session_id, login)
);
CREATE INDEX chat_members_login ON chat_members(login);

-- The messages themselves live in their own database file (migrations/chat), written
-- synchronously by the server's event loop; see chmail/chserver/chatstore.py.

CREATE TABLE calls (
    id          INTEGER PRIMARY KEY,
    caller      TEXT NOT NULL,
    callee      TEXT NOT NULL,
    port        INTEGER NOT NULL,
    lease       INTEGER NOT NULL,
    message_id  TEXT NOT NULL,
    subject     TEXT NOT NULL DEFAULT '',
    session_id  INTEGER,
    state       TEXT NOT NULL,            -- ringing accepted declined missed cancelled ended alarmed
    reason      TEXT NOT NULL DEFAULT '',
    created_at  REAL NOT NULL,
    updated_at  REAL NOT NULL
);
CREATE INDEX calls_caller ON calls(caller, created_at);
CREATE INDEX calls_callee ON calls(callee, created_at);

-- S117: a call that found its callee offline (or that rang unanswered) leaves an alarm.
CREATE TABLE alarms (
    id           INTEGER PRIMARY KEY,
    login        TEXT NOT NULL,           -- who is alarmed (the callee)
    caller       TEXT NOT NULL,
    call_id      INTEGER,
    subject      TEXT NOT NULL DEFAULT '',
    message_id   TEXT NOT NULL DEFAULT '',
    port         INTEGER NOT NULL DEFAULT 0,
    created_at   REAL NOT NULL,
    delivered_at REAL,                    -- pushed to a live link
    seen_at      REAL,                    -- acknowledged by the user
    mailed_at    REAL,                    -- alarm mail accepted by the SMTP server
    mail_error   TEXT NOT NULL DEFAULT ''
);
CREATE INDEX alarms_login ON alarms(login, seen_at);
