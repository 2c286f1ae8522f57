-- External tokens (issue 13): a user known to another auth system (a JWT's user claim) is
-- found by `external_id`, the claim's value as text. NULL for users registered here; unique
-- among the rest.
alter table users add column external_id text;

create unique index users_external_id on users (external_id) where external_id is not null;
