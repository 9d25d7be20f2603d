//! `faultline selftest`: proves, on a real cluster with the real workload,
//! that the oracle catches bugs and names them right, and that it stays
//! silent on a correct run under faults.
//!
//! A mutating proxy (`proxy`) sits in front of every S3 endpoint. Phase 1
//! arms one mutation at a time; the proxy injects it where it is surely a
//! violation and records the key and instant; the online check must then
//! report that class on that key. Detection time runs from injection to
//! the finding coming out of the online check. An injection the workload
//! never got to observe (the key rewritten before any read) is retried, a
//! few times at most. Phase 2 passes everything through while the fault
//! plan runs: every finding then, outside the profile's known deviations
//! and the keys phase 1 damaged, fails the self-test.

pub mod proxy;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::online::Status;
use crate::oracle::Class;
use proxy::{Mutation, Mutator, Proxy};

/// How long one injection may take to be caught.
const DETECTION_WINDOW: Duration = Duration::from_secs(30);
/// How long the proxy may wait for a place to inject.
const OPPORTUNITY_WINDOW: Duration = Duration::from_secs(30);
/// Injections per mutation at most, when the workload misses one.
const ATTEMPTS_MAX: u32 = 3;

/// What phase 1 found for one mutation.
#[derive(Debug, Clone, Serialize)]
pub struct Caught {
    pub mutation: Mutation,
    pub expected: Class,
    /// Named as expected, on the injected key.
    pub caught: bool,
    pub attempts: u32,
    pub key: Option<String>,
    /// From the injection to the finding.
    pub detection_ms: Option<u64>,
    /// Every class reported on the injected key after the injection.
    pub named: Vec<Class>,
    /// Findings of the expected class a tolerance absorbed: they would
    /// not fail a run, so they do not count as caught.
    pub absorbed: u32,
    pub detail: String,
}

impl Caught {
    /// A mutation that was never caught, and why.
    pub fn missed(mutation: Mutation, why: &str) -> Caught {
        Caught {
            mutation,
            expected: mutation.expected(),
            caught: false,
            attempts: 0,
            key: None,
            detection_ms: None,
            named: Vec::new(),
            absorbed: 0,
            detail: why.to_string(),
        }
    }
}

/// The proxies of a self-test run and what phase 1 touched.
pub struct Selftest {
    mutator: Mutator,
    proxies: Vec<Proxy>,
    damaged: std::sync::Mutex<BTreeSet<String>>,
}

impl Selftest {
    /// Starts one proxy in front of each endpoint.
    pub async fn start(endpoints: &[String], bucket: &str) -> std::io::Result<Selftest> {
        let mutator = Mutator::default();
        let mut proxies = Vec::new();
        for ep in endpoints {
            proxies.push(Proxy::start(ep, bucket, mutator.clone()).await?);
        }
        Ok(Selftest {
            mutator,
            proxies,
            damaged: std::sync::Mutex::new(BTreeSet::new()),
        })
    }

    /// Arms one bug by hand (`gate --inject`).
    pub fn arm(&self, m: Mutation) {
        self.mutator.arm(m);
    }

    /// Where the workload sends its requests: the proxies.
    pub fn endpoints(&self) -> Vec<String> {
        self.proxies.iter().map(|p| p.url.clone()).collect()
    }

    /// A node endpoint moved (a dead node replaced): follow it.
    pub fn retarget(&self, old: &str, new: &str) {
        for p in &self.proxies {
            p.retarget(old, new);
        }
    }

    /// Keys phase 1 injected into: their later findings are phase 1's.
    pub fn damaged(&self) -> BTreeSet<String> {
        self.damaged.lock().map(|d| d.clone()).unwrap_or_default()
    }

    /// Phase 1: every mutation in turn, until caught or out of attempts.
    pub async fn inject_all(&self, status: &Status) -> Vec<Caught> {
        let mut results = Vec::new();
        for m in Mutation::ALL {
            let mut result = Caught::missed(m, "");
            while !result.caught && result.attempts < ATTEMPTS_MAX {
                result.attempts += 1;
                self.attempt(m, status, &mut result).await;
            }
            crate::console::say(&format!(
                "faultline: selftest {:<20} {}",
                m.as_str(),
                if result.caught {
                    format!(
                        "caught as {} in {} ms (attempt {})",
                        m.expected().as_str(),
                        result.detection_ms.unwrap_or_default(),
                        result.attempts
                    )
                } else {
                    format!("NOT CAUGHT: {}", result.detail)
                }
            ));
            results.push(result);
        }
        results
    }

    async fn attempt(&self, m: Mutation, status: &Status, result: &mut Caught) {
        let injected_before = self.mutator.injections_since(0).len();
        let (_, mut seq) = status.findings_since(u64::MAX);
        self.mutator.arm(m);
        let deadline = Instant::now() + OPPORTUNITY_WINDOW;
        let injection = loop {
            if let Some(i) = self.mutator.injections_since(injected_before).pop() {
                break i;
            }
            if Instant::now() >= deadline {
                self.mutator.disarm();
                result.detail = format!(
                    "no place to inject within {} s",
                    OPPORTUNITY_WINDOW.as_secs()
                );
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        self.mutator.disarm();
        if let Ok(mut d) = self.damaged.lock() {
            d.insert(injection.key.clone());
        }
        result.key = Some(injection.key.clone());
        result.detail = injection.detail.clone();
        let deadline = injection.at + DETECTION_WINDOW;
        while Instant::now() < deadline {
            let (found, next) = status.findings_since(seq);
            seq = next;
            for (at, f, known) in found {
                if f.key.as_deref() != Some(injection.key.as_str()) || at < injection.at {
                    continue;
                }
                if !result.named.contains(&f.class) {
                    result.named.push(f.class);
                }
                // A finding a tolerance absorbed would not fail a run:
                // the bug is caught only by one that does.
                if known {
                    result.absorbed += u32::from(f.class == m.expected());
                    continue;
                }
                if f.class == m.expected() && !result.caught {
                    result.caught = true;
                    result.detection_ms = Some(at.duration_since(injection.at).as_millis() as u64);
                }
            }
            if result.caught {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if result.absorbed > 0 {
            result.detail = format!(
                "{}; named {} on {} {} times, every one absorbed by a tolerance of the profile: a run with this bug would pass",
                injection.detail,
                m.expected().as_str(),
                injection.key,
                result.absorbed
            );
        } else if result.named.is_empty() {
            result.detail = format!(
                "{}; nothing reported on {} within {} s",
                injection.detail,
                injection.key,
                DETECTION_WINDOW.as_secs()
            );
        }
    }
}

/// The percentile `p` (0 to 100) of some durations in milliseconds.
pub fn percentile(values: &[u64], p: f64) -> Option<u64> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_unstable();
    let rank = ((p / 100.0) * (v.len() - 1) as f64).round() as usize;
    Some(v[rank.min(v.len() - 1)])
}

#[cfg(test)]
mod tests {
    #[test]
    fn percentiles_pick_ranks() {
        assert_eq!(super::percentile(&[], 50.0), None);
        assert_eq!(super::percentile(&[5, 1, 3], 50.0), Some(3));
        assert_eq!(super::percentile(&[5, 1, 3], 100.0), Some(5));
        assert_eq!(super::percentile(&[5, 1, 3], 0.0), Some(1));
    }
}
