-- Users: the seed's columns `online_status` and `last_seen` are kept current by the server's
-- batched writes (within `persist_interval`), so its "Database Queries" still answer correctly.
-- Same tables, columns and indexes as migrations/sqlite, with native types: `bigserial` ids,
-- `timestamptz` times (microsecond precision, like the SQLite text) and `bytea` hashes.
create table users (
    user_id bigserial primary key,
    username text not null unique,
    password_hash text not null,
    is_admin boolean not null default false,
    online_status text not null default 'offline' check (online_status in ('online', 'offline')),
    last_seen timestamptz,
    presence_seq bigint not null default 0,
    created_at timestamptz not null
);

create index users_online_status_last_seen on users (online_status, last_seen);

-- Sessions: one per login (device). Only a SHA-256 of the access token is stored.
create table sessions (
    session_id bigserial primary key,
    user_id bigint not null references users (user_id) on delete cascade,
    token_hash bytea not null unique,
    created_at timestamptz not null,
    last_activity timestamptz not null
);

create index sessions_user_id on sessions (user_id);
create index sessions_last_activity on sessions (last_activity);
