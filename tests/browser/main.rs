//! Browser tests: the demo page and the admin dashboard in headless Chromium, driven over the
//! WebDriver protocol through chromedriver, against the real server on port 0.
//!
//! Needs `/usr/bin/chromium` and `/usr/bin/chromedriver` (installed by `scripts/test`). Without
//! them each test is skipped with a notice (see [`harness::browser_available`]), unless
//! `LASTSEEN_REQUIRE_SERVICES=1`.

mod dashboard;
mod demo;
pub mod harness;
