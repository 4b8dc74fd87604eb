-- Chat messages of the CH server's sessions (issue 4), in a database file of their own
-- (<data>/chat.sqlite) so that the hot path never waits for another writer's lock.
-- seq is per session, ascending (with a gap after a crash, see sessions.py).
-- One B-tree only (WITHOUT ROWID, no secondary index): rows are written in batches on
-- the chat hot path. A resend is recognised in memory by (sender, cid), from the rows
-- loaded when a session is reopened, so no unique index is needed for it.
CREATE TABLE chat_messages (
    session_id INTEGER NOT NULL,
    seq        INTEGER NOT NULL,
    sender     TEXT NOT NULL,
    cid        TEXT NOT NULL,
    text       TEXT NOT NULL,
    ts         REAL NOT NULL,
    PRIMARY KEY (session_id, seq)
) WITHOUT ROWID;
