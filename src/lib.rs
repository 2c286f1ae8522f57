//! lastseen: a WhatsApp-style online/offline presence server.
//!
//! - [`domain`]: validated newtypes (user id, username, password, presence status).
//! - [`engine`]: the presence engine: sharded in-memory state, deadline-driven offline
//!   detection, transition events with per-user sequence numbers; behind a backend trait.
//! - [`store`]: durable users, sessions and persisted presence, behind the [`store::Store`]
//!   trait (SQLite by default, or PostgreSQL).
//! - [`auth`]: Argon2id passwords, opaque bearer tokens, the in-memory session cache.
//! - [`persister`]: write-behind of presence into the store, in batches.
//! - [`privacy`]: contacts, blocks, visibility settings and invisible mode; the one rule that
//!   decides what a viewer may see of a user's presence, and the in-memory service every read
//!   and push path filters through.
//! - [`http`]: the JSON API (seed-compatible), errors, metrics, OpenAPI, the demo page.
//! - [`realtime`]: WebSocket and SSE push through a subscription-indexed fan-out hub.
//! - [`settings`], [`cli`], [`telemetry`], [`startup`], [`commands`]: configuration, the
//!   command line, logging, wiring of a server, and the one-shot subcommands.

pub mod auth;
pub mod cli;
pub mod commands;
pub mod domain;
pub mod engine;
pub mod http;
pub mod persister;
pub mod presence;
pub mod privacy;
pub mod realtime;
pub mod sessions;
pub mod settings;
mod shards;
pub mod startup;
pub mod store;
pub mod telemetry;
