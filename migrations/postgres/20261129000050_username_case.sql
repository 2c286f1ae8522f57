-- Usernames are unique whatever their case (`alice`, `Alice` and `ALICE` are one account); the
-- stored spelling is kept for display and lookups compare `lower(username)` through this index.
--
-- Accounts created before this migration may already differ only in case. They are never
-- merged or renamed behind the operator's back: the migration stops with the message below
-- (naming the clashing accounts), changes nothing, and the server does not start until one of
-- each clashing group is renamed (docs/OPERATIONS.md, "Usernames that differ only in case").
do $$
declare
    clashes text;
begin
    select string_agg(names, '; ') into clashes from (
        select string_agg(username, ', ' order by username) as names
        from users group by lower(username) having count(*) > 1 limit 20
    ) as clash;
    if clashes is not null then
        raise exception 'usernames that differ only in case exist (%); rename all but one of each group (docs/OPERATIONS.md) and migrate again', clashes;
    end if;
end
$$;

create unique index users_username_ci on users (lower(username));
