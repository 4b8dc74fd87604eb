-- CH server: users, table 1 (login -> latest host/IP), table 2 (port leases).
-- Times are unix seconds (INTEGER). Logins are validated by chmail.headers.check_login
-- before they reach this database.

CREATE TABLE users (
    login         TEXT PRIMARY KEY,
    password_hash TEXT NOT NULL,                 -- argon2id, PHC string
    created_at    INTEGER NOT NULL
);

-- A user's e-mail addresses (lowercased); one address belongs to one login.
CREATE TABLE user_emails (
    email TEXT PRIMARY KEY,
    login TEXT NOT NULL REFERENCES users(login) ON DELETE CASCADE
);
CREATE INDEX user_emails_login ON user_emails(login);

-- Table 1 (S101): written at every successful auth; "online" follows the live link.
CREATE TABLE logins (
    login       TEXT PRIMARY KEY REFERENCES users(login) ON DELETE CASCADE,
    host        TEXT NOT NULL,       -- the host name the client advertised
    observed_ip TEXT NOT NULL,       -- the address the server saw
    direct      INTEGER NOT NULL DEFAULT 0,
    last_seen   INTEGER NOT NULL,
    online      INTEGER NOT NULL DEFAULT 0
);

-- Table 2 (S103): one row per port of the pool that has ever been leased.
-- "lease" grows by one each time the port is recycled for another mail.
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
CREATE INDEX ports_login ON ports(login);

-- Small named counters. "lease_reserved": lease numbers up to this value may have been
-- handed out; after a crash numbering resumes above it, so a lease number is never
-- given twice even if the last leases had not reached the disk.
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
