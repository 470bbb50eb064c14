//! Where the bytes a mount served came from, as `modelfs status` shows it: a snapshot of the
//! daemon's counters that the daemon writes beside its mount record every few seconds
//! (doc/OPERATIONS.md, "Status"), so that a command that only reads the store can tell what
//! the live mount did without a metrics endpoint.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use serde::{Deserialize, Serialize};

use super::Metrics;

/// Counters of one daemon since it started.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Traffic {
    /// Bytes answered to reads whose chunks were stored (here or in a read-only store) when
    /// the read looked.
    pub read_from_store: u64,
    /// Of `read_from_store`'s chunks, bytes read from read-only stores (`--store-ro`).
    #[serde(default)]
    pub read_from_store_ro: u64,
    /// Bytes answered to reads that waited for a fetch (from the tier or the Hub).
    pub read_from_network: u64,
    /// Bytes of chunks fetched from the shared tier, checked.
    pub fetched_from_tier: u64,
    /// Bytes of chunks fetched from the Hub.
    pub fetched_from_hub: u64,
    /// Bytes of chunks written to the tier.
    pub stored_to_tier: u64,
    /// Tier requests that failed, by kind (`unavailable`, `timeout`, `corrupt`); kinds with
    /// none are left out.
    pub tier_errors: BTreeMap<String, u64>,
    pub tier_requests: u64,
    /// Mean time of a tier request, in microseconds.
    pub tier_mean_us: u64,
}

impl Metrics {
    /// The counters as they are now.
    pub fn traffic(&self) -> Traffic {
        let requests = self.tier_requests.load(Ordering::Relaxed);
        let micros = self.tier_micros.load(Ordering::Relaxed);
        let tier_errors = crate::tier::TIER_ERROR_KINDS
            .iter()
            .map(|kind| (kind.to_string(), self.tier_errors.get_or_create(&[("kind", kind)]).get()))
            .filter(|(_, n)| *n > 0)
            .collect();
        Traffic {
            read_from_store: self.read_store.get(),
            read_from_store_ro: self.store_ro_read_bytes.get(),
            read_from_network: self.read_network.get(),
            fetched_from_tier: self.tier_fetched_bytes.get(),
            fetched_from_hub: self.fetched_bytes.get(),
            stored_to_tier: self.tier_stored_bytes.get(),
            tier_errors,
            tier_requests: requests,
            tier_mean_us: micros.checked_div(requests).unwrap_or(0),
        }
    }
}

impl Traffic {
    /// The lines `modelfs status` prints under a mount, `human` formatting byte counts.
    pub fn lines(&self, human: impl Fn(u64) -> String) -> Vec<String> {
        let ro = match self.read_from_store_ro {
            0 => String::new(),
            n => format!(" ({} of it from read-only stores)", human(n)),
        };
        let mut out = vec![format!(
            "served {} from the store{ro}, {} fetched (tier {}, Hub {})",
            human(self.read_from_store),
            human(self.read_from_network),
            human(self.fetched_from_tier),
            human(self.fetched_from_hub),
        )];
        if self.tier_requests > 0 {
            let errors = if self.tier_errors.is_empty() {
                "no errors".to_string()
            } else {
                let kinds: Vec<String> =
                    self.tier_errors.iter().map(|(k, n)| format!("{n} {k}")).collect();
                format!("errors: {}", kinds.join(", "))
            };
            out.push(format!(
                "tier: {} requests, {:.1} ms each on average, {} written, {errors}",
                self.tier_requests,
                self.tier_mean_us as f64 / 1e3,
                human(self.stored_to_tier),
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines_say_where_bytes_came_from() {
        let t = Traffic {
            read_from_store: 10,
            read_from_store_ro: 4,
            read_from_network: 20,
            fetched_from_tier: 15,
            fetched_from_hub: 5,
            stored_to_tier: 5,
            tier_errors: [("timeout".to_string(), 2)].into_iter().collect(),
            tier_requests: 7,
            tier_mean_us: 12_300,
        };
        let lines = t.lines(|n| format!("{n} B"));
        assert_eq!(
            lines,
            [
                "served 10 B from the store (4 B of it from read-only stores), 20 B fetched \
                 (tier 15 B, Hub 5 B)",
                "tier: 7 requests, 12.3 ms each on average, 5 B written, errors: 2 timeout",
            ]
        );
        let quiet = Traffic::default().lines(|n| n.to_string());
        assert_eq!(quiet.len(), 1, "no tier line without a tier");
    }
}
