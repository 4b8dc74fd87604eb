-- recipients.sent_at is read only when a send starts under a per-window rate limit
-- (how many mails went out in the window: one scan then), but its index was updated
-- by every mail's 'sent' write, in the sender's group commit.
DROP INDEX IF EXISTS recipients_sent_at;
