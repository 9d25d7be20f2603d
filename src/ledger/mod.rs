//! The ledger: the run's SQLite file holding every operation, every write
//! version, the per-key object accounting, faults, findings and metrics
//! snapshots. Only this module touches SQLite.
//!
//! One thread owns the write connection. Producers send records over a
//! bounded channel (so a slow disk slows the workload instead of growing
//! memory); the thread writes whatever has queued up in one transaction,
//! so the commit rate adapts to the load. WAL mode means a runner killed
//! mid-run leaves every committed batch readable, and readers (reports,
//! `query`) never block the writer.
//!
//! The writer numbers operations in the order it receives them, and after
//! each commit hands the committed operations and fault windows, in that
//! same order, to an optional tap (the online oracle). `verify` reads the
//! operations back in id order, so the online and the offline check see
//! exactly the same sequence.
//!
//! The schema is versioned with `PRAGMA user_version`; see `SCHEMA` for the
//! tables and views, which are documented in ARCHITECTURE.md too.
//!
//! Here: the schema, the records producers send, and `Ledger`, the
//! producers' handle. `writer.rs` is the writer thread, `reader.rs` the
//! `LedgerReader`, `query.rs` the typed questions asked of a ledger,
//! `retention.rs` the pruning of long soaks.

pub mod query;
mod reader;
pub mod retention;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rusqlite::{Connection, params};

use crate::history::{FaultRecord, FindingRecord, OpRecord};

use writer::{close, gather, write_loop};

pub use reader::LedgerReader;
pub use retention::{Pruned, Retention};

pub const SCHEMA_VERSION: i64 = 7;
/// The oldest schema this faultline still reads: version 4 only added
/// `fault_folded`, which readers treat as empty when absent, version 5
/// `finding_writes`, which only the writer's retention reads, and version
/// 6 the findings' `rule`, `since_ack_ns` and `final`, read as NULL before,
/// version 7 the faults' `params`, read as NULL before.
pub const SCHEMA_VERSION_READ_FROM: i64 = 3;

/// Records queued for the writer before producers wait.
const QUEUE_MAX: usize = 16_384;
/// Records written in one transaction at most.
const BATCH_MAX: usize = 8_192;
/// How often the `objects` rows that changed are written (and at a flush
/// and the end). Each commit writes every page it changed in full, and a
/// few dozen scattered `objects` updates per 50 ms commit touched most of
/// that table's pages every time: about a fifth of the writer's CPU in a
/// real run (BENCHMARKS.md §1). Mid-run the table is at most this stale.
const OBJECTS_EVERY: Duration = Duration::from_secs(1);
/// How long the writer gathers records into one transaction. A commit
/// costs page writes whatever it holds, so at a workload's rate (hundreds
/// of operations a second) one per record made the ledger a quarter of
/// the runner's CPU; a runner SIGKILLed loses at most this much history.
const COMMIT_EVERY: Duration = Duration::from_millis(50);

/// The indexes of `ops`, for post-mortem queries and retention.
pub(crate) const INDEXES: &str = "CREATE INDEX IF NOT EXISTS ops_by_key ON ops (key, t_invoke_ns);
     CREATE INDEX IF NOT EXISTS ops_by_time ON ops (t_invoke_ns);";

const SCHEMA: &str = r#"
-- Key/value facts about the run: seed, profile, versions, command line.
CREATE TABLE run_meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

-- Every operation attempt, one row each (oracle.md section 1).
-- Times are nanoseconds since run start from one monotonic clock.
CREATE TABLE ops (
    id           INTEGER PRIMARY KEY,  -- the order the writer received it in
    worker       INTEGER NOT NULL,
    origin       TEXT NOT NULL,     -- worker (its own sequence), readback, final (verification)
    kind         TEXT NOT NULL,     -- put overwrite multipart delete get head range list
    key          TEXT,              -- NULL for list
    generation   INTEGER,           -- writes: generation written; reads: generation seen (NULL: absent or none)
    range_header TEXT,              -- Range GET: the header sent, e.g. 'bytes=-100'
    range_start  INTEGER,           -- Range GET: first byte returned (from Content-Range)
    range_end    INTEGER,           -- Range GET: last byte returned, inclusive
    t_invoke_ns  INTEGER NOT NULL,
    t_return_ns  INTEGER NOT NULL,
    outcome      TEXT NOT NULL CHECK (outcome IN ('ok', 'fail', 'ambiguous', 'unavailable')),
    http_status  INTEGER,
    error_class  TEXT,              -- not_sent timeout transport truncated server_error client_error
    bytes        INTEGER NOT NULL,  -- body bytes sent (writes) or received (reads)
    size         INTEGER,           -- writes: object size; reads: object size the server reported
    sha256       BLOB,              -- writes: of the body sent; reads: of the body received
    etag         TEXT,
    endpoint     INTEGER NOT NULL,  -- index into run_meta 'endpoints'
    detail       TEXT               -- list: JSON page summary; errors: message
);
-- Its indexes (INDEXES) are built when the writer finishes: kept up to
-- date insert by insert they cost half the writer's time.

-- Every write a key went through, acknowledged or not (oracle.md section 2):
-- a view of the writes in ops (a table of its own cost a second random
-- B-tree insert per write).
CREATE VIEW versions AS
    SELECT key, generation, kind = 'delete' AS deleted, coalesce(size, 0) AS size,
           sha256, id AS op_id, outcome
    FROM ops
    WHERE kind IN ('put', 'overwrite', 'multipart', 'delete') AND generation IS NOT NULL;

-- Per-key accounting, updated as writes return and reads observe.
CREATE TABLE objects (
    key                TEXT PRIMARY KEY,
    owner              INTEGER NOT NULL,  -- the worker that writes it
    state              TEXT NOT NULL,     -- present absent uncertain
    acked_generation   INTEGER,           -- last write with outcome ok
    candidates         TEXT NOT NULL,     -- JSON array: generations that may still be visible
    visible_generation INTEGER,           -- last generation a read saw
    size               INTEGER,
    sha256             BLOB
);

CREATE TABLE faults (
    id            INTEGER PRIMARY KEY,
    kind          TEXT NOT NULL,
    target        TEXT NOT NULL,
    t_start_ns    INTEGER NOT NULL,
    t_confirm_ns  INTEGER,
    t_end_ns      INTEGER,
    t_recovered_ns INTEGER,
    recovery_ms   INTEGER,
    gate          TEXT,              -- JSON: gate details
    params        TEXT               -- JSON: parameters and observations (a partition's cut pairs, rules, probes)
);

CREATE TABLE findings (
    id        INTEGER PRIMARY KEY,
    class     TEXT NOT NULL,
    key       TEXT,
    op_id     INTEGER,
    fault_id  INTEGER,
    t_ns      INTEGER NOT NULL,
    expected  TEXT NOT NULL,
    seen      TEXT NOT NULL,
    witness   TEXT NOT NULL,         -- JSON: the read, the writes, the fault active
    known     TEXT,                  -- a known deviation of the store: why it is tolerated
    rule      INTEGER,               -- which [[oracle.tolerate]] rule absorbed it (from 0)
    since_ack_ns INTEGER,            -- the read began this long after its deciding write was acknowledged
    final     INTEGER NOT NULL DEFAULT 0  -- 1: a read of the final verification
);

-- Writes some finding's witness names: retention keeps them, so that
-- `verify` names a value the way the online check did (a LIST page showing
-- a long-superseded version is named by that version's write).
CREATE TABLE finding_writes (
    op_id INTEGER PRIMARY KEY
) WITHOUT ROWID;

-- Periodic snapshots: ops/s, errors, live objects and bytes, runner RSS.
CREATE TABLE metrics (
    t_ns  INTEGER NOT NULL,
    name  TEXT NOT NULL,
    value REAL NOT NULL,
    PRIMARY KEY (t_ns, name)
);

-- Counts include what retention folded into ops_summary.
CREATE VIEW ops_per_minute AS
    SELECT minute, kind, outcome, sum(ops) AS ops FROM (
        SELECT t_invoke_ns / 60000000000 AS minute, kind, outcome, 1 AS ops FROM ops
        UNION ALL
        SELECT minute, kind, outcome, ops FROM ops_summary
    ) GROUP BY minute, kind, outcome;

CREATE VIEW latency_percentiles AS
    WITH ranked AS (
        SELECT kind, (t_return_ns - t_invoke_ns) / 1e6 AS ms,
               row_number() OVER (PARTITION BY kind ORDER BY t_return_ns - t_invoke_ns) AS rn,
               count(*) OVER (PARTITION BY kind) AS n
        FROM ops WHERE outcome = 'ok'
    )
    SELECT kind, max(n) AS ops,
           max(CASE WHEN rn = max(1, CAST(round(0.50 * n) AS INTEGER)) THEN ms END) AS p50_ms,
           max(CASE WHEN rn = max(1, CAST(round(0.90 * n) AS INTEGER)) THEN ms END) AS p90_ms,
           max(CASE WHEN rn = max(1, CAST(round(0.99 * n) AS INTEGER)) THEN ms END) AS p99_ms,
           max(ms) AS max_ms
    FROM ranked GROUP BY kind;
"#;

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("ledger {path}: {source}")]
    Sqlite {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error(
        "ledger {path} has schema version {found}, this faultline reads versions {SCHEMA_VERSION_READ_FROM} to {SCHEMA_VERSION}"
    )]
    Version { path: PathBuf, found: i64 },
    #[error("the ledger writer thread stopped: {0}")]
    WriterGone(String),
}

/// The accounting row of one key.
#[derive(Debug, Clone, PartialEq)]
pub struct ObjectRecord {
    pub key: String,
    pub owner: u32,
    pub state: &'static str,
    pub acked_generation: Option<u64>,
    pub candidates: Vec<u64>,
    pub visible_generation: Option<u64>,
    pub size: Option<u64>,
    pub sha256: Option<[u8; 32]>,
}

pub enum Record {
    /// An operation (a write shows in the `versions` view too).
    Op(Box<OpRecord>),
    Object(Box<ObjectRecord>),
    /// A read saw this generation of the key (present values only: a 404
    /// does not say which DELETE it saw).
    Visible {
        key: String,
        generation: u64,
    },
    Metric {
        t_ns: u64,
        name: String,
        value: f64,
    },
    Meta {
        key: String,
        value: String,
    },
    /// Inserts or updates (by id) a fault window.
    Fault(Box<FaultRecord>),
    Finding(Box<FindingRecord>),
    /// Answered once everything sent before it is committed.
    Flush(mpsc::SyncSender<()>),
}

/// What the writer hands to its tap after each commit, in commit order.
#[derive(Debug)]
pub enum Tapped {
    Op(Box<OpRecord>),
    Fault(Box<FaultRecord>),
    /// Sent by the tap's owner, never by the writer, after a `flush`: no
    /// more records will come.
    End,
}

/// Where committed operations go (the online oracle), a commit's worth at
/// a time (at most `TAP_BATCH_MAX` to a message): one send, and so at most
/// one wake-up of the reader, per commit instead of per operation. Bounded:
/// a tap that falls behind slows the writer, and so the workload, instead
/// of growing.
pub type Tap = mpsc::SyncSender<Vec<Tapped>>;

/// Records in one message to the tap at most, so that a bound on the tap's
/// messages bounds its records.
pub const TAP_BATCH_MAX: usize = 256;

/// The producers' handle. Cheap to clone; the writer stops when the last
/// clone is dropped (after committing what was queued).
#[derive(Clone)]
pub struct Ledger {
    tx: mpsc::SyncSender<Record>,
    path: PathBuf,
    /// The writer's thread, woken early by a flush or a full queue.
    writer: std::thread::Thread,
}

/// Joins the writer thread; keep it until the run's end.
pub struct LedgerWriter {
    /// Records written, and the CPU the thread used.
    thread: JoinHandle<(Result<u64, LedgerError>, WriterCpu)>,
}

/// The CPU the writer's thread used (`bench runner`).
#[derive(Debug, Clone, Copy)]
pub struct WriterCpu {
    /// While records came: per operation.
    pub run: Duration,
    /// Once at the end: indexes built, the WAL folded back.
    pub end: Duration,
}

impl LedgerWriter {
    /// Waits for the writer to commit everything and exit (all `Ledger`
    /// handles must be dropped first). Returns how many records it wrote.
    pub fn finish(self) -> Result<u64, LedgerError> {
        self.finish_timed().map(|(records, _)| records)
    }

    /// `finish`, and the CPU the writer's thread used.
    pub fn finish_timed(self) -> Result<(u64, WriterCpu), LedgerError> {
        let (records, cpu) = self
            .thread
            .join()
            .map_err(|_| LedgerError::WriterGone("the writer thread panicked".into()))?;
        Ok((records?, cpu))
    }
}

fn sql_err(path: &Path) -> impl FnOnce(rusqlite::Error) -> LedgerError + '_ {
    move |source| LedgerError::Sqlite {
        path: path.to_path_buf(),
        source,
    }
}

impl Ledger {
    /// Creates a new ledger file with the current schema and starts its
    /// writer thread; with `retention`, old history is pruned as it goes;
    /// with `tap`, every committed operation and fault is handed on.
    pub fn create(
        path: &Path,
        retention: Option<Retention>,
        tap: Option<Tap>,
    ) -> Result<(Ledger, LedgerWriter), LedgerError> {
        let conn = Connection::open(path).map_err(sql_err(path))?;
        // Big pages: fewer B-tree splits and larger writes per commit.
        conn.pragma_update(None, "page_size", 16_384)
            .map_err(sql_err(path))?;
        conn.pragma_update(None, "journal_mode", "wal")
            .map_err(sql_err(path))?;
        // No fsync while the run goes on: a committed batch is in the OS's
        // page cache and survives the runner's crash (SIGKILL, OOM kill);
        // only an OS crash or power loss mid-run could lose or damage the
        // ledger. With NORMAL, every WAL checkpoint's fsync of tens of MB
        // stalled the nodes' own fsyncs on a shared disk: throughput with
        // the ledger fell to 0.91 of a run without it (0.99 without the
        // fsyncs, BENCHMARKS.md §1). The writer syncs once when it ends.
        conn.pragma_update(None, "synchronous", "off")
            .map_err(sql_err(path))?;
        // Keep hot pages in memory (16 MiB) rather than read back from the
        // WAL on every insert, and checkpoint less often (a page rewritten
        // many times is copied back once).
        conn.pragma_update(None, "cache_size", -16_384)
            .map_err(sql_err(path))?;
        conn.pragma_update(None, "wal_autocheckpoint", 2_048)
            .map_err(sql_err(path))?;
        conn.execute_batch(retention::SCHEMA)
            .map_err(sql_err(path))?;
        conn.execute_batch(SCHEMA).map_err(sql_err(path))?;
        let described = retention.map_or_else(
            || "off: full history".to_string(),
            |r| format!("on: {}", r.describe()),
        );
        conn.execute(
            "INSERT INTO run_meta (key, value) VALUES ('retention', ?1)",
            [described],
        )
        .map_err(sql_err(path))?;
        conn.pragma_update(None, "user_version", SCHEMA_VERSION)
            .map_err(sql_err(path))?;
        let (tx, rx) = mpsc::sync_channel(QUEUE_MAX);
        let thread_path = path.to_path_buf();
        let thread = std::thread::Builder::new()
            .name("faultline-ledger".into())
            .spawn(move || {
                let run = write_loop(conn, rx, &thread_path, retention, tap);
                let run_cpu = crate::sys::thread_cpu_time();
                let records = run.and_then(|(conn, n)| close(conn, &thread_path).map(|()| n));
                let cpu = WriterCpu {
                    run: run_cpu,
                    end: crate::sys::thread_cpu_time().saturating_sub(run_cpu),
                };
                (records, cpu)
            })
            .map_err(|e| LedgerError::WriterGone(e.to_string()))?;
        Ok((
            Ledger {
                tx,
                path: path.to_path_buf(),
                writer: thread.thread().clone(),
            },
            LedgerWriter { thread },
        ))
    }

    /// A ledger that keeps nothing: records are counted and dropped,
    /// flushes answered. The runner's raw mode (`bench runner`) measures
    /// what recording costs against it.
    pub fn discard() -> Result<(Ledger, LedgerWriter), LedgerError> {
        let (tx, rx) = mpsc::sync_channel::<Record>(QUEUE_MAX);
        let thread = std::thread::Builder::new()
            .name("faultline-discard".into())
            .spawn(move || {
                // Gathered as the writer gathers, so both modes pay the
                // same for handing records over.
                let mut dropped = 0;
                let mut batch = Vec::with_capacity(BATCH_MAX);
                let mut open = true;
                while open {
                    open = gather(&rx, &mut batch, Instant::now() + COMMIT_EVERY);
                    for record in batch.drain(..) {
                        match record {
                            Record::Flush(done) => {
                                let _ = done.send(());
                            }
                            _ => dropped += 1,
                        }
                    }
                }
                let cpu = WriterCpu {
                    run: crate::sys::thread_cpu_time(),
                    end: Duration::ZERO,
                };
                (Ok(dropped), cpu)
            })
            .map_err(|e| LedgerError::WriterGone(e.to_string()))?;
        Ok((
            Ledger {
                tx,
                path: PathBuf::new(),
                writer: thread.thread().clone(),
            },
            LedgerWriter { thread },
        ))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Queues a record; blocks while the queue is full.
    pub fn send(&self, record: Record) -> Result<(), LedgerError> {
        let gone = || LedgerError::WriterGone("channel closed".into());
        match self.tx.try_send(record) {
            Ok(()) => Ok(()),
            // The writer may be parked for the rest of its window: a full
            // queue wakes it rather than waiting that out.
            Err(mpsc::TrySendError::Full(record)) => {
                self.writer.unpark();
                self.tx.send(record).map_err(|_| gone())
            }
            Err(mpsc::TrySendError::Disconnected(_)) => Err(gone()),
        }
    }

    /// Waits until everything sent so far is committed (bounded).
    pub fn flush(&self) -> Result<(), LedgerError> {
        let (done, wait) = mpsc::sync_channel(1);
        self.send(Record::Flush(done))?;
        self.writer.unpark();
        wait.recv_timeout(Duration::from_secs(60))
            .map_err(|_| LedgerError::WriterGone("no flush acknowledgement within 60 s".into()))
    }
}

/// Sets one `run_meta` fact in a ledger whose writer has finished (the
/// run's verdict, known only at the very end).
pub fn set_meta(path: &Path, key: &str, value: &str) -> Result<(), LedgerError> {
    let conn = Connection::open(path).map_err(sql_err(path))?;
    conn.execute(
        "INSERT OR REPLACE INTO run_meta (key, value) VALUES (?1, ?2)",
        params![key, value],
    )
    .map_err(sql_err(path))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{ErrorClass, OpKind, Origin, Outcome};

    fn op(id: u64, kind: OpKind, outcome: Outcome, latency_ns: u64) -> OpRecord {
        OpRecord {
            id,
            worker: (id % 3) as u32,
            origin: Origin::ALL[id as usize % 3],
            kind,
            key: Some(format!("k{}", id % 10)),
            generation: Some(id),
            range_header: None,
            range: None,
            t_invoke_ns: id * 1_000,
            t_return_ns: id * 1_000 + latency_ns,
            outcome,
            http_status: Some(200),
            error_class: None,
            bytes: 10,
            size: Some(10),
            sha256: Some([id as u8; 32]),
            etag: Some("\"e\"".into()),
            endpoint: 0,
            detail: None,
        }
    }

    #[test]
    fn records_round_trip_and_views_answer() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.sqlite");
        let (ledger, writer) = Ledger::create(&path, None, None).unwrap();
        ledger
            .send(Record::Meta {
                key: "seed".into(),
                value: "42".into(),
            })
            .unwrap();
        let mut sent = Vec::new();
        for id in 1..=1000 {
            let mut o = op(
                id,
                OpKind::ALL[id as usize % 8],
                Outcome::Ok,
                id * 1_000_000,
            );
            if id == 7 {
                o.outcome = Outcome::Ambiguous;
                o.error_class = Some(ErrorClass::Timeout);
                o.range = Some((0, 9));
                o.range_header = Some("bytes=-10".into());
            }
            ledger.send(Record::Op(Box::new(o.clone()))).unwrap();
            sent.push(o);
        }
        ledger.flush().unwrap();
        // Readable while the writer still runs.
        let reader = LedgerReader::open(&path).unwrap();
        assert_eq!(reader.ops().unwrap(), sent);
        assert_eq!(reader.meta("seed").unwrap().as_deref(), Some("42"));
        let kinds = reader
            .count("SELECT count(*) FROM latency_percentiles")
            .unwrap();
        assert_eq!(kinds, 8);
        let p50: f64 = reader
            .connection()
            .query_row(
                "SELECT p50_ms FROM latency_percentiles WHERE kind = 'get'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert!(p50 > 100.0 && p50 < 900.0, "{p50}");
        let per_minute = reader.count("SELECT sum(ops) FROM ops_per_minute").unwrap();
        assert_eq!(per_minute, 1000);
        drop(ledger);
        assert_eq!(writer.finish().unwrap(), 1001);
    }

    #[test]
    fn objects_rows_written_in_batches_end_as_if_written_one_by_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.sqlite");
        let (ledger, writer) = Ledger::create(&path, None, None).unwrap();
        let row = |key: &str, generation: u64| {
            Record::Object(Box::new(ObjectRecord {
                key: key.into(),
                owner: 1,
                state: "present",
                acked_generation: Some(generation),
                candidates: vec![generation],
                visible_generation: None,
                size: Some(10),
                sha256: Some([generation as u8; 32]),
            }))
        };
        let visible = |key: &str, generation: u64| Record::Visible {
            key: key.into(),
            generation,
        };
        let table = |path: &Path| {
            let reader = LedgerReader::open(path).unwrap();
            let mut stmt = reader
                .connection()
                .prepare(
                    "SELECT key, acked_generation, visible_generation FROM objects ORDER BY key",
                )
                .unwrap();
            stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .unwrap()
                .collect::<rusqlite::Result<Vec<(String, i64, Option<i64>)>>>()
                .unwrap()
        };
        // Within one batch: a read's generation on a row just written, a
        // new write clearing it, a read of a key with no row yet (nothing).
        for r in [
            row("a", 1),
            visible("a", 1),
            row("b", 1),
            visible("b", 1),
            row("b", 2),
            visible("c", 4),
        ] {
            ledger.send(r).unwrap();
        }
        ledger.flush().unwrap();
        assert_eq!(
            table(&path),
            [("a".into(), 1, Some(1)), ("b".into(), 2, None)]
        );
        // A read of a row written in an earlier batch, written at the end.
        ledger.send(visible("b", 2)).unwrap();
        ledger.send(visible("b", 1)).unwrap();
        drop(ledger);
        assert_eq!(writer.finish().unwrap(), 8);
        assert_eq!(
            table(&path),
            [("a".into(), 1, Some(1)), ("b".into(), 2, Some(1))]
        );
    }

    #[test]
    fn a_ledger_of_another_schema_version_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.sqlite");
        Connection::open(&path)
            .unwrap()
            .pragma_update(None, "user_version", 99)
            .unwrap();
        let err = LedgerReader::open(&path).err().unwrap().to_string();
        assert!(err.contains("schema version 99"), "{err}");
    }
}
