-- When each session ends unless it has activity again: `last_activity + inactivity_timeout`
-- for HTTP activity, the close time + `disconnect_grace` for a session whose socket closed.
-- A session is live while it had activity within the timeout and `expires_at` (if set) has
-- not passed; restarts restore exactly those. NULL: rows written before this column existed.
alter table sessions add column expires_at timestamptz;

create index sessions_expires_at on sessions (expires_at);
