-- Drafts are mirrored to the account's Drafts folder on the server (chmail/client/drafts.py):
-- where the current server copy of each draft is, and which version of it that copy holds.
-- A draft is "dirty" while updated > mirrored; the copy is replaced by APPEND of the new
-- version and deletion of the old UID.
ALTER TABLE drafts ADD COLUMN server_folder TEXT NOT NULL DEFAULT '';
ALTER TABLE drafts ADD COLUMN server_uid INTEGER NOT NULL DEFAULT 0;
ALTER TABLE drafts ADD COLUMN mirrored REAL NOT NULL DEFAULT 0;
