-- One row, rewritten by readiness checks while writes are failing: a write that succeeds
-- proves the database takes writes again (a disk that was full has space, say).
create table health_probe (
    probe_id integer primary key check (probe_id = 1),
    probed_at text not null
);
