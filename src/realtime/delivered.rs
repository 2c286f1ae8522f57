//! What one connection has sent: turns the hub's filtered values into wire messages, in order,
//! without repeats and without going back in time.

use std::collections::HashMap;

use super::outbox::{Outgoing, Seen};
use super::protocol::{PresenceUpdate, ServerMessage, SnapshotEntry};
use crate::domain::{UserId, VisiblePresence};
use crate::presence::UserPresence;

/// Per-connection delivery state: what was last sent about each watched user. It turns the
/// hub's filtered values into wire messages and enforces two rules: nothing older than what the
/// client already has is sent (e.g. an update queued before a snapshot), and nothing that looks
/// the same to this viewer is sent again, so the timing of a hidden transition (an invisible
/// user going online, say) does not leak. `seq` reaches the client only where `last_seen` does,
/// since it encodes the transition's time.
#[derive(Debug, Default)]
pub struct Delivered {
    last: HashMap<UserId, (u64, VisiblePresence)>,
    /// Usernames of the watched users, from their subscription: events carry them without a
    /// read per event, on whichever node the event came from.
    names: HashMap<UserId, String>,
    high_water: u64,
}

impl Delivered {
    /// The wire form of a drained item, or `None` if it must not be sent.
    pub fn admit(&mut self, item: Outgoing) -> Option<ServerMessage> {
        match item {
            Outgoing::Message(message) => Some(message),
            Outgoing::Presence(seen) => {
                if !self.record(&seen) {
                    return None;
                }
                let seq = self.expose(&seen);
                let name = self.names.get(&seen.owner).cloned();
                let update = PresenceUpdate::new(seen.owner, name, seen.visible, seq);
                Some(ServerMessage::Presence(update))
            }
            Outgoing::Names(names) => {
                self.names.extend(names);
                None
            }
            Outgoing::Snapshot(entries) => {
                let users = entries
                    .into_iter()
                    .map(|(seen, username)| {
                        // An event newer than the snapshot's read may already have been sent:
                        // then the snapshot repeats that, never older state.
                        let seen = self.newest(seen);
                        SnapshotEntry {
                            seq: self.expose(&seen),
                            presence: UserPresence::visible(seen.owner, username, seen.visible),
                        }
                    })
                    .collect();
                Some(ServerMessage::Snapshot { users })
            }
        }
    }

    /// Records `seen`; `false` if it is older than, or looks the same as, what was sent.
    fn record(&mut self, seen: &Seen) -> bool {
        match self.last.get_mut(&seen.owner) {
            Some((seq, visible)) => {
                if seen.seq < *seq || seen.visible == *visible {
                    *seq = (*seq).max(seen.seq);
                    return false;
                }
                *seq = seen.seq;
                *visible = seen.visible.clone();
                true
            }
            None => {
                self.last
                    .insert(seen.owner, (seen.seq, seen.visible.clone()));
                true
            }
        }
    }

    /// `seen`, or what was already sent about its owner if that is newer; recorded either way.
    fn newest(&mut self, seen: Seen) -> Seen {
        match self.last.get(&seen.owner) {
            Some((seq, visible)) if *seq > seen.seq => Seen {
                visible: visible.clone(),
                seq: *seq,
                ..seen
            },
            _ => {
                self.record(&seen);
                seen
            }
        }
    }

    /// Forgets what was sent about users no longer watched.
    pub fn forget(&mut self, users: &[UserId]) {
        for user in users {
            self.last.remove(user);
        }
    }

    fn expose(&mut self, seen: &Seen) -> Option<u64> {
        let exposed = seen.seq_visible.then_some(seen.seq);
        self.high_water = self.high_water.max(exposed.unwrap_or(0));
        exposed
    }

    /// Highest `seq` sent to the client so far (the SSE event id).
    pub fn high_water(&self) -> u64 {
        self.high_water
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::PresenceStatus;

    fn seen(owner: i64, status: PresenceStatus, seq: u64) -> Seen {
        Seen {
            owner: UserId(owner),
            visible: VisiblePresence {
                status: Some(status),
                last_seen: None,
                last_seen_approx: None,
                availability: None,
                platforms: None,
                status_text: None,
                status_emoji: None,
            },
            seq,
            seq_visible: true,
        }
    }

    fn status_of(message: &ServerMessage) -> Option<PresenceStatus> {
        match message {
            ServerMessage::Presence(update) => update.online_status,
            ServerMessage::Snapshot { users } => users[0].presence.online_status,
            _ => None,
        }
    }

    #[test]
    fn older_and_unchanged_updates_are_not_sent() {
        let mut delivered = Delivered::default();
        let online = Outgoing::Presence(seen(1, PresenceStatus::Online, 5));
        assert!(delivered.admit(online).is_some());
        let older = Outgoing::Presence(seen(1, PresenceStatus::Offline, 4));
        assert!(delivered.admit(older).is_none(), "older than what was sent");
        let same = Outgoing::Presence(seen(1, PresenceStatus::Online, 6));
        assert!(
            delivered.admit(same).is_none(),
            "looks the same to the viewer"
        );
        let offline = Outgoing::Presence(seen(1, PresenceStatus::Offline, 7));
        assert!(delivered.admit(offline).is_some());
        assert_eq!(delivered.high_water(), 7);
    }

    #[test]
    fn a_snapshot_never_goes_back_behind_an_event_already_sent() {
        let mut delivered = Delivered::default();
        let newer = Outgoing::Presence(seen(1, PresenceStatus::Offline, 9));
        delivered.admit(newer);
        let stale = Outgoing::Snapshot(vec![(seen(1, PresenceStatus::Online, 8), "a".into())]);
        let sent = delivered.admit(stale).unwrap();
        assert_eq!(status_of(&sent), Some(PresenceStatus::Offline));
    }
}
