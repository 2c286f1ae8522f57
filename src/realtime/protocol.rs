//! The push protocol's messages, shared by WebSocket and SSE: `type`-tagged JSON objects.
//!
//! See `docs/REALTIME.md` for the full protocol (close codes, limits, timing guarantees).

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::domain::{
    ActivityState, Availability, LastSeenApprox, Platform, Platforms, PresenceStatus, UserId,
    VisiblePresence,
};
use crate::presence::{UserPresence, rfc3339};

/// Close code: authentication missing, invalid, late, or the session was revoked (logout).
pub const CLOSE_UNAUTHORIZED: u16 = 4401;
/// Close code: the user already has the maximum number of open sockets.
pub const CLOSE_TOO_MANY_SOCKETS: u16 = 4429;
/// Close code: the client did not read fast enough (its send queue overflowed or a write
/// stalled); reconnect and resume with `since`.
pub const CLOSE_SLOW_CONSUMER: u16 = 4008;
/// Close code: the client stopped answering pings.
pub const CLOSE_PING_TIMEOUT: u16 = 4000;
/// Close code (standard): the server is shutting down.
pub const CLOSE_GOING_AWAY: u16 = 1001;
/// Close code (standard): the client broke the WebSocket protocol (an unmasked frame, a
/// reserved opcode or reserved bits, a malformed control frame).
pub const CLOSE_PROTOCOL_ERROR: u16 = 1002;
/// Close code (standard): the node is at `max_node_connections`; reconnect later (another
/// node may have room).
pub const CLOSE_TRY_AGAIN_LATER: u16 = 1013;
/// Close code (standard): a text frame that is not valid UTF-8.
pub const CLOSE_INVALID_DATA: u16 = 1007;
/// Close code (standard): a frame or message larger than `max_message_bytes`, also when only
/// its header announces it.
pub const CLOSE_TOO_BIG: u16 = 1009;

/// How long a typing indicator stays on unless it is refreshed, in milliseconds.
pub const TYPING_TTL_MS: u64 = 5000;

/// A message from the client.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientMessage {
    /// First message of a browser socket that could not send an `Authorization` header.
    Auth {
        /// The bearer token from login.
        token: String,
    },
    /// Start receiving presence of these users; answered by a `snapshot`.
    Subscribe {
        /// Users to watch.
        user_ids: Vec<i64>,
        /// Resume: the last `seq` the client knows per user; unchanged users are left out of
        /// the snapshot.
        #[serde(
            default,
            skip_serializing_if = "HashMap::is_empty",
            deserialize_with = "since_map"
        )]
        since: HashMap<i64, u64>,
    },
    /// Stop receiving presence of these users.
    Unsubscribe {
        /// Users to stop watching.
        user_ids: Vec<i64>,
    },
    /// The caller is typing to this user.
    Typing {
        /// Recipient's user id.
        to: i64,
    },
    /// The user is at the device (`active`) or away from it (`idle`), as the client's own
    /// input tracking tells.
    Activity {
        /// `active` or `idle`.
        state: ActivityState,
    },
}

/// Reads `since` as a JSON object whose keys are user ids (JSON keys are always strings).
fn since_map<'de, D: serde::Deserializer<'de>>(d: D) -> Result<HashMap<i64, u64>, D::Error> {
    let raw = HashMap::<String, u64>::deserialize(d)?;
    raw.into_iter()
        .map(|(key, seq)| {
            key.parse()
                .map(|id| (id, seq))
                .map_err(|_| serde::de::Error::custom(format!("since: {key:?} is not a user id")))
        })
        .collect()
}

/// One user in a snapshot: the HTTP `UserPresence` plus the `seq` to resume from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SnapshotEntry {
    /// The user's presence, as the HTTP API shows it to this viewer (hidden fields null).
    #[serde(flatten)]
    pub presence: UserPresence,
    /// Sequence number of the user's last transition; null where `last_seen` is hidden (it
    /// encodes the transition's time).
    pub seq: Option<u64>,
}

/// A presence change of a watched user, as this viewer may see it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PresenceUpdate {
    /// Whose presence changed.
    pub user_id: i64,
    /// Their username, as in the snapshot (null only if the connection never had it).
    #[serde(default)]
    pub username: Option<String>,
    /// The new status; null when the owner hides it from this viewer.
    pub online_status: Option<PresenceStatus>,
    /// Time of the last activity; null when hidden (or never active).
    #[serde(serialize_with = "rfc3339")]
    pub last_seen: Option<DateTime<Utc>>,
    /// Coarse last seen where the exact one is hidden (only with `last_seen_approx` enabled).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen_approx: Option<LastSeenApprox>,
    /// Per-user, strictly increasing; null where `last_seen` is hidden.
    pub seq: Option<u64>,
    /// `active`, `idle` or `dnd`; null when offline or hidden.
    #[serde(default)]
    pub availability: Option<Availability>,
    /// The custom status text; null when unset or hidden.
    #[serde(default)]
    pub status_text: Option<String>,
    /// The custom status emoji; null when unset or hidden.
    #[serde(default)]
    pub status_emoji: Option<String>,
    /// The sorted distinct platforms of the live sessions; null when hidden.
    #[serde(default)]
    pub platforms: Option<Vec<Platform>>,
}

impl PresenceUpdate {
    /// The update telling a viewer that `owner` (named `username`) now looks like `visible`.
    pub fn new(
        owner: UserId,
        username: Option<String>,
        visible: VisiblePresence,
        seq: Option<u64>,
    ) -> Self {
        Self {
            user_id: owner.0,
            username,
            online_status: visible.status,
            last_seen: visible.last_seen,
            last_seen_approx: visible.last_seen_approx,
            seq,
            availability: visible.availability,
            status_text: visible.status_text.as_deref().map(str::to_owned),
            status_emoji: visible.status_emoji.as_deref().map(str::to_owned),
            platforms: visible.platforms.map(Platforms::to_vec),
        }
    }
}

/// A message from the server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage {
    /// The socket is authenticated (by header or by `auth`): sent once, first.
    Ready {
        /// The authenticated user.
        user_id: i64,
        /// Their username.
        username: String,
    },
    /// Current presence of newly subscribed users.
    Snapshot {
        /// One entry per subscribed user (left out if unchanged since the client's `since`).
        users: Vec<SnapshotEntry>,
    },
    /// A watched user's presence changed.
    Presence(PresenceUpdate),
    /// A watched user is typing to the caller.
    Typing {
        /// The typing user.
        from: i64,
        /// Hide the indicator after this long unless another typing message arrives.
        expires_in_ms: u64,
    },
    /// A client message was rejected; the socket stays open.
    Error {
        /// What was wrong.
        detail: String,
        /// Machine-readable code (`parse_error`, `invalid`, `not_found`, `limit_exceeded`,
        /// `throttled`).
        code: String,
    },
}

impl ServerMessage {
    /// An error frame.
    pub fn error(code: &str, detail: impl Into<String>) -> Self {
        Self::Error {
            detail: detail.into(),
            code: code.to_owned(),
        }
    }

    /// The JSON text of this message.
    pub fn to_json(&self) -> String {
        // Serialising these plain structs cannot fail (no maps with non-string keys).
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// The client message types, each with an example of a valid message, for error frames.
const CLIENT_EXAMPLES: &[(&str, &str)] = &[
    ("auth", r#"{"type":"auth","token":"<token from login>"}"#),
    ("subscribe", r#"{"type":"subscribe","user_ids":[1,2]}"#),
    ("unsubscribe", r#"{"type":"unsubscribe","user_ids":[2]}"#),
    ("typing", r#"{"type":"typing","to":2}"#),
    (
        "activity",
        r#"{"type":"activity","state":"idle"} (or "active")"#,
    ),
];

/// What every client message looks like, for the errors that cannot tell which was meant.
pub const MESSAGE_SHAPE: &str =
    r#"Messages must be JSON objects like {"type":"subscribe","user_ids":[1,2]}."#;

/// A client message that could not be read; sent back as an error frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadMessage {
    /// `parse_error` (not a JSON object) or `invalid` (no or unknown `type`, bad fields).
    pub code: &'static str,
    /// What was wrong, with a valid example.
    pub detail: String,
}

impl BadMessage {
    fn new(code: &'static str, detail: impl Into<String>) -> Self {
        Self {
            code,
            detail: detail.into(),
        }
    }
}

impl From<BadMessage> for ServerMessage {
    fn from(bad: BadMessage) -> Self {
        Self::error(bad.code, bad.detail)
    }
}

/// Parses a client frame. Errors are worded by us (what was wrong and a valid example), never
/// by the JSON parser.
///
/// # Errors
/// A [`BadMessage`] with code `parse_error` (not a JSON object) or `invalid` (no or unknown
/// `type`, wrong or missing fields).
pub fn parse_client(text: &str) -> Result<ClientMessage, BadMessage> {
    let Ok(serde_json::Value::Object(object)) = serde_json::from_str(text) else {
        return Err(BadMessage::new("parse_error", MESSAGE_SHAPE));
    };
    let types = || {
        let names: Vec<&str> = CLIENT_EXAMPLES.iter().map(|(name, _)| *name).collect();
        names.join(", ")
    };
    let kind = match object.get("type") {
        Some(serde_json::Value::String(kind)) => kind.clone(),
        _ => {
            return Err(BadMessage::new(
                "invalid",
                format!("{} The \"type\" is one of: {}.", MESSAGE_SHAPE, types()),
            ));
        }
    };
    let Some((_, example)) = CLIENT_EXAMPLES.iter().find(|(name, _)| *name == kind) else {
        return Err(BadMessage::new(
            "invalid",
            format!("Unknown message type {kind:?}; the types are: {}.", types()),
        ));
    };
    serde_json::from_value(serde_json::Value::Object(object)).map_err(|_| {
        BadMessage::new(
            "invalid",
            format!("Bad {kind} message; it looks like {example}."),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn round_trip_client(message: ClientMessage) {
        let text = serde_json::to_string(&message).unwrap();
        assert_eq!(parse_client(&text).unwrap(), message, "{text}");
    }

    #[test]
    fn every_client_message_round_trips() {
        round_trip_client(ClientMessage::Auth { token: "t".into() });
        round_trip_client(ClientMessage::Subscribe {
            user_ids: vec![1, 2],
            since: HashMap::from([(1, 7)]),
        });
        round_trip_client(ClientMessage::Unsubscribe { user_ids: vec![2] });
        round_trip_client(ClientMessage::Typing { to: 3 });
        round_trip_client(ClientMessage::Activity {
            state: ActivityState::Idle,
        });
    }

    #[test]
    fn since_keys_are_json_strings() {
        let parsed = parse_client(r#"{"type":"subscribe","user_ids":[1],"since":{"1":42}}"#);
        assert_eq!(
            parsed.unwrap(),
            ClientMessage::Subscribe {
                user_ids: vec![1],
                since: HashMap::from([(1, 42)])
            }
        );
    }

    #[test]
    fn every_server_message_round_trips() {
        let at = DateTime::parse_from_rfc3339("2024-01-15T10:30:00Z")
            .unwrap()
            .to_utc();
        let messages = [
            ServerMessage::Snapshot {
                users: vec![SnapshotEntry {
                    presence: UserPresence {
                        id: 1,
                        username: "ahmad".into(),
                        online_status: Some(PresenceStatus::Online),
                        last_seen: Some(at),
                        is_online: Some(true),
                        last_seen_approx: None,
                        availability: Some(Availability::Dnd),
                        status_text: Some("In a meeting".into()),
                        status_emoji: Some("📅".into()),
                        platforms: Some(vec![Platform::Mobile, Platform::Web]),
                    },
                    seq: Some(9),
                }],
            },
            ServerMessage::Ready {
                user_id: 1,
                username: "ahmad".into(),
            },
            ServerMessage::Presence(PresenceUpdate {
                user_id: 1,
                username: Some("ahmad".into()),
                online_status: Some(PresenceStatus::Offline),
                last_seen: Some(at),
                last_seen_approx: None,
                seq: Some(10),
                availability: None,
                status_text: None,
                status_emoji: None,
                platforms: Some(vec![]),
            }),
            ServerMessage::Presence(PresenceUpdate {
                user_id: 1,
                username: Some("ahmad".into()),
                online_status: None,
                last_seen: None,
                last_seen_approx: Some(LastSeenApprox::Recently),
                seq: None,
                availability: None,
                status_text: None,
                status_emoji: None,
                platforms: None,
            }),
            ServerMessage::Typing {
                from: 2,
                expires_in_ms: TYPING_TTL_MS,
            },
            ServerMessage::error("invalid", "bad"),
        ];
        for message in messages {
            let text = message.to_json();
            let back: ServerMessage = serde_json::from_str(&text).unwrap();
            assert_eq!(back, message, "{text}");
        }
    }

    #[test]
    fn presence_and_snapshot_have_the_documented_shape() {
        let update = ServerMessage::Presence(PresenceUpdate {
            user_id: 5,
            username: Some("bob".into()),
            online_status: Some(PresenceStatus::Online),
            last_seen: None,
            last_seen_approx: None,
            seq: Some(3),
            availability: Some(Availability::Idle),
            status_text: None,
            status_emoji: Some("🌴".into()),
            platforms: Some(vec![Platform::Desktop]),
        });
        assert_eq!(
            serde_json::to_value(&update).unwrap(),
            json!({
                "type": "presence", "user_id": 5, "username": "bob", "online_status": "online",
                "last_seen": null,
                "seq": 3, "availability": "idle", "status_text": null, "status_emoji": "🌴",
                "platforms": ["desktop"]
            })
        );
    }

    #[test]
    fn bad_messages_become_error_frames() {
        for (text, code) in [
            (
                r#"{"type":"subscribe","user_ids":[1],"since":{"x":1}}"#,
                "invalid",
            ),
            ("{not json", "parse_error"),
            ("", "parse_error"),
            (r#"{"type":"dance"}"#, "invalid"),
            (r#"{"type":"subscribe","user_ids":"1"}"#, "invalid"),
            (r#"{"type":"typing"}"#, "invalid"),
            (r#"{"type":"typing","to":1,"extra":true}"#, "invalid"),
            (r#"{"type":"activity","state":"asleep"}"#, "invalid"),
            (r#"{"type":"activity"}"#, "invalid"),
            (r#"{"user_ids":[1]}"#, "invalid"),
            ("[1,2]", "parse_error"),
        ] {
            match parse_client(text) {
                Err(BadMessage { code: got, .. }) => assert_eq!(got, code, "{text}"),
                other => panic!("{text}: expected an error frame, got {other:?}"),
            }
        }
    }

    #[test]
    fn error_frames_are_in_our_words_with_a_valid_example() {
        let detail = |text: &str| match parse_client(text) {
            Err(BadMessage { detail, .. }) => detail,
            other => panic!("{text}: expected an error frame, got {other:?}"),
        };
        assert_eq!(detail("{not json"), MESSAGE_SHAPE);
        assert_eq!(detail("hello"), MESSAGE_SHAPE);
        assert_eq!(
            detail(r#"{"type":"dance"}"#),
            "Unknown message type \"dance\"; the types are: auth, subscribe, unsubscribe, \
             typing, activity."
        );
        assert_eq!(
            detail(r#"{"type":"subscribe","user_ids":"1"}"#),
            r#"Bad subscribe message; it looks like {"type":"subscribe","user_ids":[1,2]}."#
        );
        assert!(detail(r#"{"user_ids":[1]}"#).contains(r#"The "type" is one of"#));
        for text in ["{not json", r#"{"type":"typing"}"#, r#"{"type":7}"#] {
            let detail = detail(text);
            for serde_words in ["line 1", "column", "expected", "missing field", "variant"] {
                assert!(!detail.contains(serde_words), "{text}: {detail}");
            }
        }
    }
}
