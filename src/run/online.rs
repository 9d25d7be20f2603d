//! The online check: a thread that takes each operation the ledger commits
//! (through the writer's tap, in ledger order), feeds it to the oracle, and
//! writes every finding back to the ledger at once, with the fault that was
//! active and the witness. A shared `Status` lets the run stop on the first
//! violation and shows findings in the progress view.
//!
//! The offline check (`faultline verify`) runs the same oracle over the
//! same ledger order, so both find the same violations.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::cluster::profile::{Tolerance, known_deviation};
use crate::ledger::{FaultRecord, FindingRecord, Ledger, Record, TAP_BATCH_MAX, Tap, Tapped};
use crate::oracle::{Class, Finding, Oracle, RunInfo, Verdict};

/// Operations queued for the checker before the ledger writer waits (in
/// messages of at most `TAP_BATCH_MAX`).
const TAP_QUEUE_MAX: usize = 16_384;
/// Known deviations the online verdict keeps whole; the rest are counted
/// (a Garage soak finds thousands a minute, and kept they were most of the
/// runner's memory growth). The ledger records every one.
const KNOWN_KEPT: usize = 1_000;
/// Recent findings kept for watchers (the self-test); the ledger has all.
const RECENT_MAX: usize = 10_000;

/// What the run's driver and progress view can see of the online check.
#[derive(Default)]
pub struct Status {
    /// Findings the profile does not tolerate: these fail the run.
    findings: AtomicU64,
    /// Findings the profile tolerates as known deviations of the store.
    known: AtomicU64,
    by_class: [AtomicU64; Class::ALL.len()],
    checked: AtomicU64,
    waiting: AtomicU64,
    /// The first finding, for the progress view and the stop message.
    first: Mutex<Option<String>>,
    /// Recent findings, known deviations included, with when they came
    /// out, numbered from 0; kept only once someone asked for them (the
    /// self-test): a soak's known deviations would otherwise hold
    /// megabytes no one reads.
    recent: Mutex<(u64, std::collections::VecDeque<(Instant, Finding)>)>,
    watched: AtomicBool,
    /// Set when the checker stopped early (a panic): the verdict is unknown.
    lost: AtomicBool,
    notify: tokio::sync::Notify,
}

impl Status {
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
    /// instant each came out, and the number to ask from next time.
    /// The first call starts the record: ask once before what you watch.
    pub fn findings_since(&self, from: u64) -> (Vec<(Instant, Finding)>, u64) {
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

    fn record(&self, f: &Finding, known: bool) {
        if let Ok(mut recent) = self.recent.lock() {
            recent.0 += 1;
            if self.watched.load(Ordering::Relaxed) {
                recent.1.push_back((Instant::now(), f.clone()));
                if recent.1.len() > RECENT_MAX {
                    recent.1.pop_front();
                }
            }
        }
        if known {
            self.known.fetch_add(1, Ordering::Relaxed);
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
    /// The verdict, and the CPU the thread used.
    thread: JoinHandle<(Verdict, Duration)>,
    pub status: Arc<Status>,
}

impl Online {
    /// Starts the checker; give the returned tap to `Ledger::create`, then
    /// `attach` the ledger so findings can be written. Findings matching a
    /// tolerance are recorded as known deviations.
    pub fn start(info: RunInfo, tolerate: Vec<Tolerance>) -> (Online, Tap) {
        let (tap, rx) = mpsc::sync_channel(TAP_QUEUE_MAX / TAP_BATCH_MAX);
        let (ledger_tx, ledger_rx) = mpsc::sync_channel::<Ledger>(1);
        let status = Arc::new(Status::default());
        let thread_status = status.clone();
        let thread = std::thread::Builder::new()
            .name("faultline-oracle".into())
            .spawn(move || {
                let ledger = ledger_rx.recv().ok();
                let guard = LostOnPanic(&thread_status);
                let verdict = check_loop(info, &tolerate, rx, ledger, &thread_status);
                std::mem::forget(guard);
                (verdict, crate::bench::thread_cpu_time())
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
    /// verdict; `None` if the checker died.
    pub fn finish(self) -> Option<Verdict> {
        self.finish_timed().map(|(verdict, _)| verdict)
    }

    /// `finish`, and the CPU the checker's thread used (`bench runner`).
    pub fn finish_timed(self) -> Option<(Verdict, Duration)> {
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
) -> Verdict {
    let mut oracle = Oracle::new(info);
    let mut faults: Vec<FaultRecord> = Vec::new();
    let mut all: Vec<Finding> = Vec::new();
    let mut known_kept = 0;
    let mut known_not_kept = std::collections::BTreeMap::new();
    // Records, logs and sends each finding, then keeps it for the verdict:
    // every violation, the first known deviations whole, the rest as counts.
    let mut emit = |findings: Vec<Finding>, faults: &[FaultRecord]| {
        for f in findings {
            let known = known_deviation(tolerate, &f);
            status.record(&f, known.is_some());
            match known {
                Some(why) => tracing::debug!(finding = %summary(&f), why, "known deviation"),
                None => tracing::warn!(finding = %summary(&f), "violation"),
            }
            if let Some(l) = &ledger {
                let record = finding_record(&f, faults, known);
                let _ = l.send(Record::Finding(Box::new(record)));
            }
            if known.is_none() || known_kept < KNOWN_KEPT {
                known_kept += usize::from(known.is_some());
                all.push(f);
            } else {
                *known_not_kept.entry(f.class).or_insert(0u64) += 1;
            }
        }
    };
    'receiving: while let Ok(items) = rx.recv() {
        for item in items {
            match item {
                Tapped::Op(op) => {
                    oracle.observe(*op);
                    emit(oracle.take_findings(), &faults);
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
    let mut verdict = oracle.finish();
    let last = std::mem::take(&mut verdict.findings);
    emit(last, &faults);
    status
        .checked
        .store(verdict.coverage.reads_checked, Ordering::Relaxed);
    status.waiting.store(0, Ordering::Relaxed);
    verdict.findings = all;
    verdict.known_not_kept = known_not_kept;
    verdict
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
/// the writes and the fault active at the time; `known` when tolerated.
pub fn finding_record(f: &Finding, faults: &[FaultRecord], known: Option<&str>) -> FindingRecord {
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
        known: known.map(str::to_string),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_verdict_keeps_every_violation_but_only_counts_known_deviations_past_a_bound() {
        use crate::history::{OpKind, Origin, Outcome};
        use crate::ledger::OpRecord;
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
            class: Class::Phantom,
            expected_contains: None,
            seen_contains: Some("never written".into()),
            reason: "test".into(),
        }];
        let status = Status::default();
        let v = check_loop(RunInfo::new(1, "p/", 1), &tolerate, rx, None, &status);
        let count = |c: Class| v.findings.iter().filter(|f| f.class == c).count();
        assert_eq!(count(Class::Unrecoverable), 2);
        assert_eq!(count(Class::Phantom), KNOWN_KEPT);
        assert_eq!(v.known_not_kept.get(&Class::Phantom), Some(&5));
        assert_eq!(status.known(), phantoms);
        assert_eq!(status.findings(), 2);
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
