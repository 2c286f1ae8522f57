//! API tests: the real server on port 0 with its own SQLite file, driven over HTTP.

mod accounts;
mod admin;
mod capacity;
mod connections;
mod cookies;
mod dashboard;
mod errors;
mod faults;
mod helpers;
mod integrations;
mod jwt;
mod ops;
mod persistence;
mod presence;
mod privacy;
mod privacy_push;
mod realtime;
mod rich;
mod throttling;
mod ws_protocol;
