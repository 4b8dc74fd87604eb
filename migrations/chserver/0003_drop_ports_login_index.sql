-- Table 2 is never searched by login (the running server keeps it in memory), and the
-- index cost a page write in every allocation's commit (alloc waits for that commit).
DROP INDEX IF EXISTS ports_login;
