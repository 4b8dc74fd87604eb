-- Chat messages of the CH server's sessions (issue 4), in a database file of their own
-- (<data>/chat.sqlite) so that the hot path never waits for another writer's lock.
-- seq is per session, ascending (with a gap after a crash, see sessions.py);
-- (sender, cid) makes a resend land on the same row.
CREATE TABLE chat_messages (
    session_id INTEGER NOT NULL,
    seq        INTEGER NOT NULL,
    sender     TEXT NOT NULL,
    cid        TEXT NOT NULL,
    text       TEXT NOT NULL,
    ts         REAL NOT NULL,
    PRIMARY KEY (session_id, seq),
    UNIQUE (session_id, sender, cid)
);
