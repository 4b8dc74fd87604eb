-- Cheaper header inserts (sync of a large folder spends most of its store time in index
-- maintenance):
-- * The sort indexes for from / subject / size are built on first use by Cache.page()
--   (CREATE INDEX IF NOT EXISTS), so a cache whose user never sorts that way never pays.
-- * Lookups by Message-ID go through thread_ids (already keyed by Message-ID) and the
--   thread index, so messages_msgid goes.
-- * Folder counts of inserted rows are added once per batch by Cache.add_messages instead
--   of one UPDATE per row (the delete / update triggers stay).

DROP INDEX IF EXISTS messages_from;
DROP INDEX IF EXISTS messages_subject;
DROP INDEX IF EXISTS messages_size;
DROP INDEX IF EXISTS messages_msgid;
DROP TRIGGER IF EXISTS messages_count_ins;
