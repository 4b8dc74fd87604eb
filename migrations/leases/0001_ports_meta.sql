-- Table 2 (S103) of the CH server, in a file of its own (leases.sqlite3): one writer,
-- the running server's event loop, commits each batch of allocations here without
-- contending with the other modules' connection to chserver.sqlite3. Rows written to
-- the `ports` table of chserver.sqlite3 by older versions are moved here at start.
-- Times are unix seconds. "lease" grows by one each time the port is recycled.
CREATE TABLE ports (
    port        INTEGER PRIMARY KEY,
    login       TEXT NOT NULL,
    host        TEXT NOT NULL,
    lease       INTEGER NOT NULL,
    message_id  TEXT NOT NULL,       -- the mail the lease was made for
    message_ids TEXT NOT NULL,       -- JSON list: every mail of the thread sharing it
    recipients  TEXT NOT NULL,       -- JSON list of lowercased addresses
    context     TEXT NOT NULL DEFAULT '',
    allocated_at INTEGER NOT NULL,   -- first allocation of this lease
    updated_at  INTEGER NOT NULL,    -- last (re)use; the oldest is recycled first
    expires     INTEGER NOT NULL
);

-- "lease_reserved": lease numbers up to this value may have been handed out; after a
-- crash numbering resumes above it. Written in the same transaction as the leases that
-- use a new block of numbers.
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
