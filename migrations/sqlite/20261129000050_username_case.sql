-- Usernames are unique whatever their case (`alice`, `Alice` and `ALICE` are one account); the
-- stored spelling is kept for display and lookups compare `lower(username)` through this index.
-- Usernames are ASCII, so SQLite's ASCII-only `lower` is exact.
--
-- Accounts created before this migration may already differ only in case. They are never
-- merged or renamed behind the operator's back: the migration stops with the message below,
-- changes nothing, and the server does not start until one of each clashing group is renamed
-- (docs/OPERATIONS.md, "Usernames that differ only in case").
create temp table username_case_clash (name text);

create temp trigger username_case_clash_abort before insert on username_case_clash
begin
    select raise(abort, 'usernames that differ only in case exist; rename all but one of each group (docs/OPERATIONS.md) and migrate again');
end;

insert into username_case_clash
    select lower(username) from users group by lower(username) having count(*) > 1 limit 1;

drop trigger username_case_clash_abort;
drop table username_case_clash;

create unique index users_username_ci on users (lower(username));
