-- Integrations (issue 13): the log of presence changes (the admin event stream resumes from it;
-- each change is recorded once, by whichever node records it first), the webhook outbox (one
-- row per endpoint and change until the endpoint acknowledged it), and which node delivers to
-- each endpoint. Times are microseconds since the Unix epoch, so both databases share the SQL.
create table presence_events (
    user_id bigint not null,
    seq bigint not null,
    at_us bigint not null,
    -- What a viewer sees of the user after the change (to tell whether a return changed it).
    state text not null,
    payload text not null,
    primary key (user_id, seq)
);
create index presence_events_by_seq on presence_events (seq, user_id);
create index presence_events_by_time on presence_events (at_us);

create table webhook_outbox (
    endpoint text not null,
    user_id bigint not null,
    seq bigint not null,
    deliver_after_us bigint not null,
    created_us bigint not null,
    -- An offline change held back for webhook_offline_delay (a quick return cancels it).
    held boolean not null,
    payload text not null,
    primary key (endpoint, user_id, seq)
);
create index webhook_outbox_order on webhook_outbox (endpoint, seq, user_id);

create table webhook_endpoints (
    endpoint text primary key,
    holder text not null,
    held_until_us bigint not null
);
