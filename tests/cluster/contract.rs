//! The engine contract: what every presence backend does, as one suite of cases run against
//! the in-process backend and the Redis backend (standalone and Cluster). Time is real (Redis
//! keeps its own), so timeouts are short: sessions end 1.5 s after their last activity and a
//! closed socket's session 400 ms after the close.

use std::time::Duration;

use chrono::{DateTime, SubsecRound, Utc};
use lastseen::domain::{
    Activity, Availability, ManualStatus, Platform, PresenceEvent, PresenceStatus, PresenceView,
    RestoredUser, SessionId, SessionRef, StatusMode, StoredSession, UserId,
};
use lastseen::engine::LastKnown;
use lastseen::engine::PresenceEngine;
use tokio::sync::broadcast;
use tokio::time::Instant;

/// Sessions end this long after their last activity.
pub const TIMEOUT: Duration = Duration::from_millis(1500);
/// A closed socket's session ends this long after the close.
pub const GRACE: Duration = Duration::from_millis(400);
/// How late an expiry may be: the documented bound is one second.
pub const LATE: Duration = Duration::from_secs(1);
/// A session turns idle this long after its last real activity (longer than any other case
/// holds a session, so only the idle cases see it).
pub const IDLE_AFTER: Duration = Duration::from_secs(4);

/// A backend under test, with its background work running.
pub struct Harness {
    pub engine: PresenceEngine,
    /// Users get ids from here up, so cases sharing a Redis never share a user.
    pub first_user: i64,
}

impl Harness {
    pub fn user(&self, n: i64) -> UserId {
        UserId(self.first_user + n)
    }

    /// Session `n` of `user`, on the web.
    pub fn session(&self, user: UserId, n: i64) -> SessionRef {
        self.device(user, n, Platform::Web)
    }

    /// Session `n` of `user`, on `platform`.
    pub fn device(&self, user: UserId, n: i64, platform: Platform) -> SessionRef {
        SessionRef {
            id: SessionId(user.0 * 10 + n),
            platform,
        }
    }

    /// A keepalive of `session` (activity that says nothing of the user): the view after it.
    async fn keepalive(&self, user: UserId, session: SessionRef) -> PresenceView {
        self.engine
            .touch(user, session, Activity::Keepalive)
            .await
            .unwrap()
    }

    async fn status(&self, user: UserId) -> PresenceStatus {
        let found = self.engine.presence(&[user]).await.unwrap();
        found
            .first()
            .map_or(PresenceStatus::Offline, |(_, v)| v.status)
    }
}

/// The next event of `user` within `within`, skipping other users'.
async fn event_of(
    events: &mut broadcast::Receiver<PresenceEvent>,
    user: UserId,
    within: Duration,
) -> Option<PresenceEvent> {
    let deadline = Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Ok(event)) if event.user_id == user => return Some(event),
            Ok(Ok(_)) => continue,
            Ok(Err(error)) => panic!("event channel: {error}"),
            Err(_) => return None,
        }
    }
}

/// Asserts no event of `user` arrives within `within`.
async fn silence_of(
    events: &mut broadcast::Receiver<PresenceEvent>,
    user: UserId,
    within: Duration,
) {
    if let Some(event) = event_of(events, user, within).await {
        panic!("expected no event of {user}, got {event:?}");
    }
}

/// Asserts that a session last active at `touched` has just ended: not before its timeout,
/// and within a second after it.
fn ended_on_time(touched: Instant) {
    let waited = touched.elapsed();
    assert!(
        waited >= TIMEOUT - Duration::from_millis(50),
        "not early: {waited:?}"
    );
    assert!(
        waited < TIMEOUT + LATE,
        "within a second of the deadline: {waited:?}"
    );
}

pub async fn first_activity_goes_online_with_one_event_and_more_activity_announces_nothing(
    h: Harness,
) {
    let mut events = h.engine.subscribe();
    let user = h.user(1);
    let session = h.session(user, 1);
    let view = h.keepalive(user, session).await;
    assert_eq!(view.status, PresenceStatus::Online);
    let online = event_of(&mut events, user, LATE)
        .await
        .expect("online event");
    assert_eq!(online.status, PresenceStatus::Online);
    assert_eq!(Some(online.last_seen), view.last_seen);
    assert_eq!(online.seq, view.seq);
    let again = h.keepalive(user, session).await;
    assert!(again.last_seen >= view.last_seen);
    assert_eq!(again.seq, view.seq, "activity is not a transition");
    silence_of(&mut events, user, Duration::from_millis(300)).await;
    assert_eq!(h.status(user).await, PresenceStatus::Online);
}

pub async fn a_session_ends_within_a_second_of_its_timeout_with_last_seen_at_the_last_activity(
    h: Harness,
) {
    let mut events = h.engine.subscribe();
    let user = h.user(1);
    let session = h.session(user, 1);
    h.keepalive(user, session).await;
    event_of(&mut events, user, LATE).await.expect("online");
    tokio::time::sleep(TIMEOUT / 3).await;
    let last = h.keepalive(user, session).await;
    let touched = Instant::now();
    let offline = event_of(&mut events, user, TIMEOUT + LATE * 2)
        .await
        .expect("offline event");
    assert_eq!(offline.status, PresenceStatus::Offline);
    ended_on_time(touched);
    assert_eq!(
        Some(offline.last_seen),
        last.last_seen,
        "last_seen is the last activity"
    );
    assert!(offline.seq > last.seq);
    silence_of(&mut events, user, Duration::from_millis(600)).await;
    assert_eq!(h.status(user).await, PresenceStatus::Offline);
}

/// Keepalives in quick succession (which a shared backend may answer at once and send in a
/// batch) keep the session live past its first timeout, announce nothing, and the session ends a
/// timeout after the last of them, with `last_seen` at that last one.
pub async fn frequent_keepalives_keep_a_session_live_until_a_timeout_after_the_last(h: Harness) {
    let mut events = h.engine.subscribe();
    let user = h.user(1);
    let session = h.session(user, 1);
    let first = h.keepalive(user, session).await;
    event_of(&mut events, user, LATE).await.expect("online");
    let mut last = first.clone();
    let until = Instant::now() + TIMEOUT * 2;
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(100)).await;
        last = h.keepalive(user, session).await;
        assert_eq!(last.status, PresenceStatus::Online);
        assert_eq!(last.seq, first.seq, "activity is not a transition");
    }
    let touched = Instant::now();
    assert!(last.last_seen > first.last_seen);
    // Keepalives say nothing of the user, so the session may turn idle meanwhile.
    let offline = loop {
        let event = event_of(&mut events, user, TIMEOUT + LATE * 2)
            .await
            .expect("offline event");
        if event.status == PresenceStatus::Offline {
            break event;
        }
        assert_eq!(event.availability, Some(Availability::Idle), "{event:?}");
    };
    ended_on_time(touched);
    assert_eq!(
        Some(offline.last_seen),
        last.last_seen,
        "last_seen is the last keepalive"
    );
    assert_eq!(h.status(user).await, PresenceStatus::Offline);
}

pub async fn a_user_stays_online_while_any_session_is_live(h: Harness) {
    let mut events = h.engine.subscribe();
    let user = h.user(1);
    h.keepalive(user, h.session(user, 1)).await;
    event_of(&mut events, user, LATE).await.expect("online");
    tokio::time::sleep(TIMEOUT / 2).await;
    h.keepalive(user, h.session(user, 2)).await;
    // Session 1 ends; session 2 is live for another half timeout.
    tokio::time::sleep(TIMEOUT * 3 / 4).await;
    assert_eq!(
        h.status(user).await,
        PresenceStatus::Online,
        "session 2 is live"
    );
    silence_of(&mut events, user, Duration::from_millis(50)).await;
    let offline = event_of(&mut events, user, TIMEOUT + LATE)
        .await
        .expect("offline");
    assert_eq!(offline.status, PresenceStatus::Offline);
}

pub async fn an_open_socket_holds_its_session_and_its_close_starts_the_grace(h: Harness) {
    let mut events = h.engine.subscribe();
    let user = h.user(1);
    let session = h.session(user, 1);
    h.engine.open_socket(user, session).await.unwrap();
    event_of(&mut events, user, LATE).await.expect("online");
    tokio::time::sleep(TIMEOUT + LATE).await;
    assert_eq!(
        h.status(user).await,
        PresenceStatus::Online,
        "held past the timeout"
    );
    h.engine
        .close_socket(user, session.id, GRACE)
        .await
        .unwrap();
    let closed = Instant::now();
    let offline = event_of(&mut events, user, GRACE + LATE * 2)
        .await
        .expect("offline");
    assert_eq!(offline.status, PresenceStatus::Offline);
    let waited = closed.elapsed();
    assert!(
        waited >= GRACE - Duration::from_millis(50) && waited < GRACE + LATE,
        "{waited:?}"
    );
}

pub async fn a_reconnect_inside_the_grace_announces_nothing(h: Harness) {
    let mut events = h.engine.subscribe();
    let user = h.user(1);
    let session = h.session(user, 1);
    h.engine.open_socket(user, session).await.unwrap();
    event_of(&mut events, user, LATE).await.expect("online");
    h.engine
        .close_socket(user, session.id, GRACE)
        .await
        .unwrap();
    tokio::time::sleep(GRACE / 4).await;
    h.engine.open_socket(user, session).await.unwrap();
    silence_of(&mut events, user, GRACE + LATE).await;
    assert_eq!(h.status(user).await, PresenceStatus::Online);
}

pub async fn ending_a_session_goes_offline_at_once_unless_another_is_live(h: Harness) {
    let mut events = h.engine.subscribe();
    let user = h.user(1);
    let (phone, laptop) = (h.session(user, 1), h.session(user, 2));
    h.keepalive(user, phone).await;
    h.keepalive(user, laptop).await;
    event_of(&mut events, user, LATE).await.expect("online");
    let view = h.engine.end_session(user, phone.id).await.unwrap();
    assert_eq!(view.status, PresenceStatus::Online, "the laptop is live");
    let view = h.engine.end_session(user, laptop.id).await.unwrap();
    assert_eq!(view.status, PresenceStatus::Offline);
    let offline = event_of(&mut events, user, LATE).await.expect("offline");
    assert_eq!(offline.status, PresenceStatus::Offline);
    assert_eq!(offline.seq, view.seq);
    let unknown = h
        .engine
        .end_session(h.user(9), h.session(h.user(9), 1).id)
        .await
        .unwrap();
    assert_eq!(
        unknown.status,
        PresenceStatus::Offline,
        "ending an unknown session is harmless"
    );
}

pub async fn seq_grows_per_user_across_transitions(h: Harness) {
    let mut events = h.engine.subscribe();
    let user = h.user(1);
    let mut seqs = Vec::new();
    for n in 1..=3 {
        let session = h.session(user, n);
        h.keepalive(user, session).await;
        seqs.push(event_of(&mut events, user, LATE).await.expect("online").seq);
        h.engine.end_session(user, session.id).await.unwrap();
        seqs.push(
            event_of(&mut events, user, LATE)
                .await
                .expect("offline")
                .seq,
        );
    }
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
}

pub async fn online_pages_are_ordered_by_id_with_the_total(h: Harness) {
    let ids: Vec<UserId> = (1..=40).map(|n| h.user(n)).collect();
    for &user in ids.iter().rev() {
        h.keepalive(user, h.session(user, 1)).await;
    }
    let before = Some(UserId(h.first_user));
    let page = h.engine.online_page(before, 15).await.unwrap();
    assert!(
        page.total >= 40,
        "total counts everyone online: {}",
        page.total
    );
    let got: Vec<UserId> = page.users.iter().map(|(id, _)| *id).collect();
    assert_eq!(got, ids[..15].to_vec());
    let next = h.engine.online_page(Some(ids[14]), 100).await.unwrap();
    let rest: Vec<UserId> = next
        .users
        .iter()
        .map(|(id, _)| *id)
        .take_while(|id| id.0 <= h.first_user + 40)
        .collect();
    assert_eq!(rest, ids[15..].to_vec());
    assert!(
        next.users
            .iter()
            .all(|(_, v)| v.status == PresenceStatus::Online)
    );
}

pub async fn changed_state_is_handed_to_the_persister_and_given_back_on_failure(h: Harness) {
    let user = h.user(1);
    let session = h.session(user, 1);
    let view = h.keepalive(user, session).await;
    let maintenance = h.engine.maintenance();
    let writes: Vec<_> = maintenance
        .take_dirty()
        .await
        .into_iter()
        .filter(|w| w.user_id == user)
        .collect();
    assert_eq!(writes.len(), 1);
    assert_eq!(writes[0].status, PresenceStatus::Online);
    assert_eq!(writes[0].seq, view.seq);
    assert_eq!(writes[0].sessions.len(), 1);
    assert_eq!(writes[0].sessions[0].id, session.id);
    assert!(
        maintenance
            .take_dirty()
            .await
            .iter()
            .all(|w| w.user_id != user),
        "taken once"
    );
    maintenance.mark_dirty(writes).await;
    let again = maintenance.take_dirty().await;
    assert!(
        again.iter().any(|w| w.user_id == user),
        "given back for the next flush"
    );
}

pub async fn restored_users_are_online_for_their_remaining_time_without_events(h: Harness) {
    let mut events = h.engine.subscribe();
    let user = h.user(1);
    let now: DateTime<Utc> = Utc::now();
    let activity = now - chrono::Duration::milliseconds(500);
    let restored = RestoredUser {
        user_id: user,
        seq: 42,
        last_seen: Some(activity),
        sessions: vec![StoredSession {
            id: h.session(user, 1).id,
            last_activity: activity,
            expires_at: activity + chrono::Duration::from_std(TIMEOUT).unwrap(),
            platform: Platform::Mobile,
        }],
        manual: ManualStatus::default(),
    };
    h.engine
        .maintenance()
        .restore(vec![restored])
        .await
        .unwrap();
    let found = h.engine.presence(&[user]).await.unwrap();
    let (_, view) = found.first().expect("restored");
    assert_eq!(view.status, PresenceStatus::Online);
    assert_eq!(view.seq, 42);
    let restored_at = Instant::now();
    let offline = event_of(&mut events, user, TIMEOUT + LATE)
        .await
        .expect("offline");
    assert_eq!(
        offline.status,
        PresenceStatus::Offline,
        "restoring announced nothing"
    );
    assert!(
        restored_at.elapsed() < TIMEOUT,
        "the remaining time, not a whole timeout"
    );
    assert_eq!(
        offline.last_seen.timestamp_micros(),
        activity.timestamp_micros()
    );
    assert!(offline.seq > 42);
}

/// The availability and platforms of `user` now.
async fn rich(h: &Harness, user: UserId) -> (Option<Availability>, Vec<Platform>) {
    let found = h.engine.presence(&[user]).await.unwrap();
    let (_, view) = found.first().expect("held");
    (view.availability, view.platforms.to_vec())
}

pub async fn availability_follows_real_activity_and_any_active_session_beats_idle(h: Harness) {
    let mut events = h.engine.subscribe();
    let user = h.user(1);
    let web = h.session(user, 1);
    let phone = h.device(user, 2, Platform::Mobile);
    let view = h.keepalive(user, web).await;
    assert_eq!(
        view.availability,
        Some(Availability::Active),
        "a new session starts active"
    );
    let online = event_of(&mut events, user, LATE).await.expect("online");
    assert_eq!(online.availability, Some(Availability::Active));
    assert_eq!(online.platforms.to_vec(), [Platform::Web]);

    let view = h.engine.touch(user, web, Activity::Idle).await.unwrap();
    assert_eq!(view.availability, Some(Availability::Idle));
    let idle = event_of(&mut events, user, LATE).await.expect("idle event");
    assert_eq!(idle.availability, Some(Availability::Idle));
    assert_eq!(idle.status, PresenceStatus::Online);
    assert!(idle.seq > online.seq, "every visible change gets a new seq");

    let view = h.keepalive(user, web).await;
    assert_eq!(
        view.availability,
        Some(Availability::Idle),
        "a plain heartbeat changes nothing"
    );
    silence_of(&mut events, user, Duration::from_millis(200)).await;

    h.engine.touch(user, phone, Activity::Active).await.unwrap();
    let both = event_of(&mut events, user, LATE)
        .await
        .expect("phone joins");
    assert_eq!(
        both.availability,
        Some(Availability::Active),
        "active on any device wins"
    );
    assert_eq!(both.platforms.to_vec(), [Platform::Mobile, Platform::Web]);
    assert_eq!(
        rich(&h, user).await,
        (
            Some(Availability::Active),
            vec![Platform::Mobile, Platform::Web]
        )
    );

    h.engine.touch(user, phone, Activity::Idle).await.unwrap();
    let idle = event_of(&mut events, user, LATE)
        .await
        .expect("idle on both");
    assert_eq!(idle.availability, Some(Availability::Idle));

    h.engine.end_session(user, phone.id).await.unwrap();
    let web_only = event_of(&mut events, user, LATE)
        .await
        .expect("phone leaves");
    assert_eq!(web_only.platforms.to_vec(), [Platform::Web]);
    assert_eq!(web_only.status, PresenceStatus::Online);
    h.engine.end_session(user, web.id).await.unwrap();
    let offline = event_of(&mut events, user, LATE).await.expect("offline");
    assert_eq!(
        (offline.availability, offline.platforms.to_vec()),
        (None, vec![])
    );
}

pub async fn a_session_without_real_activity_turns_idle_after_idle_after(h: Harness) {
    let mut events = h.engine.subscribe();
    let user = h.user(1);
    let session = h.session(user, 1);
    // Taken before the call: the session's last real activity is at or after this instant
    // (the online event may reach us later on a loaded machine).
    let opened = Instant::now();
    h.engine.open_socket(user, session).await.unwrap();
    let online = event_of(&mut events, user, LATE).await.expect("online");
    assert_eq!(online.availability, Some(Availability::Active));
    // Keep-alives (the seed's heartbeat timer) do not keep anyone active.
    while opened.elapsed() < IDLE_AFTER / 2 {
        h.keepalive(user, session).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let idle = event_of(&mut events, user, IDLE_AFTER + LATE)
        .await
        .expect("idle event");
    let waited = opened.elapsed();
    assert_eq!(idle.availability, Some(Availability::Idle));
    assert_eq!(idle.status, PresenceStatus::Online);
    assert!(
        waited >= IDLE_AFTER - Duration::from_millis(50),
        "not early: {waited:?}"
    );
    assert!(waited < IDLE_AFTER + LATE, "within a second: {waited:?}");

    h.engine
        .touch(user, session, Activity::Active)
        .await
        .unwrap();
    let back = event_of(&mut events, user, LATE)
        .await
        .expect("active again");
    assert_eq!(back.availability, Some(Availability::Active));
    h.engine
        .close_socket(user, session.id, GRACE)
        .await
        .unwrap();
}

pub async fn a_manual_status_applies_at_once_and_resets_itself_at_its_expiry(h: Harness) {
    let mut events = h.engine.subscribe();
    let user = h.user(1);
    let session = h.session(user, 1);
    h.engine.open_socket(user, session).await.unwrap();
    event_of(&mut events, user, LATE).await.expect("online");
    let expires_at = (Utc::now() + chrono::Duration::milliseconds(1500)).trunc_subsecs(3);
    let meeting = ManualStatus {
        mode: StatusMode::Dnd,
        text: Some("In a meeting".into()),
        emoji: Some("📅".into()),
        expires_at: Some(expires_at),
    };
    let view = h
        .engine
        .set_status(user, meeting.clone(), LastKnown::default())
        .await
        .unwrap();
    assert_eq!(
        (view.availability, &view.manual),
        (Some(Availability::Dnd), &meeting)
    );
    let dnd = event_of(&mut events, user, LATE).await.expect("dnd event");
    assert_eq!(dnd.availability, Some(Availability::Dnd));
    assert_eq!(dnd.manual, meeting);
    h.engine.maintenance().take_dirty().await;

    let reset = event_of(&mut events, user, Duration::from_millis(1500) + LATE * 2)
        .await
        .expect("reset event");
    let late = Utc::now() - expires_at;
    assert_eq!(reset.manual, ManualStatus::default());
    assert_eq!(reset.availability, Some(Availability::Active));
    assert!(
        late >= chrono::Duration::milliseconds(-50),
        "not early: {late}"
    );
    assert!(
        late < chrono::Duration::seconds(1),
        "within a second: {late}"
    );
    assert!(reset.seq > dnd.seq);
    // The event may arrive before the sweeping node has recorded what to write (and other
    // writes of the user, such as a socket's refresh, may come first).
    let deadline = Instant::now() + LATE;
    let expired = loop {
        let writes = h.engine.maintenance().take_dirty().await;
        let mine = writes.into_iter().filter(|w| w.user_id == user);
        if let Some(expired) = mine.filter_map(|w| w.expired_status).next() {
            break expired;
        }
        assert!(
            Instant::now() < deadline,
            "the reset is handed to the persister"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(expired, expires_at, "the store resets it too");
    h.engine
        .close_socket(user, session.id, GRACE)
        .await
        .unwrap();
}

pub async fn an_offline_user_keeps_last_seen_with_a_status_that_still_resets_on_time(h: Harness) {
    let mut events = h.engine.subscribe();
    let user = h.user(1);
    let last_seen = (Utc::now() - chrono::Duration::hours(3)).trunc_subsecs(6);
    let away = ManualStatus {
        mode: StatusMode::Away,
        text: Some("On holiday".into()),
        emoji: None,
        expires_at: Some((Utc::now() + chrono::Duration::milliseconds(800)).trunc_subsecs(3)),
    };
    let known = LastKnown {
        last_seen: Some(last_seen),
        seq: 5,
    };
    let view = h
        .engine
        .set_status(user, away.clone(), known)
        .await
        .unwrap();
    assert_eq!(view.status, PresenceStatus::Offline);
    assert_eq!(view.availability, None, "no availability while offline");
    assert_eq!((view.last_seen, &view.manual), (Some(last_seen), &away));
    assert!(view.seq > 5);
    let set = event_of(&mut events, user, LATE)
        .await
        .expect("status event");
    assert_eq!(set.manual, away);
    let reset = event_of(&mut events, user, LATE * 2)
        .await
        .expect("reset event");
    assert_eq!(reset.manual, ManualStatus::default());
    assert_eq!(
        (reset.status, reset.last_seen),
        (PresenceStatus::Offline, last_seen)
    );
}

pub async fn a_restored_status_resets_at_its_expiry_without_a_session(h: Harness) {
    let mut events = h.engine.subscribe();
    let user = h.user(1);
    let expires_at = (Utc::now() + chrono::Duration::milliseconds(700)).trunc_subsecs(3);
    let lunch = ManualStatus {
        mode: StatusMode::Away,
        text: Some("Lunch".into()),
        emoji: Some("🍜".into()),
        expires_at: Some(expires_at),
    };
    let restored = RestoredUser {
        user_id: user,
        seq: 9,
        last_seen: Some((Utc::now() - chrono::Duration::days(1)).trunc_subsecs(6)),
        sessions: vec![],
        manual: lunch.clone(),
    };
    h.engine
        .maintenance()
        .restore(vec![restored])
        .await
        .unwrap();
    let found = h.engine.presence(&[user]).await.unwrap();
    assert_eq!(found.first().map(|(_, v)| v.manual.clone()), Some(lunch));
    let reset = event_of(&mut events, user, LATE * 2)
        .await
        .expect("reset event");
    assert_eq!(
        reset.manual,
        ManualStatus::default(),
        "restoring announced nothing"
    );
    assert!(Utc::now() - expires_at < chrono::Duration::seconds(1));
}

pub async fn live_sessions_are_the_sessions_that_count_toward_online(h: Harness) {
    let user = h.user(1);
    let (web, phone) = (h.session(user, 1), h.device(user, 2, Platform::Mobile));
    h.engine.touch(user, web, Activity::Active).await.unwrap();
    h.engine.open_socket(user, phone).await.unwrap();
    let mut live = h.engine.live_sessions(user).await.unwrap();
    live.sort();
    assert_eq!(live, [web.id, phone.id]);
    h.engine.end_session(user, web.id).await.unwrap();
    assert_eq!(h.engine.live_sessions(user).await.unwrap(), [phone.id]);
    assert!(h.engine.live_sessions(h.user(2)).await.unwrap().is_empty());
    h.engine.end_session(user, phone.id).await.unwrap();
}
