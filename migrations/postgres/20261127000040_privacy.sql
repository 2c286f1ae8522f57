-- Privacy (issue 4): per-user visibility settings, the contacts_except list, contacts and
-- blocks. A user without a privacy_settings row has the defaults (everything visible, as in
-- the seed). `version` is bumped by every write so the server's in-memory cache can tell a
-- newer state from an older one.
create table privacy_settings (
    user_id bigint primary key references users (user_id) on delete cascade,
    last_seen_audience text not null default 'everyone'
        check (last_seen_audience in ('everyone', 'contacts', 'contacts_except', 'nobody')),
    online_audience text not null default 'everyone'
        check (online_audience in ('everyone', 'same_as_last_seen')),
    -- Set while invisible: when invisible mode was turned on (the last_seen others see).
    invisible_since timestamptz,
    version bigint not null default 1,
    updated_at timestamptz not null
);

-- The users a `contacts_except` setting hides last seen from. Kept while another setting is
-- active, like WhatsApp does.
create table privacy_exceptions (
    user_id bigint not null references users (user_id) on delete cascade,
    excepted_user_id bigint not null references users (user_id) on delete cascade,
    primary key (user_id, excepted_user_id),
    check (excepted_user_id <> user_id)
);

-- A user's contact list: `contact_user_id` is in `user_id`'s contacts (one direction).
create table contacts (
    user_id bigint not null references users (user_id) on delete cascade,
    contact_user_id bigint not null references users (user_id) on delete cascade,
    created_at timestamptz not null,
    primary key (user_id, contact_user_id),
    check (contact_user_id <> user_id)
);

create index contacts_contact_user_id on contacts (contact_user_id);

-- Blocks: `user_id` blocked `blocked_user_id`.
create table blocks (
    user_id bigint not null references users (user_id) on delete cascade,
    blocked_user_id bigint not null references users (user_id) on delete cascade,
    created_at timestamptz not null,
    primary key (user_id, blocked_user_id),
    check (blocked_user_id <> user_id)
);

create index blocks_blocked_user_id on blocks (blocked_user_id);
