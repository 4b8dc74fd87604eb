-- Search indexing moves out of the insert path: sync stores headers first (the folder is
-- usable at once) and Cache.index_pending() indexes the new rows right after, in bulk.
-- A row is in messages_fts exactly when messages.indexed = 1.

ALTER TABLE messages ADD COLUMN indexed INTEGER NOT NULL DEFAULT 1;
CREATE INDEX messages_unindexed ON messages (id) WHERE indexed = 0;

DROP TRIGGER messages_fts_ins;
DROP TRIGGER messages_fts_del;
DROP TRIGGER messages_fts_upd;

CREATE TRIGGER messages_fts_del AFTER DELETE ON messages WHEN OLD.indexed = 1 BEGIN
    INSERT INTO messages_fts (messages_fts, rowid, subject, sender, recipients, body)
    VALUES ('delete', OLD.id, OLD.subject, OLD.from_name || ' ' || OLD.from_addr,
            OLD.to_addrs || ' ' || OLD.cc_addrs, coalesce(OLD.body_text, ''));
END;
CREATE TRIGGER messages_fts_upd AFTER UPDATE OF subject, from_name, from_addr, to_addrs,
    cc_addrs, body_text ON messages WHEN OLD.indexed = 1 BEGIN
    INSERT INTO messages_fts (messages_fts, rowid, subject, sender, recipients, body)
    VALUES ('delete', OLD.id, OLD.subject, OLD.from_name || ' ' || OLD.from_addr,
            OLD.to_addrs || ' ' || OLD.cc_addrs, coalesce(OLD.body_text, ''));
    INSERT INTO messages_fts (rowid, subject, sender, recipients, body)
    VALUES (NEW.id, NEW.subject, NEW.from_name || ' ' || NEW.from_addr,
            NEW.to_addrs || ' ' || NEW.cc_addrs, coalesce(NEW.body_text, ''));
END;
