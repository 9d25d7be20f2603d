//! The online check: a thread that takes each operation the ledger commits
//! (through the writer's tap, in ledger order), feeds it to the oracle, and
//! writes every finding back to the ledger at once, with the fault that was
//! active and the witness. A shared `Status` lets the run stop on the first
//! violation and shows findings in the progress view.
//!
//! The profile's tolerances are applied here, once, as each finding comes
//! out (`Judged::take`): a finding a rule absorbs is a known deviation,
//! counted per rule with the longest time after its deciding write that
//! the rule absorbed one; any other finding fails the run.
//!
//! The offline check (`faultline verify`) runs the same oracle over the
//! same ledger order and judges its findings the same way, so both find
//! the same violations.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::history::{FaultRecord, FindingRecord};
use crate::ledger::{Ledger, Record, TAP_BATCH_MAX, Tap, Tapped};
use crate::oracle::{Class, Coverage, Finding, Oracle, RunInfo};
use crate::profile::Tolerance;

/// Operations queued for the checker before the ledger writer waits (in
/// messages of at most `TAP_BATCH_MAX`).
const TAP_QUEUE_MAX: usize = 16_384;
/// Known deviations the online verdict keeps whole; the rest are counted
/// (a Garage soak finds thousands a minute, and kept they were most of the
/// runner's memory growth). The ledger records every one.
const KNOWN_KEPT: usize = 1_000;
/// Recent findings kept for watchers (the self-test); the ledger has all.
const RECENT_MAX: usize = 10_000;

/// What one tolerance rule absorbed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Absorbed {
    pub findings: u64,
    /// The longest time after its deciding write that a read whose
    /// finding the rule absorbed began.
    pub max_since_ack_ns: Option<u64>,
    /// Of those, reads of the final verification.
    pub final_reads: u64,
}

impl Absorbed {
    fn add(&mut self, f: &Finding) {
        self.findings += 1;
        self.final_reads += u64::from(f.final_read);
        if let Some(lag) = f.since_ack_ns {
            self.max_since_ack_ns = Some(self.max_since_ack_ns.unwrap_or(0).max(lag));
        }
    }
}

/// A check's findings, judged by the profile's tolerances.
#[derive(Debug, Clone, Default)]
pub struct Judged {
    /// Findings no rule absorbed: every one fails the run.
    pub violations: Vec<Finding>,
    /// Known deviations with the rule that absorbed each: the first
    /// `KNOWN_KEPT` whole (the ledger records every one).
    pub known: Vec<(usize, Finding)>,
    /// Per rule of the profile, in its order: what it absorbed.
    pub absorbed: Vec<Absorbed>,
    pub coverage: Coverage,
}

impl Judged {
    pub fn new(rules: usize) -> Judged {
        Judged {
            absorbed: vec![Absorbed::default(); rules],
            ..Judged::default()
        }
    }

    /// Judges one finding against `rules`, with the fault windows known so
    /// far; returns the rule that absorbed it, if one did.
    pub fn take(
        &mut self,
        rules: &[Tolerance],
        f: Finding,
        faults: &[FaultRecord],
    ) -> Option<usize> {
        let rule = absorbing_rule(rules, &f, faults);
        self.add(f, rule);
        rule
    }

    /// Keeps a finding that `rule` absorbed, or a violation.
    fn add(&mut self, f: Finding, rule: Option<usize>) {
        match rule {
            None => self.violations.push(f),
            Some(r) => {
                if self.absorbed.len() <= r {
                    self.absorbed.resize(r + 1, Absorbed::default());
                }
                self.absorbed[r].add(&f);
                if self.known.len() < KNOWN_KEPT {
                    self.known.push((r, f));
                }
            }
        }
    }

    /// Known deviations, over every rule.
    pub fn known_count(&self) -> u64 {
        self.absorbed.iter().map(|a| a.findings).sum()
    }
}

/// The first rule that absorbs `f`: the finding's deciding write counts
/// as written during a fault when its acknowledgement falls in a fault
/// window (from the fault's start to its recovery).
pub fn absorbing_rule(rules: &[Tolerance], f: &Finding, faults: &[FaultRecord]) -> Option<usize> {
    let in_fault = f.since_ack_ns.is_some_and(|lag| {
        let acked = f.t_invoke_ns.saturating_sub(lag);
        fault_at(faults, acked, acked).is_some()
    });
    rules.iter().position(|t| t.absorbs(f, in_fault))
}

/// A finding as watchers see it: when it came out, and whether a
/// tolerance absorbed it.
pub type Recent = (Instant, Finding, bool);

/// Per rule, for the live view: findings absorbed and the longest lag + 1
/// (0: none known).
#[derive(Default)]
struct RuleCounters {
    findings: AtomicU64,
    max_lag_ns_plus_one: AtomicU64,
}

/// What the run's driver and progress view can see of the online check.
#[derive(Default)]
pub struct Status {
    /// Findings the profile does not tolerate: these fail the run.
    findings: AtomicU64,
    /// Findings the profile tolerates as known deviations of the store.
    known: AtomicU64,
    /// Per tolerance rule, what it absorbed.
    rules: Vec<RuleCounters>,
    by_class: [AtomicU64; Class::ALL.len()],
    checked: AtomicU64,
    waiting: AtomicU64,
    /// The first finding, for the progress view and the stop message.
    first: Mutex<Option<String>>,
    /// Recent findings, known deviations included, with when they came
    /// out, numbered from 0; kept only once someone asked for them (the
    /// self-test): a soak's known deviations would otherwise hold
    /// megabytes no one reads.
    recent: Mutex<(u64, std::collections::VecDeque<Recent>)>,
    watched: AtomicBool,
    /// Set when the checker stopped early (a panic): the verdict is unknown.
    lost: AtomicBool,
    notify: tokio::sync::Notify,
}

impl Status {
    /// A status for a profile with `rules` tolerance rules.
    pub fn with_rules(rules: usize) -> Status {
        Status {
            rules: (0..rules).map(|_| RuleCounters::default()).collect(),
            ..Status::default()
        }
    }

    /// Per rule: findings absorbed and the longest lag after the deciding
    /// write, so far.
    pub fn absorbed(&self) -> Vec<(u64, Option<u64>)> {
        self.rules
            .iter()
            .map(|r| {
                let lag = r.max_lag_ns_plus_one.load(Ordering::Relaxed);
                (r.findings.load(Ordering::Relaxed), lag.checked_sub(1))
            })
            .collect()
    }

    pub fn findings(&self) -> u64 {
        self.findings.load(Ordering::Relaxed)
    }

    pub fn known(&self) -> u64 {
        self.known.load(Ordering::Relaxed)
    }

    pub fn checked(&self) -> u64 {
        self.checked.load(Ordering::Relaxed)
    }

    /// Reads waiting for a writer to move past them.
    pub fn waiting(&self) -> u64 {
        self.waiting.load(Ordering::Relaxed)
    }

    pub fn first(&self) -> Option<String> {
        self.first.lock().ok().and_then(|f| f.clone())
    }

    pub fn lost(&self) -> bool {
        self.lost.load(Ordering::Relaxed)
    }

    /// Counts per class, the nonzero ones.
    pub fn by_class(&self) -> Vec<(Class, u64)> {
        Class::ALL
            .iter()
            .zip(&self.by_class)
            .map(|(c, n)| (*c, n.load(Ordering::Relaxed)))
            .filter(|(_, n)| *n > 0)
            .collect()
    }

    /// Findings numbered `from` on (known deviations included), with the
    /// instant each came out and whether a tolerance absorbed it, and the
    /// number to ask from next time. The first call starts the record:
    /// ask once before what you watch.
    pub fn findings_since(&self, from: u64) -> (Vec<Recent>, u64) {
        self.watched.store(true, Ordering::Relaxed);
        let Ok(recent) = self.recent.lock() else {
            return (Vec::new(), from);
        };
        let (next, log) = &*recent;
        let first = next - log.len() as u64;
        let skip = from.saturating_sub(first) as usize;
        (log.iter().skip(skip).cloned().collect(), *next)
    }

    /// Resolves once there is at least one finding.
    pub async fn violated(&self) {
        loop {
            let notified = self.notify.notified();
            if self.findings() > 0 {
                return;
            }
            notified.await;
        }
    }

    fn record(&self, f: &Finding, rule: Option<usize>) {
        if let Ok(mut recent) = self.recent.lock() {
            recent.0 += 1;
            if self.watched.load(Ordering::Relaxed) {
                recent
                    .1
                    .push_back((Instant::now(), f.clone(), rule.is_some()));
                if recent.1.len() > RECENT_MAX {
                    recent.1.pop_front();
                }
            }
        }
        if let Some(r) = rule {
            self.known.fetch_add(1, Ordering::Relaxed);
            if let Some(c) = self.rules.get(r) {
                c.findings.fetch_add(1, Ordering::Relaxed);
                if let Some(lag) = f.since_ack_ns {
                    c.max_lag_ns_plus_one
                        .fetch_max(lag.saturating_add(1), Ordering::Relaxed);
                }
            }
            return;
        }
        let i = Class::ALL
            .iter()
            .position(|c| *c == f.class)
            .expect("every class is in ALL");
        self.by_class[i].fetch_add(1, Ordering::Relaxed);
        if let Ok(mut first) = self.first.lock()
            && first.is_none()
        {
            *first = Some(summary(f));
        }
        self.findings.fetch_add(1, Ordering::Relaxed);
        self.notify.notify_waiters();
    }
}

/// One line for a finding: class, key, op and what was seen.
pub fn summary(f: &Finding) -> String {
    format!(
        "{} on {} (op {}): expected {}, saw {}",
        f.class.as_str(),
        f.key.as_deref().unwrap_or("the LIST"),
        f.op_id,
        f.expected,
        f.seen
    )
}

/// The running checker.
pub struct Online {
    tap: Tap,
    ledger_tx: mpsc::SyncSender<Ledger>,
    /// The judged findings, and the CPU the thread used.
    thread: JoinHandle<(Judged, Duration)>,
    pub status: Arc<Status>,
}

impl Online {
    /// Starts the checker; give the returned tap to `Ledger::create`, then
    /// `attach` the ledger so findings can be written. Findings matching a
    /// tolerance are recorded as known deviations.
    pub fn start(info: RunInfo, tolerate: Vec<Tolerance>) -> (Online, Tap) {
        let (tap, rx) = mpsc::sync_channel(TAP_QUEUE_MAX / TAP_BATCH_MAX);
        let (ledger_tx, ledger_rx) = mpsc::sync_channel::<Ledger>(1);
        let status = Arc::new(Status::with_rules(tolerate.len()));
        let thread_status = status.clone();
        let thread = std::thread::Builder::new()
            .name("faultline-oracle".into())
            .spawn(move || {
                let ledger = ledger_rx.recv().ok();
                let guard = LostOnPanic(&thread_status);
                let verdict = check_loop(info, &tolerate, rx, ledger, &thread_status);
                std::mem::forget(guard);
                (verdict, crate::sys::thread_cpu_time())
            })
            .expect("a thread can be spawned at start-up");
        (
            Online {
                tap: tap.clone(),
                ledger_tx,
                thread,
                status,
            },
            tap,
        )
    }

    /// Gives the checker the ledger to write its findings to.
    pub fn attach(&self, ledger: Ledger) {
        let _ = self.ledger_tx.send(ledger);
    }

    /// Ends the check once everything the ledger committed was seen (call
    /// `Ledger::flush` first): judges what is still waiting and returns the
    /// findings judged; `None` if the checker died.
    pub fn finish(self) -> Option<Judged> {
        self.finish_timed().map(|(judged, _)| judged)
    }

    /// `finish`, and the CPU the checker's thread used (`bench runner`).
    pub fn finish_timed(self) -> Option<(Judged, Duration)> {
        let _ = self.tap.send(vec![Tapped::End]);
        self.thread.join().ok()
    }
}

/// Marks the status lost if the checker thread unwinds.
struct LostOnPanic<'a>(&'a Status);

impl Drop for LostOnPanic<'_> {
    fn drop(&mut self) {
        self.0.lost.store(true, Ordering::Relaxed);
    }
}

fn check_loop(
    info: RunInfo,
    tolerate: &[Tolerance],
    rx: mpsc::Receiver<Vec<Tapped>>,
    ledger: Option<Ledger>,
    status: &Status,
) -> Judged {
    let mut oracle = Oracle::new(info);
    let mut faults: Vec<FaultRecord> = Vec::new();
    let mut judged = Judged::new(tolerate.len());
    // Judges, records, logs and sends each finding.
    let emit = |findings: Vec<Finding>, faults: &[FaultRecord], judged: &mut Judged| {
        for f in findings {
            let rule = absorbing_rule(tolerate, &f, faults);
            status.record(&f, rule);
            match rule {
                Some(r) => tracing::debug!(finding = %summary(&f), rule = r, "known deviation"),
                None => tracing::warn!(finding = %summary(&f), "violation"),
            }
            if let Some(l) = &ledger {
                let record = finding_record(&f, faults, rule.map(|r| (r, &tolerate[r])));
                let _ = l.send(Record::Finding(Box::new(record)));
            }
            judged.add(f, rule);
        }
    };
    'receiving: while let Ok(items) = rx.recv() {
        for item in items {
            match item {
                Tapped::Op(op) => {
                    oracle.observe(*op);
                    emit(oracle.take_findings(), &faults, &mut judged);
                }
                Tapped::Fault(f) => match faults.iter_mut().find(|x| x.id == f.id) {
                    Some(x) => *x = *f,
                    None => faults.push(*f),
                },
                Tapped::End => break 'receiving,
            }
        }
        status
            .checked
            .store(oracle.coverage().reads_checked, Ordering::Relaxed);
        status
            .waiting
            .store(oracle.waiting() as u64, Ordering::Relaxed);
    }
    // Finishing judges what was still waiting; its findings are new.
    let verdict = oracle.finish();
    emit(verdict.findings, &faults, &mut judged);
    status
        .checked
        .store(verdict.coverage.reads_checked, Ordering::Relaxed);
    status.waiting.store(0, Ordering::Relaxed);
    judged.coverage = verdict.coverage;
    judged
}

/// The fault whose window (start to recovery, or to now while open)
/// overlaps an operation's interval; the latest one if several do. A fault
/// undone but not yet recovered is still open: a soak's lost write at
/// 96.2 s, after n1's SIGCONT at 95.3 s and before recovery at 96.9 s,
/// was once recorded with no fault.
pub fn fault_at(faults: &[FaultRecord], t_invoke: u64, t_return: u64) -> Option<&FaultRecord> {
    faults
        .iter()
        .filter(|f| {
            let end = f.t_recovered_ns.unwrap_or(u64::MAX);
            f.t_start_ns <= t_return && t_invoke <= end
        })
        .max_by_key(|f| f.t_start_ns)
}

/// A finding as the ledger stores it: the witness as JSON, with the read,
/// the writes and the fault active at the time; the rule that absorbed
/// it, when one did.
pub fn finding_record(
    f: &Finding,
    faults: &[FaultRecord],
    known: Option<(usize, &Tolerance)>,
) -> FindingRecord {
    let fault = fault_at(faults, f.t_invoke_ns, f.t_ns);
    let witness = serde_json::json!({
        "read": {"op_id": f.op_id, "t_invoke_ns": f.t_invoke_ns, "t_return_ns": f.t_ns},
        "writes": f.writes,
        "fault": fault.map(|x| serde_json::json!({
            "id": x.id, "kind": x.kind, "target": x.target,
            "t_start_ns": x.t_start_ns, "t_end_ns": x.t_end_ns, "t_recovered_ns": x.t_recovered_ns,
        })),
    });
    FindingRecord {
        class: f.class.as_str().to_string(),
        key: f.key.clone(),
        op_id: Some(f.op_id),
        fault_id: fault.map(|x| x.id),
        t_ns: f.t_ns,
        expected: f.expected.clone(),
        seen: f.seen.clone(),
        witness: witness.to_string(),
        known: known.map(|(_, t)| t.reason.clone()),
        rule: known.map(|(r, _)| r as u32),
        since_ack_ns: f.since_ack_ns,
        final_read: f.final_read,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::Bound;

    #[test]
    fn the_verdict_keeps_every_violation_but_only_counts_known_deviations_past_a_bound() {
        use crate::history::OpRecord;
        use crate::history::{OpKind, Origin, Outcome};
        let final_get = |id: u64, outcome: Outcome| {
            let mut op = OpRecord::new(OpKind::Get, Some(format!("p/x{id}")), outcome);
            op.id = id;
            op.origin = Origin::Final;
            op.t_invoke_ns = id * 10;
            op.t_return_ns = id * 10 + 5;
            op.http_status = Some(if outcome == Outcome::Ok { 200 } else { 503 });
            if outcome == Outcome::Ok {
                // A value for a key nobody wrote: a phantom, tolerated below.
                op.size = Some(1);
                op.sha256 = Some([0; 32]);
            }
            op
        };
        let (tx, rx) = mpsc::sync_channel(KNOWN_KEPT + 16);
        let phantoms = KNOWN_KEPT as u64 + 5;
        for id in 1..=phantoms {
            tx.send(vec![Tapped::Op(Box::new(final_get(id, Outcome::Ok)))])
                .unwrap();
        }
        for id in phantoms + 1..=phantoms + 2 {
            tx.send(vec![Tapped::Op(Box::new(final_get(
                id,
                Outcome::Unavailable,
            )))])
            .unwrap();
        }
        tx.send(vec![Tapped::End]).unwrap();
        let tolerate = vec![Tolerance {
            seen_contains: Some("never written".into()),
            final_reads: true,
            ..rule(Class::Phantom, Bound::None)
        }];
        let status = Status::with_rules(1);
        let v = check_loop(RunInfo::new(1, "p/", 1), &tolerate, rx, None, &status);
        assert_eq!(v.violations.len(), 2);
        assert!(v.violations.iter().all(|f| f.class == Class::Unrecoverable));
        assert_eq!(v.known.len(), KNOWN_KEPT);
        assert_eq!(v.absorbed[0].findings, phantoms);
        assert_eq!(v.absorbed[0].final_reads, phantoms);
        assert_eq!(status.known(), phantoms);
        assert_eq!(status.absorbed()[0].0, phantoms);
        assert_eq!(status.findings(), 2);
    }

    fn rule(class: Class, within: Bound) -> Tolerance {
        Tolerance {
            class,
            expected_contains: None,
            seen_contains: None,
            within_ms: Some(within),
            during_fault: false,
            final_reads: false,
            reason: "test".into(),
        }
    }

    /// A deleted key still listed `lag_ms` after its DELETE returned, the
    /// DELETE acknowledged at 10 s; the page is a final read if `last`.
    fn ghost(lag_ms: u64, last: bool) -> Finding {
        use crate::history::OpRecord;
        use crate::history::{ListDetail, OpKind, Origin, Outcome};
        const S: u64 = 1_000_000_000;
        let mut put = OpRecord::new(OpKind::Put, Some("p/a".into()), Outcome::Ok);
        (
            put.id,
            put.generation,
            put.size,
            put.t_invoke_ns,
            put.t_return_ns,
        ) = (1, Some(1), Some(0), S, 2 * S);
        let mut del = OpRecord::new(OpKind::Delete, Some("p/a".into()), Outcome::Ok);
        (del.id, del.generation, del.t_invoke_ns, del.t_return_ns) = (2, Some(2), 9 * S, 10 * S);
        let mut page = OpRecord::new(OpKind::List, None, Outcome::Ok);
        page.id = 3;
        page.origin = if last {
            Origin::Final
        } else {
            Origin::Readback
        };
        page.t_invoke_ns = 10 * S + lag_ms * 1_000_000;
        page.t_return_ns = page.t_invoke_ns + 1;
        let detail = ListDetail {
            keys: vec![("p/a".into(), 0, None)],
            ..ListDetail::default()
        };
        page.detail = Some(serde_json::to_string(&detail).unwrap());
        let v = crate::oracle::check(&RunInfo::new(1, "p/", 1), [put, del, page]);
        assert_eq!(v.findings.len(), 1, "{:?}", v.findings);
        v.findings.into_iter().next().unwrap()
    }

    #[test]
    fn a_bounded_rule_stops_absorbing_at_its_bound() {
        let rules = [rule(Class::ListGhost, Bound::Ms(2_000))];
        let inside = ghost(2_000, false);
        assert_eq!(inside.class, Class::ListGhost);
        assert_eq!(inside.since_ack_ns, Some(2_000_000_000));
        assert_eq!(absorbing_rule(&rules, &inside, &[]), Some(0));
        assert_eq!(absorbing_rule(&rules, &ghost(2_001, false), &[]), None);
        let mut judged = Judged::new(1);
        judged.take(&rules, ghost(300, false), &[]);
        judged.take(&rules, inside, &[]);
        judged.take(&rules, ghost(60_000, false), &[]);
        assert_eq!(judged.absorbed[0].findings, 2);
        assert_eq!(judged.absorbed[0].max_since_ack_ns, Some(2_000_000_000));
        assert_eq!(judged.violations.len(), 1);
    }

    #[test]
    fn a_rule_for_faults_absorbs_only_what_was_acknowledged_during_one() {
        let rules = [Tolerance {
            during_fault: true,
            ..rule(Class::ListGhost, Bound::Ms(180_000))
        }];
        const S: u64 = 1_000_000_000;
        // The DELETE returned at 10 s: inside a fault from 5 s to its
        // recovery at 30 s, the ghost seen at 70 s counts; after one that
        // recovered at 9 s, it does not.
        let during = [fault(1, 5 * S, Some(8 * S), Some(30 * S))];
        let before = [fault(1, 5 * S, Some(8 * S), Some(9 * S))];
        assert_eq!(
            absorbing_rule(&rules, &ghost(60_000, false), &during),
            Some(0)
        );
        assert_eq!(absorbing_rule(&rules, &ghost(60_000, false), &before), None);
        assert_eq!(absorbing_rule(&rules, &ghost(60_000, false), &[]), None);
    }

    #[test]
    fn no_rule_absorbs_a_final_read_unless_it_says_so() {
        let plain = [rule(Class::ListGhost, Bound::Ms(2_000))];
        let final_too = [Tolerance {
            final_reads: true,
            ..rule(Class::ListGhost, Bound::Ms(2_000))
        }];
        let last = ghost(300, true);
        assert!(last.final_read);
        assert_eq!(absorbing_rule(&plain, &last, &[]), None);
        assert_eq!(absorbing_rule(&final_too, &last, &[]), Some(0));
        assert_eq!(absorbing_rule(&plain, &ghost(300, false), &[]), Some(0));
    }

    fn fault(id: u64, start: u64, end: Option<u64>, recovered: Option<u64>) -> FaultRecord {
        FaultRecord {
            id,
            kind: "stop-start".into(),
            target: "n1".into(),
            t_start_ns: start,
            t_confirm_ns: Some(start),
            t_end_ns: end,
            t_recovered_ns: recovered,
            recovery_ms: None,
            gate: None,
            params: None,
        }
    }

    #[test]
    fn a_fault_is_active_from_its_start_until_it_recovered() {
        let undone = [fault(1, 20, Some(95), None)];
        // Undone at 95, not yet recovered: a read at 96 is in its window.
        assert_eq!(fault_at(&undone, 96, 97).map(|f| f.id), Some(1));
        let recovered = [fault(1, 20, Some(95), Some(97))];
        assert_eq!(fault_at(&recovered, 96, 96).map(|f| f.id), Some(1));
        assert_eq!(fault_at(&recovered, 98, 99).map(|f| f.id), None);
        assert_eq!(fault_at(&recovered, 10, 19).map(|f| f.id), None);
        // The latest of two overlapping windows.
        let two = [fault(1, 20, Some(95), Some(97)), fault(2, 96, None, None)];
        assert_eq!(fault_at(&two, 96, 96).map(|f| f.id), Some(2));
    }
}
