-- Users: the seed's columns `online_status` and `last_seen` are kept current by the server's
-- batched writes (within `persist_interval`), so its "Database Queries" still answer correctly.
-- Timestamps are RFC 3339 UTC text of fixed width ("2026-11-27T10:30:00.000000Z"), so they
-- compare correctly as text.
create table users (
    user_id integer primary key autoincrement,
    username text not null unique,
    password_hash text not null,
    is_admin integer not null default 0 check (is_admin in (0, 1)),
    online_status text not null default 'offline' check (online_status in ('online', 'offline')),
    last_seen text,
    presence_seq integer not null default 0,
    created_at text not null
);

create index users_online_status_last_seen on users (online_status, last_seen);

-- Sessions: one per login (device). Only a SHA-256 of the access token is stored.
create table sessions (
    session_id integer primary key autoincrement,
    user_id integer not null references users (user_id) on delete cascade,
    token_hash blob not null unique,
    created_at text not null,
    last_activity text not null
);

create index sessions_user_id on sessions (user_id);
create index sessions_last_activity on sessions (last_activity);
