-- The admin dashboard's chart (issue 13): how many users were online, one row per minute
-- (minutes since the Unix epoch). Every node samples the shared count; the last write of a
-- minute wins, which is the same number on every node.
create table online_samples (
    minute bigint primary key,
    online bigint not null
);
