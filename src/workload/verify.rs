//! The final verification (oracle.md §7): every key's GET and HEAD, then
//! the LIST walk, each read without an answer retried through the next
//! endpoint in turn within `final_retry_ms`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Who, Workload};
use crate::history::{OpKind, Origin, Outcome};
use crate::ledger::LedgerError;

/// Reads the final verification has in flight at once.
pub(super) const FINAL_READS_IN_FLIGHT: usize = 8;
/// The final verification's first pause before retrying the reads that
/// got no answer; it doubles each round up to `FINAL_RETRY_PAUSE_MAX`.
pub(super) const FINAL_RETRY_PAUSE: Duration = Duration::from_millis(250);
pub(super) const FINAL_RETRY_PAUSE_MAX: Duration = Duration::from_secs(2);

impl Workload {
    /// Final verification (oracle.md §7), once every worker has stopped:
    /// every key of the run's key space (a superset of the ledger's keys)
    /// read in full with GET and HEAD, spread over the endpoints, then the
    /// whole prefix listed page by page. Ordinary operations, marked
    /// `final` and issued by the verifier, whose worker id is `workers`.
    ///
    /// A read that got no answer is tried again, each attempt its own
    /// operation, through the next endpoint in turn (one that does not
    /// answer is routed around, as in the workload), with a pause between
    /// rounds, for at most `final_retry_ms` after the first round: one
    /// refused connection is not proof that data is gone. Every key gets
    /// its first attempt whatever the deadline.
    pub async fn verify_all(self: Arc<Self>) -> Result<(), LedgerError> {
        use futures::{StreamExt, TryStreamExt};
        let verifier = Who {
            worker: self.cfg.workers,
            origin: Origin::Final,
        };
        let keys: Vec<String> = (0..self.cfg.workers)
            .flat_map(|w| (0..self.cfg.keys_per_worker).map(move |k| (w, k)))
            .map(|(w, k)| self.key_name(w, k))
            .collect();
        let endpoints = self.endpoints;
        // (key, kind, attempt): attempt n goes to endpoint start + n.
        let mut pending: Vec<(usize, OpKind, usize)> = (0..keys.len())
            .flat_map(|i| [(i, OpKind::Get, 0), (i, OpKind::Head, 0)])
            .collect();
        let mut deadline = None;
        let mut pause = FINAL_RETRY_PAUSE;
        while !pending.is_empty() {
            let this = &self;
            let keys = &keys;
            let answered: Vec<bool> = futures::stream::iter(pending.iter().copied())
                .map(|(i, kind, attempt)| async move {
                    let start = i + usize::from(kind == OpKind::Head);
                    let ep = this.route((start + attempt) % endpoints);
                    let outcome = match kind {
                        OpKind::Get => this.get(verifier, &keys[i], ep).await?,
                        _ => this.head(verifier, &keys[i], ep).await?,
                    };
                    Ok::<bool, LedgerError>(outcome == Outcome::Ok)
                })
                .buffered(FINAL_READS_IN_FLIGHT)
                .try_collect()
                .await?;
            pending = pending
                .into_iter()
                .zip(answered)
                .filter(|(_, ok)| !ok)
                .map(|((i, kind, attempt), _)| (i, kind, attempt + 1))
                .collect();
            let until = *deadline.get_or_insert_with(|| Instant::now() + self.final_retry());
            let now = Instant::now();
            if pending.is_empty() || now >= until {
                break;
            }
            tracing::info!(
                reads = pending.len(),
                "final verification: retrying reads that got no answer"
            );
            tokio::time::sleep(pause.min(until - now)).await;
            pause = (pause * 2).min(FINAL_RETRY_PAUSE_MAX);
        }
        let pages_max = keys.len() as u32 / self.cfg.list_max_keys.max(1) + 2;
        // The walk's pages get a retry window of their own.
        let until = Instant::now() + self.final_retry();
        self.list_retrying(verifier, None, pages_max, 0, Some(until))
            .await
    }

    pub(super) fn final_retry(&self) -> Duration {
        Duration::from_millis(self.cfg.final_retry_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::Ledger;
    use crate::s3::{self, S3Client};
    use crate::workload::{WorkloadConfig, key_name};
    use std::collections::HashMap;
    use std::sync::Mutex;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A loopback S3 stand-in for a store that holds nothing: every read
    /// answers 404 and every LIST an empty page, except that the first
    /// attempt of each request (method and target) is cut off unanswered,
    /// as an overloaded proxy or a restarting load balancer does, and every
    /// attempt at `dead` is. Both addresses it returns serve the same.
    async fn first_attempts_cut_off(dead: String) -> Vec<String> {
        let seen: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
        let mut urls = Vec::new();
        for _ in 0..2 {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            urls.push(format!("http://{}", listener.local_addr().unwrap()));
            let (seen, dead) = (seen.clone(), dead.clone());
            tokio::spawn(async move {
                while let Ok((mut conn, _)) = listener.accept().await {
                    let (seen, dead) = (seen.clone(), dead.clone());
                    tokio::spawn(async move {
                        let mut head = Vec::new();
                        let mut buf = [0u8; 4096];
                        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                            match conn.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => head.extend_from_slice(&buf[..n]),
                            }
                        }
                        let line = String::from_utf8_lossy(&head)
                            .lines()
                            .next()
                            .unwrap_or_default()
                            .to_string();
                        let attempt = {
                            let mut seen = seen.lock().unwrap();
                            let n = seen.entry(line.clone()).or_default();
                            *n += 1;
                            *n
                        };
                        if attempt == 1 || line.contains(&dead) {
                            // Cut off: a reset, no answer.
                            let _ = socket2::SockRef::from(&conn).set_linger(Some(Duration::ZERO));
                            return;
                        }
                        let answer = if line.contains("list-type=2") {
                            let body = "<ListBucketResult><IsTruncated>false</IsTruncated></ListBucketResult>";
                            format!(
                                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                                body.len()
                            )
                        } else {
                            "HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                                .to_string()
                        };
                        let _ = conn.write_all(answer.as_bytes()).await;
                    });
                }
            });
        }
        urls
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn final_reads_survive_a_cut_off_first_attempt_and_name_a_key_that_stays_unreadable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.sqlite");
        let prefix = "run/".to_string();
        let dead = key_name(&prefix, 1, 2);
        let urls = first_attempts_cut_off(dead.clone()).await;
        let clients = urls
            .iter()
            .map(|u| {
                S3Client::new(
                    s3::S3Config {
                        endpoint: u.clone(),
                        region: "r".into(),
                        bucket: "b".into(),
                        access_key_id: "GK0".into(),
                        secret_access_key: "0".into(),
                    },
                    s3::Timeouts::default(),
                )
            })
            .collect();
        let cfg = WorkloadConfig {
            workers: 2,
            keys_per_worker: 3,
            final_retry_ms: 2_000,
            ..WorkloadConfig::default()
        };
        let (ledger, writer) = Ledger::create(&path, None, None).unwrap();
        let workload = Workload::new(
            cfg,
            7,
            prefix.clone(),
            clients,
            ledger.clone(),
            Instant::now(),
        );
        workload.clone().verify_all().await.unwrap();
        drop(workload);
        drop(ledger);
        writer.finish().unwrap();
        let ops = crate::ledger::LedgerReader::open(&path)
            .unwrap()
            .ops()
            .unwrap();
        // Every read of a live key took two attempts (the first cut off),
        // each its own operation.
        for k in 0..3 {
            let key = key_name(&prefix, 0, k);
            for kind in [OpKind::Get, OpKind::Head] {
                let attempts: Vec<Outcome> = ops
                    .iter()
                    .filter(|o| o.key.as_deref() == Some(&key) && o.kind == kind)
                    .map(|o| o.outcome)
                    .collect();
                assert_eq!(
                    attempts,
                    [Outcome::Unavailable, Outcome::Ok],
                    "{key} {kind:?}"
                );
            }
        }
        let dead_attempts = ops
            .iter()
            .filter(|o| o.key.as_deref() == Some(&dead))
            .count();
        assert!(
            dead_attempts >= 8,
            "{dead_attempts} attempts at the dead key"
        );
        let info = crate::oracle::RunInfo::new(7, prefix, 2);
        let verdict = crate::oracle::check(&info, ops);
        let named: Vec<(Option<&str>, &str)> = verdict
            .findings
            .iter()
            .map(|f| (f.key.as_deref(), f.class.as_str()))
            .collect();
        assert_eq!(
            named,
            [
                (Some(dead.as_str()), "unrecoverable"),
                (Some(dead.as_str()), "unrecoverable")
            ],
            "{:#?}",
            verdict.findings
        );
        assert!(verdict.coverage.final_list_pages_checked >= 1);
    }
}
