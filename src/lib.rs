//! lastseen: a WhatsApp-style online/offline presence server.
//!
//! The modules form layers that import downward only (docs/ARCHITECTURE.md has the picture):
//!
//! - [`domain`]: validated newtypes, presence and privacy values, and the pure visibility rule.
//! - `shards`: the sharded-lock helper the in-memory parts share. [`heap`]: the allocator's
//!   settings and giving free memory back.
//! - [`engine`]: the presence engine: sharded in-memory state, deadline-driven offline
//!   detection, transition events with per-user sequence numbers; behind a backend trait.
//! - [`store`]: durable users, sessions, persisted presence and privacy data, behind the
//!   [`store::Store`] trait (SQLite by default, or PostgreSQL).
//! - `auth` (Argon2id passwords, opaque tokens, the session cache, revocations), `privacy`
//!   (the privacy cache and its write path), `presence` (reading current presence, and its
//!   JSON shape), `sessions` (logging in and ending sessions), `persister` (write-behind of
//!   presence), `integrations` (the event log and webhooks), `history` (the online count per minute for
//!   the dashboard's chart): the services, one use case each.
//! - `realtime`: WebSocket and SSE push through a subscription-indexed fan-out hub.
//! - `http`: the JSON API (seed-compatible), errors, metrics, OpenAPI, the demo page, and
//!   the socket and stream upgrades.
//! - `throttle`: fixed-window counters (sharded in memory, or in Redis) behind the login,
//!   registration and connection throttles.
//! - `accept`: the accept loop: the node-wide connection cap, header-read and idle timeouts.
//! - [`startup`] wires a server; [`commands`] are the one-shot subcommands; [`settings`],
//!   [`cli`] and [`telemetry`] are configuration, the command line and observability.
//!
//! Only what the binary, the tests and the benchmarks use is public.

mod accept;
mod auth;
mod bus;
pub mod cli;
mod cluster;
pub mod commands;
pub mod domain;
pub mod engine;
pub mod heap;
mod history;
mod http;
mod integrations;
mod packed;
mod persister;
mod presence;
mod privacy;
mod realtime;
mod sessions;
pub mod settings;
mod shards;
pub mod startup;
pub mod store;
pub mod telemetry;
mod throttle;
