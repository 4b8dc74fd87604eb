-- Search in Chinese, Japanese and Korean text: FTS5's unicode61 tokenizer takes a run of
-- CJK characters without spaces as one token, so a word inside a Japanese sentence (or
-- a Korean compound) was found only at the start of the run. The indexed text now goes
-- through chm_fts() (registered by the client, chmail.client.cache_search.fts_text),
-- which makes each CJK character a token of its own; a query's CJK word becomes the
-- phrase of its characters, which matches it anywhere.
--
-- The index is rebuilt: rows go back to "not indexed" and the next indexing pass
-- (Cache.index_pending, right after the next sync or search) indexes them again.

DROP TRIGGER messages_fts_del;
DROP TRIGGER messages_fts_upd;

INSERT INTO messages_fts (messages_fts) VALUES ('delete-all');

-- The external content the index is checked and rebuilt against says the same.
DROP VIEW messages_fts_src;
CREATE VIEW messages_fts_src AS
    SELECT id, chm_fts(subject) AS subject, chm_fts(from_name || ' ' || from_addr) AS sender,
           chm_fts(to_addrs || ' ' || cc_addrs) AS recipients,
           chm_fts(coalesce(body_text, '')) AS body
      FROM messages;
UPDATE messages SET indexed = 0 WHERE indexed = 1;

CREATE TRIGGER messages_fts_del AFTER DELETE ON messages WHEN OLD.indexed = 1 BEGIN
    INSERT INTO messages_fts (messages_fts, rowid, subject, sender, recipients, body)
    VALUES ('delete', OLD.id, chm_fts(OLD.subject),
            chm_fts(OLD.from_name || ' ' || OLD.from_addr),
            chm_fts(OLD.to_addrs || ' ' || OLD.cc_addrs), chm_fts(coalesce(OLD.body_text, '')));
END;
CREATE TRIGGER messages_fts_upd AFTER UPDATE OF subject, from_name, from_addr, to_addrs,
    cc_addrs, body_text ON messages WHEN OLD.indexed = 1 BEGIN
    INSERT INTO messages_fts (messages_fts, rowid, subject, sender, recipients, body)
    VALUES ('delete', OLD.id, chm_fts(OLD.subject),
            chm_fts(OLD.from_name || ' ' || OLD.from_addr),
            chm_fts(OLD.to_addrs || ' ' || OLD.cc_addrs), chm_fts(coalesce(OLD.body_text, '')));
    INSERT INTO messages_fts (rowid, subject, sender, recipients, body)
    VALUES (NEW.id, chm_fts(NEW.subject), chm_fts(NEW.from_name || ' ' || NEW.from_addr),
            chm_fts(NEW.to_addrs || ' ' || NEW.cc_addrs), chm_fts(coalesce(NEW.body_text, '')));
END;
