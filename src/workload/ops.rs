//! One operation each: PUT (single or multipart), DELETE, GET, HEAD, Range
//! GET and LIST as S3 requests, timed, classified (oracle.md §1) and
//! recorded in the ledger, with the per-key state they update.

use std::sync::atomic::Ordering;
use std::time::Instant;

use reqwest::Method;

use super::plan::RangeSpec;
use super::verify::{FINAL_RETRY_PAUSE, FINAL_RETRY_PAUSE_MAX};
use super::{
    Exchanged, KEEP_PREFIX_BYTES, KeyState, Version, Who, Workload, kind_index, outcome_index,
};
use crate::history::OpRecord;
use crate::history::body::{self, Body};
use crate::history::{
    ErrorClass, ListDetail, OpKind, Origin, Outcome, TraceDetail, classify_error, classify_status,
};
use crate::ledger::{LedgerError, ObjectRecord, Record};
use crate::s3::{Failure, GENERATION_HEADER, Keep, Payload, S3Client};

impl Workload {
    /// Sends one request and classifies what came back. The arguments are
    /// `S3Client::exchange`'s plus the two the history needs.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn send(
        &self,
        kind: OpKind,
        ep: usize,
        method: Method,
        key: Option<&str>,
        query: &[(&str, &str)],
        headers: &[(&str, String)],
        payload: Payload<'_>,
        keep: Keep,
    ) -> Exchanged {
        let result = self
            .client(ep)
            .exchange(method, key, query, headers, payload, keep)
            .await;
        match &result {
            Ok(_) => self.health.answered(ep),
            Err(f)
                if matches!(
                    f.error.class,
                    ErrorClass::NotSent | ErrorClass::Timeout | ErrorClass::Transport
                ) =>
            {
                self.health.unanswered(ep, self.now_ms())
            }
            Err(_) => {}
        }
        match result {
            Ok(resp) => Exchanged {
                outcome: classify_status(kind, resp.status.as_u16()).0,
                t_invoke: resp.t_invoke,
                t_return: resp.t_return,
                resp: Some(resp),
                failure: None,
            },
            Err(f) => failed(kind, f),
        }
    }

    /// Records one operation (the ledger numbers it) and bumps the counters.
    pub(super) fn record(&self, mut op: OpRecord, x: &Exchanged) -> Result<(), LedgerError> {
        op.t_invoke_ns = self.ns(x.t_invoke);
        op.t_return_ns = self.ns(x.t_return);
        op.outcome = x.outcome;
        if let Some(r) = &x.resp {
            op.http_status = Some(r.status.as_u16());
            op.error_class = classify_status(op.kind, r.status.as_u16()).1;
            if op.etag.is_none() {
                op.etag = r.etag();
            }
            if !r.status.is_success() && r.status.as_u16() != 404 {
                op.detail =
                    Some(String::from_utf8_lossy(&r.body[..r.body.len().min(300)]).into_owned());
            }
        }
        if let Some(f) = &x.failure {
            op.error_class = Some(f.class);
            op.http_status = f.status;
            op.detail = Some(f.message.clone());
        }
        self.stats.ops[kind_index(op.kind)][outcome_index(op.outcome)]
            .fetch_add(1, Ordering::Relaxed);
        self.ledger.send(Record::Op(Box::new(op)))
    }

    pub(super) fn blank_op(
        &self,
        who: Who,
        kind: OpKind,
        key: Option<String>,
        ep: usize,
    ) -> OpRecord {
        OpRecord {
            worker: who.worker,
            origin: who.origin,
            endpoint: ep as u32,
            ..OpRecord::new(kind, key, Outcome::Fail)
        }
    }

    /// PUT (or multipart upload) of the key's next generation. Returns the
    /// key's index when the write was acknowledged, for its read-back.
    pub(super) async fn write(
        &self,
        w: u32,
        ks: &mut KeyState,
        size: u64,
        ep: usize,
    ) -> Result<Option<u32>, LedgerError> {
        let generation = ks.next_generation;
        ks.next_generation += 1;
        let kind = if size >= self.cfg.part_size {
            OpKind::Multipart
        } else if ks.ever_written() {
            OpKind::Overwrite
        } else {
            OpKind::Put
        };
        let body = Body::new(self.seed, &ks.name, generation, size);
        let sha = body.sha256();
        let x = if kind == OpKind::Multipart {
            self.multipart(&ks.name, &body, generation, ep).await
        } else {
            let headers = [(GENERATION_HEADER, generation.to_string())];
            let payload = Payload::Slice {
                body: &body,
                start: 0,
                end: size,
                sha256: Some(sha),
            };
            self.send(
                kind,
                ep,
                Method::PUT,
                Some(&ks.name),
                &[],
                &headers,
                payload,
                Keep::All,
            )
            .await
        };
        let mut op = self.blank_op(Who::worker(w), kind, Some(ks.name.clone()), ep);
        op.generation = Some(generation);
        op.bytes = size;
        op.size = Some(size);
        op.sha256 = Some(sha);
        self.record(op, &x)?;
        let version = Version {
            generation,
            deleted: false,
            size,
            sha256: Some(sha),
        };
        self.settle(w, ks, version, x.outcome)
    }

    /// Create, parts, complete; abort on failure. One operation in the
    /// history, from before the create to after the complete: only the
    /// complete can change the key, so a failure before it is `fail`.
    pub(super) async fn multipart(
        &self,
        key: &str,
        body: &Body,
        generation: u64,
        ep: usize,
    ) -> Exchanged {
        let client = self.client(ep);
        let t_invoke = Instant::now();
        let upload = match client.create_multipart(key, generation).await {
            Ok(id) => id,
            Err(f) => return before_complete(t_invoke, f),
        };
        let mut parts = Vec::new();
        let part = self.cfg.part_size;
        for (n, start) in (0..body.size).step_by(part as usize).enumerate() {
            let end = (start + part).min(body.size);
            let payload = Payload::Slice {
                body,
                start,
                end,
                sha256: None,
            };
            match client
                .upload_part(key, &upload, n as u32 + 1, payload)
                .await
            {
                Ok(etag) => parts.push((n as u32 + 1, etag)),
                Err(f) => {
                    let _ = client.abort_multipart(key, &upload).await;
                    return before_complete(t_invoke, f);
                }
            }
        }
        let mut x = match client.complete_multipart(key, &upload, &parts).await {
            Ok(resp) => Exchanged {
                outcome: classify_status(OpKind::Multipart, resp.status.as_u16()).0,
                t_invoke,
                t_return: resp.t_return,
                resp: Some(resp),
                failure: None,
            },
            Err(f) => {
                let mut x = failed(OpKind::Multipart, f);
                x.t_invoke = t_invoke;
                x
            }
        };
        if x.outcome == Outcome::Fail {
            let _ = client.abort_multipart(key, &upload).await;
            x.t_return = x.t_return.max(Instant::now());
        }
        x
    }

    pub(super) async fn delete(
        &self,
        w: u32,
        ks: &mut KeyState,
        ep: usize,
    ) -> Result<Option<u32>, LedgerError> {
        let generation = ks.next_generation;
        ks.next_generation += 1;
        let x = self
            .send(
                OpKind::Delete,
                ep,
                Method::DELETE,
                Some(&ks.name),
                &[],
                &[],
                Payload::Empty,
                Keep::All,
            )
            .await;
        let mut op = self.blank_op(Who::worker(w), OpKind::Delete, Some(ks.name.clone()), ep);
        op.generation = Some(generation);
        self.record(op, &x)?;
        let version = Version {
            generation,
            deleted: true,
            size: 0,
            sha256: None,
        };
        self.settle(w, ks, version, x.outcome)
    }

    /// Applies a write's outcome to the key's state, the live counters and
    /// the `objects` row.
    pub(super) fn settle(
        &self,
        w: u32,
        ks: &mut KeyState,
        v: Version,
        outcome: Outcome,
    ) -> Result<Option<u32>, LedgerError> {
        match outcome {
            Outcome::Ok => {
                ks.acked = Some(v);
                ks.ambiguous.clear();
            }
            Outcome::Ambiguous | Outcome::Unavailable => ks.ambiguous.push(v),
            Outcome::Fail => {}
        }
        let now = ks.live();
        self.stats
            .live_bytes
            .fetch_add(now.0 - ks.counted.0, Ordering::Relaxed);
        self.stats
            .live_objects
            .fetch_add(now.1 - ks.counted.1, Ordering::Relaxed);
        ks.counted = now;
        let present = ks.candidates().filter(|v| !v.deleted).last().copied();
        self.ledger.send(Record::Object(Box::new(ObjectRecord {
            key: ks.name.clone(),
            owner: w,
            state: ks.state(),
            acked_generation: ks.acked.map(|v| v.generation),
            candidates: ks.candidates().map(|v| v.generation).collect(),
            visible_generation: None,
            size: present.map(|v| v.size),
            sha256: present.and_then(|v| v.sha256),
        })))?;
        Ok((outcome == Outcome::Ok).then_some(ks.index))
    }

    pub(super) async fn get(&self, who: Who, key: &str, ep: usize) -> Result<Outcome, LedgerError> {
        let x = self
            .send(
                OpKind::Get,
                ep,
                Method::GET,
                Some(key),
                &[],
                &[],
                Payload::Empty,
                Keep::Prefix(KEEP_PREFIX_BYTES),
            )
            .await;
        let mut op = self.blank_op(who, OpKind::Get, Some(key.to_string()), ep);
        if let Some(r) = x.resp.as_ref().filter(|r| r.status.is_success()) {
            op.detail = trace_detail(&r.body, 0);
            op.generation = r.generation();
            op.bytes = r.body_len;
            op.size = Some(r.body_len);
            op.sha256 = Some(r.sha256);
        }
        self.observe(op, &x)
    }

    pub(super) async fn head(
        &self,
        who: Who,
        key: &str,
        ep: usize,
    ) -> Result<Outcome, LedgerError> {
        let x = self
            .send(
                OpKind::Head,
                ep,
                Method::HEAD,
                Some(key),
                &[],
                &[],
                Payload::Empty,
                Keep::All,
            )
            .await;
        let mut op = self.blank_op(who, OpKind::Head, Some(key.to_string()), ep);
        if let Some(r) = x.resp.as_ref().filter(|r| r.status.is_success()) {
            op.generation = r.generation();
            op.size = r.content_length();
        }
        self.observe(op, &x)
    }

    pub(super) async fn range(
        &self,
        who: Who,
        key: &str,
        spec: RangeSpec,
        ep: usize,
    ) -> Result<(), LedgerError> {
        let headers = [("range", spec.header())];
        let x = self
            .send(
                OpKind::Range,
                ep,
                Method::GET,
                Some(key),
                &[],
                &headers,
                Payload::Empty,
                Keep::Prefix(KEEP_PREFIX_BYTES),
            )
            .await;
        let mut op = self.blank_op(who, OpKind::Range, Some(key.to_string()), ep);
        op.range_header = Some(spec.header());
        if let Some(r) = x.resp.as_ref().filter(|r| r.status.is_success()) {
            op.generation = r.generation();
            op.bytes = r.body_len;
            op.sha256 = Some(r.sha256);
            if let Some((first, last, total)) = r.content_range() {
                op.detail = trace_detail(&r.body, first);
                op.range = Some((first, last));
                op.size = Some(total);
            } else {
                // A 200 to a range request: the whole object came back.
                op.size = Some(r.body_len);
            }
        } else if let Some(r) = x.resp.as_ref().filter(|r| r.status.as_u16() == 416) {
            // "Shorter than the range's first byte": the size, if given.
            op.size = r.unsatisfied_total();
        }
        self.observe(op, &x).map(|_| ())
    }

    /// Records a read and the generation it saw; returns its outcome.
    pub(super) fn observe(&self, op: OpRecord, x: &Exchanged) -> Result<Outcome, LedgerError> {
        let seen = op.generation.zip(op.key.clone());
        self.record(op, x)?;
        if let Some((generation, key)) = seen {
            self.ledger.send(Record::Visible { key, generation })?;
        }
        Ok(x.outcome)
    }

    /// Walks up to `pages_max` ListObjectsV2 pages of the run's prefix,
    /// from just after `start_after`; each page is one operation.
    pub(super) async fn list(
        &self,
        who: Who,
        start_after: Option<String>,
        pages_max: u32,
        ep: usize,
    ) -> Result<(), LedgerError> {
        self.list_retrying(who, start_after, pages_max, ep, None)
            .await
    }

    /// `list`, where a page that got no answer is asked again through the
    /// next endpoint in turn until `retry_until` (the final verification).
    pub(super) async fn list_retrying(
        &self,
        who: Who,
        start_after: Option<String>,
        pages_max: u32,
        mut ep: usize,
        retry_until: Option<Instant>,
    ) -> Result<(), LedgerError> {
        let max = self.cfg.list_max_keys.to_string();
        let mut token: Option<String> = None;
        // The page covers keys after this one (exclusive): the start-after
        // key for the first page, then the previous page's last key.
        let mut after = start_after.clone();
        let mut page = 0;
        let mut pause = FINAL_RETRY_PAUSE;
        while page < pages_max {
            let mut query = vec![
                ("list-type", "2"),
                ("prefix", self.prefix.as_str()),
                ("max-keys", max.as_str()),
            ];
            if let Some(t) = &token {
                query.push(("continuation-token", t.as_str()));
            } else if let Some(s) = &start_after {
                query.push(("start-after", s.as_str()));
            }
            let x = self
                .send(
                    OpKind::List,
                    ep,
                    Method::GET,
                    None,
                    &query,
                    &[],
                    Payload::Empty,
                    Keep::All,
                )
                .await;
            let mut op = self.blank_op(who, OpKind::List, None, ep);
            let mut next = None;
            let mut x = x;
            if let Some(r) = x.resp.as_ref().filter(|r| r.status.is_success()) {
                op.bytes = r.body_len;
                match S3Client::parse_list(&r.body) {
                    Ok(parsed) => {
                        let detail = ListDetail {
                            page,
                            after: after.clone(),
                            start_after: if token.is_none() {
                                start_after.clone()
                            } else {
                                None
                            },
                            continuation: token.clone(),
                            max_keys: self.cfg.list_max_keys,
                            keys: parsed
                                .contents
                                .iter()
                                .map(|e| (e.key.clone(), e.size, e.etag.clone()))
                                .collect(),
                            truncated: parsed.is_truncated,
                            next: parsed.next_continuation_token.clone(),
                        };
                        op.detail =
                            Some(serde_json::to_string(&detail).expect("a LIST detail serialises"));
                        next = parsed
                            .next_continuation_token
                            .filter(|_| parsed.is_truncated);
                        if let Some(last) = parsed.contents.last() {
                            after = Some(last.key.clone());
                        }
                    }
                    Err(e) => {
                        // An unparsable answer observed nothing.
                        x.outcome = Outcome::Unavailable;
                        x.failure = Some(e);
                    }
                }
            }
            self.record(op, &x)?;
            if x.outcome != Outcome::Ok
                && let Some(until) = retry_until
                && Instant::now() < until
            {
                // The same page again, through the next endpoint.
                tokio::time::sleep(pause.min(until - Instant::now())).await;
                pause = (pause * 2).min(FINAL_RETRY_PAUSE_MAX);
                ep = self.route((ep + 1) % self.endpoints);
                continue;
            }
            pause = FINAL_RETRY_PAUSE;
            page += 1;
            match next {
                Some(t) => token = Some(t),
                None => break,
            }
        }
        Ok(())
    }

    /// Reads back one of the worker's own keys: GET, HEAD, a Range (first
    /// byte, last byte or a suffix), or a LIST starting just before it.
    pub(super) async fn readback(
        &self,
        w: u32,
        j: u32,
        ep: usize,
        how: u32,
        suffix: u64,
    ) -> Result<(), LedgerError> {
        let name = self.key_name(w, j);
        let who = Who {
            worker: w,
            origin: Origin::Readback,
        };
        match how {
            0 => self.get(who, &name, ep).await.map(|_| ()),
            1 => self.head(who, &name, ep).await.map(|_| ()),
            2 => {
                let spec = match suffix % 3 {
                    0 => RangeSpec::Window(0, 0),
                    1 => RangeSpec::Suffix(1),
                    _ => RangeSpec::Suffix(suffix),
                };
                self.range(who, &name, spec, ep).await
            }
            _ => {
                // From just before the key, so it is on the first page.
                let after = (j > 0).then(|| self.key_name(w, j - 1));
                let after = after.or_else(|| Some(format!("{}w{:03}/", self.prefix, w)));
                self.list(who, after, self.cfg.list_pages_max, ep).await
            }
        }
    }
}

/// What the first intact block header in `bytes` (which start at object
/// offset `offset`) says about who wrote them, as JSON for `ops.detail`.
/// The oracle uses it to tell another key's bytes from corrupted ones.
pub(super) fn trace_detail(bytes: &[u8], offset: u64) -> Option<String> {
    let trace = body::trace(bytes, offset)?;
    Some(serde_json::to_string(&TraceDetail { trace }).expect("a trace serialises"))
}

pub(super) fn failed(kind: OpKind, f: Failure) -> Exchanged {
    Exchanged {
        outcome: classify_error(kind, f.error.class),
        resp: None,
        t_invoke: f.t_invoke,
        t_return: f.t_return,
        failure: Some(f.error),
    }
}

/// A multipart upload that failed before its complete request was sent:
/// the key certainly did not change.
pub(super) fn before_complete(t_invoke: Instant, f: Failure) -> Exchanged {
    Exchanged {
        outcome: Outcome::Fail,
        resp: None,
        t_invoke,
        t_return: f.t_return,
        failure: Some(f.error),
    }
}
