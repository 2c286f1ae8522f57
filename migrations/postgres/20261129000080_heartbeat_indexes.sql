-- Indexes a heartbeat's write-behind no longer moves (issue 11). Every flush rewrites
-- `users.last_seen`, `sessions.last_activity` and `sessions.expires_at` of each active user;
-- indexes ordered by those timestamps moved every such entry to the other end of the index,
-- and no update of those columns could be a HOT update (one that writes no index entry at
-- all). Without them, a flush's updates change no indexed column. Nothing reads them
-- by time: the queries that find online users without a live session (restart, `lastseen
-- mark-inactive`) start from the online users, and read sessions by user.
drop index users_online_status_last_seen;
drop index sessions_last_activity;
drop index sessions_expires_at;

-- The online users, changed only when a user comes online or goes offline.
create index users_online on users (user_id) where online_status = 'online';
