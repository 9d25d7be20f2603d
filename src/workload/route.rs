//! Routing around an endpoint that does not answer.
//!
//! A stopped node accepts connections (the kernel does) and answers
//! nothing, so each request sent to it holds its worker for the
//! first-byte deadline. With a third of the choices landing there, every
//! worker soon waits on it and the rest of the cluster, the part that must
//! keep serving during the fault, goes nearly unexercised (a 75 s
//! stop-start ran at 4-25 ops/s). So an endpoint whose request timed out,
//! was refused or broke off is marked down: requests planned for it go to
//! the next endpoint that is not, and one request at a time, every
//! `PROBE_EVERY_MS`, still goes to it to see it come back. Any HTTP answer
//! marks it up again. The planned endpoint still comes from the seed; where
//! a request actually went is recorded with it.

use std::sync::atomic::{AtomicU64, Ordering};

/// How long a down endpoint gets no request before one probes it.
pub const PROBE_EVERY_MS: u64 = 2_000;

/// Per endpoint: 0 when up, else the time (ms on the workload's clock,
/// plus one so it is never 0) when it may next be probed.
#[derive(Debug)]
pub struct EndpointHealth {
    down: Vec<AtomicU64>,
    /// How long a probe holds the endpoint before another may go: the
    /// request's own total deadline.
    probe_hold_ms: u64,
}

impl EndpointHealth {
    pub fn new(endpoints: usize, probe_hold_ms: u64) -> EndpointHealth {
        EndpointHealth {
            down: (0..endpoints).map(|_| AtomicU64::new(0)).collect(),
            probe_hold_ms,
        }
    }

    /// Where a request planned for `planned` goes at `now_ms`.
    pub fn route(&self, planned: usize, now_ms: u64) -> usize {
        let n = self.down.len();
        let Some(slot) = self.down.get(planned) else {
            return planned;
        };
        let next_probe = slot.load(Ordering::Relaxed);
        if next_probe == 0 {
            return planned;
        }
        // Due for a probe: the request that claims it goes as planned.
        if now_ms + 1 >= next_probe
            && slot
                .compare_exchange(
                    next_probe,
                    now_ms + 1 + self.probe_hold_ms,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
        {
            return planned;
        }
        (1..n)
            .map(|i| (planned + i) % n)
            .find(|&ep| self.down[ep].load(Ordering::Relaxed) == 0)
            // Every endpoint down: nothing better to do than the plan.
            .unwrap_or(planned)
    }

    /// A request to `ep` got an HTTP answer.
    pub fn answered(&self, ep: usize) {
        if let Some(slot) = self.down.get(ep) {
            slot.store(0, Ordering::Relaxed);
        }
    }

    /// A request to `ep` timed out, was refused or broke off at `now_ms`.
    pub fn unanswered(&self, ep: usize, now_ms: u64) {
        if let Some(slot) = self.down.get(ep) {
            slot.store(now_ms + 1 + PROBE_EVERY_MS, Ordering::Relaxed);
        }
    }

    /// Endpoints marked down now.
    #[cfg(test)]
    fn down(&self) -> usize {
        self.down
            .iter()
            .filter(|d| d.load(Ordering::Relaxed) != 0)
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_silent_endpoint_is_routed_around_and_probed_one_request_at_a_time() {
        let h = EndpointHealth::new(3, 30_000);
        assert_eq!(h.route(1, 0), 1);
        h.unanswered(1, 1_000);
        assert_eq!(h.down(), 1);
        // Requests planned for it go to the next endpoint up.
        assert_eq!(h.route(1, 1_500), 2);
        assert_eq!(h.route(0, 1_500), 0);
        // Once due, one request probes it; the others still go around it
        // while that probe is out.
        assert_eq!(h.route(1, 1_000 + PROBE_EVERY_MS), 1);
        assert_eq!(h.route(1, 1_000 + PROBE_EVERY_MS), 2);
        assert_eq!(h.route(1, 20_000), 2);
        // The probe timed out: down again, probed again later.
        h.unanswered(1, 31_000);
        assert_eq!(h.route(1, 32_000), 2);
        assert_eq!(h.route(1, 31_000 + PROBE_EVERY_MS), 1);
        // It answered: up for everyone.
        h.answered(1);
        assert_eq!(h.down(), 0);
        assert_eq!(h.route(1, 40_000), 1);
    }

    #[test]
    fn the_next_endpoint_up_wraps_around_and_all_down_keeps_the_plan() {
        let h = EndpointHealth::new(3, 30_000);
        h.unanswered(2, 0);
        assert_eq!(h.route(2, 10), 0);
        h.unanswered(0, 0);
        assert_eq!(h.route(2, 10), 1);
        h.unanswered(1, 0);
        assert_eq!(h.route(2, 10), 2);
        assert_eq!(h.route(0, 10), 0);
    }
}
