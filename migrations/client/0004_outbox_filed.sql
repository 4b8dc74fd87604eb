-- A mail some of whose recipients were deferred (4xx) while the others took it is filed
-- into Sent at once and then retried for the deferred recipients only (outbox.recipients
-- shrinks to them); filed = 1 keeps the final success from filing it a second time.
ALTER TABLE outbox ADD COLUMN filed INTEGER NOT NULL DEFAULT 0;
