//! Persisted presence: batched writes, restoring live sessions, marking inactive users offline.

use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use lastseen::domain::{ManualStatus, Platform, PresenceStatus, SessionId, StatusMode, UserId};
use lastseen::domain::{PresenceWrite, StoredSession};
use lastseen::store::{Liveness, Store, UserRecord};

use crate::users::user;

/// Now, at the microsecond precision both backends store.
fn now() -> DateTime<Utc> {
    DateTime::from_timestamp_micros(Utc::now().timestamp_micros()).unwrap()
}

fn secs(n: i64) -> Duration {
    Duration::seconds(n)
}

fn write(
    user: UserId,
    status: PresenceStatus,
    last_seen: Option<DateTime<Utc>>,
    seq: u64,
    sessions: &[(SessionId, DateTime<Utc>)],
) -> PresenceWrite {
    PresenceWrite {
        user_id: user,
        status,
        last_seen,
        seq,
        sessions: sessions
            .iter()
            .map(|&(id, at)| StoredSession {
                id,
                last_activity: at,
                expires_at: at + secs(3600),
                platform: Platform::Web,
            })
            .collect(),
        expired_status: None,
    }
}

/// Liveness where only activity counts: the written sessions expire an hour after it.
fn since(cutoff: DateTime<Utc>) -> Liveness {
    Liveness {
        now: cutoff,
        inactive_before: cutoff,
    }
}

/// A restored user, with sessions as (id, last activity) sorted by id.
#[derive(Debug)]
struct Live {
    user_id: UserId,
    seq: u64,
    last_seen: Option<DateTime<Utc>>,
    sessions: Vec<(SessionId, DateTime<Utc>)>,
}

async fn reload(store: &dyn Store, user: UserId) -> UserRecord {
    store.user_by_id(user).await.unwrap().unwrap()
}

/// Live users sorted by id, each with its sessions sorted (the trait leaves order open).
async fn live_at(store: &dyn Store, liveness: Liveness) -> Vec<Live> {
    let mut users: Vec<Live> = store
        .load_live(liveness)
        .await
        .unwrap()
        .into_iter()
        .map(|u| Live {
            user_id: u.user_id,
            seq: u.seq,
            last_seen: u.last_seen,
            sessions: u.sessions.iter().map(|s| (s.id, s.last_activity)).collect(),
        })
        .collect();
    users.sort_by_key(|u| u.user_id);
    for user in &mut users {
        user.sessions.sort();
    }
    users
}

async fn live(store: &dyn Store, cutoff: DateTime<Utc>) -> Vec<Live> {
    live_at(store, since(cutoff)).await
}

pub async fn written_presence_is_read_back_with_microsecond_precision(store: Arc<dyn Store>) {
    let base = now();
    let ahmad = user(store.as_ref(), "ahmad").await.id;
    let session = store.create_session(ahmad, b"t", base).await.unwrap();
    let precise = base + Duration::nanoseconds(1_234_567_891);
    let stored = base + Duration::microseconds(1_234_567);
    let online = write(
        ahmad,
        PresenceStatus::Online,
        Some(precise),
        42,
        &[(session, precise)],
    );
    store.write_presence(&[online]).await.unwrap();

    let row = reload(store.as_ref(), ahmad).await;
    assert_eq!(row.online_status, PresenceStatus::Online);
    assert_eq!(
        row.last_seen,
        Some(stored),
        "sub-microsecond digits are dropped"
    );
    assert_eq!(row.presence_seq, 42);
    let restored = live(store.as_ref(), base).await;
    assert_eq!(restored.len(), 1);
    assert_eq!(
        (restored[0].user_id, restored[0].seq, restored[0].last_seen),
        (ahmad, 42, Some(stored))
    );
    assert_eq!(restored[0].sessions, [(session, stored)]);

    let top = u64::try_from(i64::MAX).unwrap();
    let offline = write(ahmad, PresenceStatus::Offline, Some(stored), top, &[]);
    store.write_presence(&[offline]).await.unwrap();
    let row = reload(store.as_ref(), ahmad).await;
    assert_eq!(row.online_status, PresenceStatus::Offline);
    assert_eq!((row.last_seen, row.presence_seq), (Some(stored), top));
    let restored = live(store.as_ref(), base).await;
    assert_eq!(restored[0].sessions, [(session, stored)], "activity kept");
}

pub async fn an_empty_batch_and_writes_of_unknown_users_change_nothing(store: Arc<dyn Store>) {
    let base = now();
    let ahmad = user(store.as_ref(), "ahmad").await;
    store.write_presence(&[]).await.unwrap();
    let ghost = UserId(i64::MAX);
    let ghost_write = write(
        ghost,
        PresenceStatus::Online,
        Some(base),
        9,
        &[(SessionId(i64::MAX), base)],
    );
    store.write_presence(&[ghost_write]).await.unwrap();
    assert!(store.user_by_id(ghost).await.unwrap().is_none());
    assert!(live(store.as_ref(), base - secs(3600)).await.is_empty());
    let row = reload(store.as_ref(), ahmad.id).await;
    assert_eq!(row.online_status, PresenceStatus::Offline);
    assert_eq!((row.last_seen, row.presence_seq), (None, 0));
}

/// `count` users named `prefix0`, `prefix1`, …, each with one session opened at `at`.
async fn users_with_sessions(
    store: &dyn Store,
    prefix: &str,
    count: usize,
    at: DateTime<Utc>,
) -> Vec<(UserId, SessionId)> {
    let mut users = Vec::with_capacity(count);
    for i in 0..count {
        let id = user(store, &format!("{prefix}{i}")).await.id;
        let token = format!("{prefix}-token{i}");
        let session = store
            .create_session(id, token.as_bytes(), at)
            .await
            .unwrap();
        users.push((id, session));
    }
    users
}

pub async fn a_large_batch_is_written_completely(store: Arc<dyn Store>) {
    const USERS: usize = 200;
    let base = now();
    let mut batch = Vec::with_capacity(USERS);
    let users = users_with_sessions(store.as_ref(), "user", USERS, base).await;
    for (i, (id, session)) in users.into_iter().enumerate() {
        let at = base + Duration::milliseconds(i64::try_from(i).unwrap());
        let seq = 1000 + u64::try_from(i).unwrap();
        batch.push(write(
            id,
            PresenceStatus::Online,
            Some(at),
            seq,
            &[(session, at)],
        ));
    }
    store.write_presence(&batch).await.unwrap();

    let ids: Vec<UserId> = batch.iter().map(|w| w.user_id).collect();
    let rows = store.users_by_ids(&ids).await.unwrap();
    assert_eq!(rows.len(), USERS);
    for row in rows {
        let written = batch.iter().find(|w| w.user_id == row.id).unwrap();
        assert_eq!(row.online_status, PresenceStatus::Online);
        assert_eq!(
            (row.last_seen, row.presence_seq),
            (written.last_seen, written.seq)
        );
    }
    let restored = live(store.as_ref(), base + secs(0)).await;
    assert_eq!(restored.len(), USERS);
    for (restored, written) in restored.iter().zip(&batch) {
        assert_eq!(restored.user_id, written.user_id);
        let sessions: Vec<_> = written
            .sessions
            .iter()
            .map(|s| (s.id, s.last_activity))
            .collect();
        assert_eq!(restored.sessions, sessions);
    }
}

/// Several nodes flush overlapping batches at the same time (a user's requests reach every
/// node), of different sizes and in whatever order each holds them: every write succeeds (no
/// deadlock between them) and the newest state wins.
pub async fn concurrent_overlapping_batches_in_opposite_orders_all_succeed(store: Arc<dyn Store>) {
    const USERS: usize = 1000;
    let base = now();
    let users = users_with_sessions(store.as_ref(), "overlap", USERS, base).await;
    let write_at = |&(id, session): &(UserId, SessionId), n: i64| {
        let at = base + secs(n);
        let seq = u64::try_from(n).unwrap() + 1;
        write(id, PresenceStatus::Online, Some(at), seq, &[(session, at)])
    };
    for round in 0..10_i64 {
        // One node holds every user, another a few of them, newest first.
        let all: Vec<PresenceWrite> = users.iter().map(|u| write_at(u, round * 2)).collect();
        let few: Vec<PresenceWrite> = users
            .iter()
            .step_by(20)
            .rev()
            .map(|u| write_at(u, round * 2 + 1))
            .collect();
        let (a, b) = tokio::join!(store.write_presence(&all), store.write_presence(&few));
        a.unwrap();
        b.unwrap();
    }
    let ids: Vec<UserId> = users.iter().step_by(20).map(|&(id, _)| id).collect();
    for row in store.users_by_ids(&ids).await.unwrap() {
        assert_eq!(
            row.last_seen,
            Some(base + secs(19)),
            "the newest write wins"
        );
        assert_eq!(row.presence_seq, 20);
    }
}

pub async fn session_activity_only_moves_forward(store: Arc<dyn Store>) {
    let base = now();
    let ahmad = user(store.as_ref(), "ahmad").await.id;
    let session = store.create_session(ahmad, b"t", base).await.unwrap();
    let online = |seq, at| {
        write(
            ahmad,
            PresenceStatus::Online,
            Some(at),
            seq,
            &[(session, at)],
        )
    };

    store
        .write_presence(&[online(1, base + secs(10))])
        .await
        .unwrap();
    store
        .write_presence(&[online(2, base + secs(5))])
        .await
        .unwrap();
    let restored = live(store.as_ref(), base).await;
    assert_eq!(restored[0].sessions, [(session, base + secs(10))]);
    assert_eq!(restored[0].seq, 2, "the user row takes every write");

    // Within one batch the user's last write wins and the session keeps its latest activity.
    let batch = [online(3, base + secs(20)), online(4, base + secs(15))];
    store.write_presence(&batch).await.unwrap();
    let restored = live(store.as_ref(), base).await;
    assert_eq!(restored[0].sessions, [(session, base + secs(20))]);
    let row = reload(store.as_ref(), ahmad).await;
    assert_eq!(
        (row.presence_seq, row.last_seen),
        (4, Some(base + secs(15)))
    );
}

pub async fn load_live_returns_users_with_a_session_active_since_the_cutoff(store: Arc<dyn Store>) {
    let cutoff = now();
    let a = user(store.as_ref(), "a").await.id;
    let b = user(store.as_ref(), "b").await.id;
    user(store.as_ref(), "c").await;
    let a_old = store
        .create_session(a, b"a1", cutoff - secs(100))
        .await
        .unwrap();
    let a_edge = store.create_session(a, b"a2", cutoff).await.unwrap();
    let a_new = store
        .create_session(a, b"a3", cutoff + secs(5))
        .await
        .unwrap();
    let b_old = store
        .create_session(b, b"b1", cutoff - Duration::microseconds(1))
        .await
        .unwrap();
    let a_write = write(a, PresenceStatus::Online, Some(cutoff + secs(5)), 7, &[]);
    store.write_presence(&[a_write]).await.unwrap();

    let restored = live(store.as_ref(), cutoff).await;
    assert_eq!(restored.len(), 1, "{restored:?}");
    assert_eq!(restored[0].user_id, a);
    assert_eq!(
        (restored[0].seq, restored[0].last_seen),
        (7, Some(cutoff + secs(5)))
    );
    let mut expected = vec![(a_edge, cutoff), (a_new, cutoff + secs(5))];
    expected.sort();
    assert_eq!(
        restored[0].sessions, expected,
        "a session exactly at the cutoff is live"
    );

    let restored = live(store.as_ref(), cutoff - secs(200)).await;
    let users: Vec<UserId> = restored.iter().map(|u| u.user_id).collect();
    assert_eq!(users, [a, b]);
    assert_eq!(restored[0].sessions.len(), 3);
    assert!(restored[0].sessions.contains(&(a_old, cutoff - secs(100))));
    assert_eq!(
        restored[1].sessions,
        [(b_old, cutoff - Duration::microseconds(1))]
    );
    assert_eq!((restored[1].seq, restored[1].last_seen), (0, None));
    assert!(live(store.as_ref(), cutoff + secs(6)).await.is_empty());
}

/// Users in every state `mark_inactive_offline` tells apart, around `cutoff`.
struct Population {
    cutoff: DateTime<Utc>,
    /// Online, one old and one recent session: stays online.
    recent: UserRecord,
    /// Online, only an old session, and a seq ahead of the clock.
    stale: UserRecord,
    /// Online without any session (its only one was deleted).
    sessionless: UserRecord,
    /// Offline with an old session: already offline.
    offline: UserRecord,
}

const FUTURE_SEQ: u64 = 1 << 60;

async fn population(store: &dyn Store) -> Population {
    let cutoff = now();
    let old = cutoff - secs(600);
    let mut users = Vec::new();
    for (name, status, seq, sessions) in [
        (
            "recent",
            PresenceStatus::Online,
            10,
            &[old, cutoff + secs(1)][..],
        ),
        ("stale", PresenceStatus::Online, FUTURE_SEQ, &[old][..]),
        ("sessionless", PresenceStatus::Online, 5, &[old][..]),
        ("offline", PresenceStatus::Offline, 20, &[old][..]),
    ] {
        let id = user(store, name).await.id;
        let mut live = Vec::new();
        for (i, at) in sessions.iter().enumerate() {
            let token = format!("{name}{i}");
            live.push((
                store
                    .create_session(id, token.as_bytes(), *at)
                    .await
                    .unwrap(),
                *at,
            ));
        }
        let last = sessions.iter().max().copied();
        store
            .write_presence(&[write(id, status, last, seq, &live)])
            .await
            .unwrap();
        if name == "sessionless" {
            store.delete_session(live[0].0).await.unwrap();
        }
        users.push(reload(store, id).await);
    }
    let [recent, stale, sessionless, offline] = users.try_into().unwrap();
    Population {
        cutoff,
        recent,
        stale,
        sessionless,
        offline,
    }
}

fn presence_of(row: &UserRecord) -> (PresenceStatus, Option<DateTime<Utc>>, u64) {
    (row.online_status, row.last_seen, row.presence_seq)
}

pub async fn a_dry_run_counts_inactive_online_users_and_changes_nothing(store: Arc<dyn Store>) {
    let people = population(store.as_ref()).await;
    let all = [
        &people.recent,
        &people.stale,
        &people.sessionless,
        &people.offline,
    ];
    let count = store
        .mark_inactive_offline(since(people.cutoff), true)
        .await
        .unwrap();
    assert_eq!(count, 2, "stale and sessionless");
    for before in all {
        let after = reload(store.as_ref(), before.id).await;
        assert_eq!(
            presence_of(&after),
            presence_of(before),
            "{}",
            before.username
        );
    }
    let earlier = people.cutoff - secs(3600);
    assert_eq!(
        store
            .mark_inactive_offline(since(earlier), true)
            .await
            .unwrap(),
        1
    );
}

pub async fn inactive_online_users_go_offline_with_last_seen_kept_and_seq_bumped(
    store: Arc<dyn Store>,
) {
    let people = population(store.as_ref()).await;
    let clock_before = u64::try_from(Utc::now().timestamp_micros()).unwrap();
    let count = store
        .mark_inactive_offline(since(people.cutoff), false)
        .await
        .unwrap();
    assert_eq!(count, 2);

    let stale = reload(store.as_ref(), people.stale.id).await;
    assert_eq!(stale.online_status, PresenceStatus::Offline);
    assert_eq!(stale.last_seen, people.stale.last_seen, "last_seen is kept");
    assert_eq!(
        stale.presence_seq,
        FUTURE_SEQ + 1,
        "seq ahead of the clock steps by one"
    );

    let sessionless = reload(store.as_ref(), people.sessionless.id).await;
    assert_eq!(sessionless.online_status, PresenceStatus::Offline);
    assert_eq!(sessionless.last_seen, people.sessionless.last_seen);
    let clock_after = u64::try_from(Utc::now().timestamp_micros()).unwrap();
    assert!(
        (clock_before..=clock_after).contains(&sessionless.presence_seq),
        "an old seq jumps to the clock: {clock_before} <= {} <= {clock_after}",
        sessionless.presence_seq
    );

    for unchanged in [&people.recent, &people.offline] {
        let after = reload(store.as_ref(), unchanged.id).await;
        assert_eq!(
            presence_of(&after),
            presence_of(unchanged),
            "{}",
            unchanged.username
        );
    }
    assert_eq!(
        store
            .mark_inactive_offline(since(people.cutoff), false)
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        store
            .mark_inactive_offline(since(people.cutoff), true)
            .await
            .unwrap(),
        0
    );
}

pub async fn a_session_past_its_stored_expiry_is_not_live_even_with_recent_activity(
    store: Arc<dyn Store>,
) {
    let base = now();
    let ahmad = user(store.as_ref(), "ahmad").await.id;
    let session = store.create_session(ahmad, b"t", base).await.unwrap();
    // A socket closed at `base` with a 10 s grace: live until base + 10 s, whatever the timeout.
    let closed = PresenceWrite {
        user_id: ahmad,
        status: PresenceStatus::Online,
        last_seen: Some(base),
        seq: 1,
        sessions: vec![StoredSession {
            id: session,
            last_activity: base,
            expires_at: base + secs(10),
            platform: Platform::Mobile,
        }],
        expired_status: None,
    };
    store.write_presence(&[closed]).await.unwrap();
    let timeout = secs(300);
    let at = |t: DateTime<Utc>| Liveness {
        now: t,
        inactive_before: t - timeout,
    };

    let restored = store.load_live(at(base + secs(5))).await.unwrap();
    assert_eq!(restored.len(), 1, "within the grace");
    assert_eq!(restored[0].sessions[0].expires_at, base + secs(10));
    assert_eq!(
        store
            .mark_inactive_offline(at(base + secs(5)), true)
            .await
            .unwrap(),
        0
    );

    assert!(
        store
            .load_live(at(base + secs(11)))
            .await
            .unwrap()
            .is_empty(),
        "grace over"
    );
    assert_eq!(
        store
            .mark_inactive_offline(at(base + secs(11)), false)
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        reload(store.as_ref(), ahmad).await.online_status,
        PresenceStatus::Offline
    );
}

fn status(mode: StatusMode, text: &str, expires_at: Option<DateTime<Utc>>) -> ManualStatus {
    ManualStatus {
        mode,
        text: Some(text.into()),
        emoji: Some("📅".into()),
        expires_at,
    }
}

pub async fn a_manual_status_is_stored_and_its_user_is_restored_without_sessions(
    store: Arc<dyn Store>,
) {
    let base = now();
    let ahmad = user(store.as_ref(), "ahmad").await.id;
    let sara = user(store.as_ref(), "sara").await.id;
    let meeting = status(StatusMode::Dnd, "In a meeting", Some(base + secs(3600)));
    store.set_manual_status(ahmad, &meeting).await.unwrap();
    assert_eq!(reload(store.as_ref(), ahmad).await.manual, meeting);
    assert_eq!(
        reload(store.as_ref(), sara).await.manual,
        ManualStatus::default()
    );
    let missing = store.set_manual_status(UserId(i64::MAX), &meeting).await;
    assert!(missing.is_err(), "an unknown user is refused");

    // Offline with no session, the user is still restored: their status must reset on time.
    let restored = store.load_live(since(base)).await.unwrap();
    assert_eq!(restored.len(), 1, "{restored:?}");
    assert_eq!(restored[0].user_id, ahmad);
    assert!(restored[0].sessions.is_empty());
    assert_eq!(restored[0].manual, meeting);

    store
        .set_manual_status(ahmad, &ManualStatus::default())
        .await
        .unwrap();
    assert!(store.load_live(since(base)).await.unwrap().is_empty());
}

pub async fn an_expired_status_resets_only_if_no_newer_one_was_set(store: Arc<dyn Store>) {
    let base = now();
    let ahmad = user(store.as_ref(), "ahmad").await.id;
    let sara = user(store.as_ref(), "sara").await.id;
    let old_expiry = base + secs(60);
    let old = status(StatusMode::Away, "Lunch", Some(old_expiry));
    store.set_manual_status(ahmad, &old).await.unwrap();
    let newer = status(StatusMode::Dnd, "Focus", Some(base + secs(7200)));
    store.set_manual_status(sara, &newer).await.unwrap();

    // Both writes say "the status expiring at old_expiry reset itself"; only Ahmad still has it.
    let mut reset = write(ahmad, PresenceStatus::Offline, Some(base), 3, &[]);
    reset.expired_status = Some(old_expiry);
    let mut stale = write(sara, PresenceStatus::Offline, Some(base), 3, &[]);
    stale.expired_status = Some(old_expiry);
    store.write_presence(&[reset, stale]).await.unwrap();

    assert_eq!(
        reload(store.as_ref(), ahmad).await.manual,
        ManualStatus::default()
    );
    assert_eq!(
        reload(store.as_ref(), sara).await.manual,
        newer,
        "a status set after the expired one is kept"
    );
}
