-- External tokens (issue 13): a user known to another auth system (a JWT's user claim) is
-- found by `external_id`, the claim's value as text. NULL for users registered here; unique
-- among the rest.
alter table users add column external_id text;

create unique index users_external_id on users (external_id) where external_id is not null;

-- A JWT's session lasts until the token expires (`token_expires_at`, NULL for a login's
-- session). Revoking such a session leaves its token hash in `revoked_tokens` until then, so
-- presenting the same token again does not open a new session.
alter table sessions add column token_expires_at text;

create table revoked_tokens (
    token_hash blob primary key,
    expires_at text not null
);

create index revoked_tokens_expires_at on revoked_tokens (expires_at);
