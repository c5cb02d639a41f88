-- Documents stored before NUL characters were refused at the edge may hold
-- the JSON escape \u0000. PostgreSQL's jsonb (every filter and sort casts
-- `data` to it) rejects that escape, so one such document made every
-- filter over its tenant fail. It becomes U+FFFD, the replacement
-- character: the rest of the document stays readable. (A string holding
-- the literal text backslash-u0000 would be rewritten too; no IdP sends
-- that, and the price is one character.)
UPDATE scim_users SET data = replace(data, '\u0000', '\ufffd') WHERE data LIKE '%u0000%';
UPDATE scim_groups SET data = replace(data, '\u0000', '\ufffd') WHERE data LIKE '%u0000%';

-- One-time repairs done in Rust after the migrations (store::repairs).
CREATE TABLE store_repairs (
    name TEXT PRIMARY KEY,
    done_at TEXT NOT NULL
);
