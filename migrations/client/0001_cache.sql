-- The client's mailbox cache: folders, messages (headers first, bodies on demand),
-- threads, an address book for completion, FTS5 search, queued server operations.

CREATE TABLE folders (
    id            INTEGER PRIMARY KEY,
    account       TEXT NOT NULL,
    name          TEXT NOT NULL,              -- server name (IMAP mailbox / Maildir folder)
    delimiter     TEXT NOT NULL DEFAULT '/',
    special_use   TEXT NOT NULL DEFAULT '',   -- inbox, sent, drafts, trash, junk, archive
    uidvalidity   INTEGER NOT NULL DEFAULT 0,
    uidnext       INTEGER NOT NULL DEFAULT 0,
    highestmodseq INTEGER NOT NULL DEFAULT 0,
    total         INTEGER NOT NULL DEFAULT 0, -- kept by triggers: count() is O(1)
    unread        INTEGER NOT NULL DEFAULT 0,
    synced_at     REAL NOT NULL DEFAULT 0,
    UNIQUE (account, name)
);

CREATE TABLE threads (
    id      INTEGER PRIMARY KEY,
    subject TEXT NOT NULL DEFAULT ''
);

-- Every Message-ID seen (a message's own, or one it refers to) -> its thread.
CREATE TABLE thread_ids (
    message_id TEXT PRIMARY KEY,
    thread_id  INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX thread_ids_thread ON thread_ids (thread_id);

CREATE TABLE messages (
    id           INTEGER PRIMARY KEY,
    folder_id    INTEGER NOT NULL REFERENCES folders (id) ON DELETE CASCADE,
    uid          INTEGER NOT NULL,
    uidvalidity  INTEGER NOT NULL DEFAULT 0,
    message_id   TEXT NOT NULL DEFAULT '',
    in_reply_to  TEXT NOT NULL DEFAULT '',
    refs         TEXT NOT NULL DEFAULT '',    -- References, space separated
    thread_id    INTEGER NOT NULL DEFAULT 0,
    from_name    TEXT NOT NULL DEFAULT '',
    from_addr    TEXT NOT NULL DEFAULT '',
    to_addrs     TEXT NOT NULL DEFAULT '',    -- decoded "Name <a@b>, ..." as displayed
    cc_addrs     TEXT NOT NULL DEFAULT '',
    subject      TEXT NOT NULL DEFAULT '',
    date         INTEGER NOT NULL DEFAULT 0,  -- unix seconds
    flags        TEXT NOT NULL DEFAULT '',    -- IMAP flags, space separated
    seen         INTEGER NOT NULL DEFAULT 0,
    size         INTEGER NOT NULL DEFAULT 0,
    has_ch       INTEGER NOT NULL DEFAULT 0,
    ch_headers   TEXT NOT NULL DEFAULT '',    -- raw X-CH-* header lines, "Name: value\n"...
    sort_from    TEXT NOT NULL DEFAULT '',    -- lower-cased keys for the sorted pages
    sort_subject TEXT NOT NULL DEFAULT '',
    body_text    TEXT,                        -- NULL until the body was fetched
    attachments  INTEGER NOT NULL DEFAULT 0,
    UNIQUE (folder_id, uid)
);
-- One index per sort order of page(): the page walks the index, never the table.
CREATE INDEX messages_date ON messages (folder_id, date, id);
CREATE INDEX messages_from ON messages (folder_id, sort_from, date, id);
CREATE INDEX messages_subject ON messages (folder_id, sort_subject, date, id);
CREATE INDEX messages_size ON messages (folder_id, size, id);
CREATE INDEX messages_msgid ON messages (message_id);
CREATE INDEX messages_thread ON messages (thread_id, date);

CREATE TABLE bodies (
    message_pk INTEGER PRIMARY KEY REFERENCES messages (id) ON DELETE CASCADE,
    raw        BLOB NOT NULL
);

CREATE TRIGGER messages_count_ins AFTER INSERT ON messages BEGIN
    UPDATE folders SET total = total + 1, unread = unread + (1 - NEW.seen)
     WHERE id = NEW.folder_id;
END;
CREATE TRIGGER messages_count_del AFTER DELETE ON messages BEGIN
    UPDATE folders SET total = total - 1, unread = unread - (1 - OLD.seen)
     WHERE id = OLD.folder_id;
END;
CREATE TRIGGER messages_count_upd AFTER UPDATE OF seen, folder_id ON messages
WHEN OLD.seen != NEW.seen OR OLD.folder_id != NEW.folder_id BEGIN
    UPDATE folders SET total = total - 1, unread = unread - (1 - OLD.seen)
     WHERE id = OLD.folder_id;
    UPDATE folders SET total = total + 1, unread = unread + (1 - NEW.seen)
     WHERE id = NEW.folder_id;
END;

-- Full-text search over from, to/cc, subject and body text (external content).
CREATE VIRTUAL TABLE messages_fts USING fts5 (
    subject, sender, recipients, body,
    content = 'messages_fts_src', content_rowid = 'id',
    tokenize = 'unicode61 remove_diacritics 2'
);
CREATE VIEW messages_fts_src AS
    SELECT id, subject, from_name || ' ' || from_addr AS sender,
           to_addrs || ' ' || cc_addrs AS recipients, coalesce(body_text, '') AS body
      FROM messages;
CREATE TRIGGER messages_fts_ins AFTER INSERT ON messages BEGIN
    INSERT INTO messages_fts (rowid, subject, sender, recipients, body)
    VALUES (NEW.id, NEW.subject, NEW.from_name || ' ' || NEW.from_addr,
            NEW.to_addrs || ' ' || NEW.cc_addrs, coalesce(NEW.body_text, ''));
END;
CREATE TRIGGER messages_fts_del AFTER DELETE ON messages BEGIN
    INSERT INTO messages_fts (messages_fts, rowid, subject, sender, recipients, body)
    VALUES ('delete', OLD.id, OLD.subject, OLD.from_name || ' ' || OLD.from_addr,
            OLD.to_addrs || ' ' || OLD.cc_addrs, coalesce(OLD.body_text, ''));
END;
CREATE TRIGGER messages_fts_upd AFTER UPDATE OF subject, from_name, from_addr, to_addrs,
    cc_addrs, body_text ON messages BEGIN
    INSERT INTO messages_fts (messages_fts, rowid, subject, sender, recipients, body)
    VALUES ('delete', OLD.id, OLD.subject, OLD.from_name || ' ' || OLD.from_addr,
            OLD.to_addrs || ' ' || OLD.cc_addrs, coalesce(OLD.body_text, ''));
    INSERT INTO messages_fts (rowid, subject, sender, recipients, body)
    VALUES (NEW.id, NEW.subject, NEW.from_name || ' ' || NEW.from_addr,
            NEW.to_addrs || ' ' || NEW.cc_addrs, coalesce(NEW.body_text, ''));
END;

-- Address completion: every address seen in From/To/Cc or sent to.
CREATE TABLE addresses (
    address   TEXT PRIMARY KEY,              -- lower-cased
    name      TEXT NOT NULL DEFAULT '',
    name_lc   TEXT NOT NULL DEFAULT '',
    uses      INTEGER NOT NULL DEFAULT 0,
    last_used INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
CREATE INDEX addresses_name ON addresses (name_lc);

-- Changes made locally (flags, moves, deletes) waiting to be pushed to the server.
CREATE TABLE pending_ops (
    id        INTEGER PRIMARY KEY,
    account   TEXT NOT NULL,
    kind      TEXT NOT NULL,                 -- flags, move, copy, delete
    folder    TEXT NOT NULL,
    uid       INTEGER NOT NULL,
    arg       TEXT NOT NULL DEFAULT '',
    created   REAL NOT NULL
);

-- POP3: which UIDLs were already fetched, so each message is fetched once.
CREATE TABLE pop3_seen (
    account TEXT NOT NULL,
    uidl    TEXT NOT NULL,
    fetched REAL NOT NULL,
    PRIMARY KEY (account, uidl)
) WITHOUT ROWID;

-- Drafts and the outbox (see chmail/client/outbox.py for the states).
CREATE TABLE drafts (
    id         INTEGER PRIMARY KEY,
    account    TEXT NOT NULL,
    message_id TEXT NOT NULL UNIQUE,
    raw        BLOB NOT NULL,
    updated    REAL NOT NULL
);

CREATE TABLE outbox (
    id          INTEGER PRIMARY KEY,
    account     TEXT NOT NULL,
    message_id  TEXT NOT NULL UNIQUE,        -- the idempotency key
    sender      TEXT NOT NULL,
    recipients  TEXT NOT NULL,               -- JSON list, Bcc included (envelope only)
    raw         BLOB NOT NULL,               -- the mail as composed (no X-CH yet)
    stamped     BLOB,                        -- with X-CH headers, once allocated
    state       TEXT NOT NULL DEFAULT 'queued', -- queued, sending, sent, filed, failed
    attempts    INTEGER NOT NULL DEFAULT 0,
    next_try    REAL NOT NULL DEFAULT 0,
    last_error  TEXT NOT NULL DEFAULT '',
    ch_status   TEXT NOT NULL DEFAULT '',    -- '', stamped, unlinked (sent without X-CH)
    created     REAL NOT NULL,
    updated     REAL NOT NULL
);
CREATE INDEX outbox_state ON outbox (state, next_try);
