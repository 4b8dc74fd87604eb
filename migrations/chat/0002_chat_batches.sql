-- Chat messages as committed batches (issue 4, relay throughput): one row per commit
-- of a session, holding the `chats` frames of seqs first_seq..last_seq exactly as they
-- were pushed (4-byte length + msgpack map each, docs/protocol.md). The hot path then
-- writes one row per session and turn of the event loop instead of one per message, and
-- a replay after a restart decodes the frames (chmail/chserver/messagestore.py). Rows of
-- chat_messages (0001) written before this stay readable and are read first.
CREATE TABLE chat_batches (
    session_id INTEGER NOT NULL,
    first_seq  INTEGER NOT NULL,
    last_seq   INTEGER NOT NULL,
    frames     BLOB NOT NULL,
    PRIMARY KEY (session_id, first_seq)
);
