//! Reads counters from the server's Prometheus `/metrics` text.

use anyhow::ensure;

use crate::client::{Conn, render};
use crate::target::Target;

/// A snapshot of the `/metrics` text.
pub struct Metrics(String);

impl Metrics {
    /// Fetches `/metrics`.
    ///
    /// # Errors
    /// I/O failures or a non-200 answer.
    pub async fn fetch(target: &Target) -> anyhow::Result<Self> {
        let mut conn = Conn::connect(target.addr).await?;
        let response = conn
            .send(&render("GET", &target.host, "/metrics", &[], b""))
            .await?;
        ensure!(
            response.status == 200,
            "/metrics answered {}",
            response.status
        );
        Ok(Self(String::from_utf8_lossy(response.body).into_owned()))
    }

    /// The sum of every series of `name` (all label sets); `None` if it has no series yet.
    pub fn sum(&self, name: &str) -> Option<f64> {
        let mut total = None;
        for line in self.0.lines() {
            let Some(rest) = line.strip_prefix(name) else {
                continue;
            };
            // `name 12` or `name{labels} 12`, but not `name_suffix 12`.
            if !(rest.starts_with(' ') || rest.starts_with('{')) {
                continue;
            }
            if let Some(value) = rest.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) {
                *total.get_or_insert(0.0) += value;
            }
        }
        total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_of_one_name_are_summed_and_prefixes_do_not_match() {
        let text = "# TYPE a_total counter\na_total{to=\"online\"} 3\na_total{to=\"offline\"} 4\n\
                    a_total_other 100\nb 1.5\n";
        let metrics = Metrics(text.to_owned());
        assert_eq!(metrics.sum("a_total"), Some(7.0));
        assert_eq!(metrics.sum("b"), Some(1.5));
        assert_eq!(metrics.sum("c"), None);
    }
}
