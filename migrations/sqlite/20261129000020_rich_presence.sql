-- Rich presence (issue 12): a user's manual status (mode, text, emoji, when it resets itself)
-- and each session's device (platform and an optional name).
alter table users add column status_mode text not null default 'auto'
    check (status_mode in ('auto', 'away', 'dnd'));
alter table users add column status_text text;
alter table users add column status_emoji text;
alter table users add column status_expires_at text;

alter table sessions add column platform text not null default 'web'
    check (platform in ('web', 'mobile', 'desktop'));
alter table sessions add column device_name text;

-- Restarts load every user with a manual status (it may reset itself while they are offline).
create index users_with_status on users (user_id)
    where status_mode <> 'auto' or status_text is not null or status_emoji is not null;
