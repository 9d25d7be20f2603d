//! The self-test's mutating proxy: an HTTP/1.1 proxy in front of each S3
//! endpoint that passes every request through unchanged (Host included,
//! so SigV4 signatures stay valid) and, when armed, injects one bug of a
//! chosen kind into one answer, then disarms.
//!
//! It follows every key's writes as they pass (in flight, acknowledged,
//! when) so that it injects only where the bug is certainly a violation:
//! into a key whose last write was acknowledged at least `SETTLED` ago
//! with nothing written since. Each injection is recorded with its key
//! and instant so the self-test can time the oracle's detection.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{CONTENT_LENGTH, HeaderMap, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::net::{TcpListener, TcpStream};

use crate::oracle::Class;
use crate::s3::GENERATION_HEADER;

/// A key's last acknowledged write must be at least this old, with none
/// since, before the proxy lies about it: a read arriving now then surely
/// started after that acknowledgement.
const SETTLED: Duration = Duration::from_secs(1);
/// Bound on an upstream exchange (the workload's own deadline is 30 s).
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(40);
/// Bodies larger than this are never buffered to be mutated or replayed.
const BUFFER_MAX: usize = 1 << 20;
/// GET answers kept for replays at most (only while a replay is armed).
const CACHED_MAX: usize = 64;
/// How long a LIST lie lingers on every page that covers its key (until
/// the key is written again): far past any bound a tolerance should
/// have, so a profile whose rules would absorb it fails the self-test.
const LINGER: Duration = Duration::from_secs(30);

type Body = BoxBody<Bytes, hyper::Error>;

/// The bugs the proxy can inject (issue 4's list).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mutation {
    /// A PUT of a new key answered 200 but never forwarded.
    UnstoredPut,
    /// A DELETE answered 204 but never forwarded.
    UnappliedDelete,
    /// A GET after an acknowledged overwrite answered with the key's older body.
    OlderGeneration,
    /// One byte of a GET body flipped.
    FlippedByte,
    /// A GET answered with another key's body.
    OtherKeysBody,
    /// A Range GET answered with its bytes shifted by one.
    ShiftedRange,
    /// A LIST page with one present key left out.
    ListEntryDropped,
    /// A deleted key added to LIST pages, on every page covering it for
    /// `LINGER`.
    ListEntryAdded,
    /// After an acknowledged overwrite, the key's older version (its size
    /// and ETag) on LIST pages, on every page showing the key for `LINGER`.
    ListOlderVersion,
    /// A HEAD answered with a Content-Length one too large.
    WrongHeadLength,
}

impl Mutation {
    pub const ALL: [Mutation; 10] = [
        Mutation::UnstoredPut,
        Mutation::UnappliedDelete,
        Mutation::OlderGeneration,
        Mutation::FlippedByte,
        Mutation::OtherKeysBody,
        Mutation::ShiftedRange,
        Mutation::ListEntryDropped,
        Mutation::ListEntryAdded,
        Mutation::ListOlderVersion,
        Mutation::WrongHeadLength,
    ];

    pub fn parse(s: &str) -> Option<Mutation> {
        Mutation::ALL.into_iter().find(|m| m.as_str() == s)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Mutation::UnstoredPut => "unstored-put",
            Mutation::UnappliedDelete => "unapplied-delete",
            Mutation::OlderGeneration => "older-generation",
            Mutation::FlippedByte => "flipped-byte",
            Mutation::OtherKeysBody => "other-keys-body",
            Mutation::ShiftedRange => "shifted-range",
            Mutation::ListEntryDropped => "list-entry-dropped",
            Mutation::ListEntryAdded => "list-entry-added",
            Mutation::ListOlderVersion => "list-older-version",
            Mutation::WrongHeadLength => "wrong-head-length",
        }
    }

    /// What the oracle must call it.
    pub fn expected(self) -> Class {
        match self {
            Mutation::UnstoredPut => Class::LostWrite,
            Mutation::UnappliedDelete => Class::Resurrection,
            Mutation::OlderGeneration => Class::StaleRead,
            Mutation::FlippedByte | Mutation::ShiftedRange => Class::Corruption,
            Mutation::OtherKeysBody => Class::Misdirected,
            Mutation::ListEntryDropped => Class::ListMissing,
            Mutation::ListEntryAdded => Class::ListGhost,
            Mutation::ListOlderVersion | Mutation::WrongHeadLength => Class::MetadataMismatch,
        }
    }
}

/// One lie the proxy told.
#[derive(Debug, Clone)]
pub struct Injection {
    pub mutation: Mutation,
    pub key: String,
    pub at: Instant,
    pub detail: String,
}

/// What the proxy knows of one key from the traffic it relayed.
#[derive(Debug, Default)]
struct KeyTrack {
    /// Writes sent upstream and not answered yet.
    in_flight: u32,
    /// The last write: (a DELETE?, acknowledged?, when it was answered).
    last: Option<(bool, bool, Instant)>,
    /// The proxy itself answered a write of this key: never use it again.
    tainted: bool,
    /// A full GET answer (status, headers, body) of a present value.
    cached: Option<(StatusCode, HeaderMap, Bytes)>,
    /// An acknowledged PUT was answered after `cached` was taken.
    overwritten_since_cached: bool,
    /// The key's entry (size, ETag) on the last LIST page that showed it.
    listed: Option<(u64, String)>,
    /// The entry listed before the last acknowledged overwrite, while it
    /// differs from what is listed now.
    superseded: Option<(u64, String)>,
    /// A write of the key got no clear answer: its value is uncertain.
    uncertain: bool,
}

impl KeyTrack {
    fn settled(&self, deleted: bool) -> bool {
        !self.tainted
            && self.in_flight == 0
            && matches!(self.last, Some((d, true, at)) if d == deleted && at.elapsed() >= SETTLED)
    }
}

#[derive(Default)]
struct State {
    armed: Option<Mutation>,
    keys: HashMap<String, KeyTrack>,
    injections: Vec<Injection>,
    /// LIST lies still told on every page covering their key.
    lingering: Vec<Linger>,
}

/// A LIST lie that lasts: the key, until when, and the entry it shows
/// (a copy of a neighbour's for a ghost; the older version otherwise).
#[derive(Debug, Clone)]
struct Linger {
    mutation: Mutation,
    key: String,
    until: Instant,
    entry: Option<(u64, String)>,
}

/// Shared by every proxy listener of a run.
#[derive(Clone, Default)]
pub struct Mutator {
    state: Arc<Mutex<State>>,
}

impl Mutator {
    /// Arms one mutation: the next answer where it is surely a violation
    /// gets it, then the proxy passes everything through again.
    pub fn arm(&self, m: Mutation) {
        self.lock().armed = Some(m);
    }

    /// Disarms, and forgets the answers kept for replays.
    pub fn disarm(&self) {
        let mut s = self.lock();
        s.armed = None;
        for t in s.keys.values_mut() {
            t.cached = None;
        }
    }

    pub fn armed(&self) -> Option<Mutation> {
        self.lock().armed
    }

    /// The injections made since index `from`.
    pub fn injections_since(&self, from: usize) -> Vec<Injection> {
        self.lock()
            .injections
            .get(from..)
            .unwrap_or_default()
            .to_vec()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain data behind.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Keeps telling LIST lie `m` about `key` for `LINGER`.
    fn linger(&self, m: Mutation, key: &str, entry: Option<(u64, String)>) {
        self.lock().lingering.push(Linger {
            mutation: m,
            key: key.to_string(),
            until: Instant::now() + LINGER,
            entry,
        });
    }

    /// Claims the armed mutation `m` for `key`, recording the injection.
    fn inject(&self, m: Mutation, key: &str, detail: String) -> bool {
        let mut s = self.lock();
        if s.armed != Some(m) {
            return false;
        }
        s.armed = None;
        s.keys.entry(key.to_string()).or_default().tainted = true;
        s.injections.push(Injection {
            mutation: m,
            key: key.to_string(),
            at: Instant::now(),
            detail,
        });
        tracing::info!(mutation = m.as_str(), key, "selftest: injected");
        true
    }
}

/// A proxy listening on loopback in front of one upstream endpoint.
pub struct Proxy {
    pub url: String,
    upstream: Arc<Mutex<SocketAddr>>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Starts a proxy to `upstream` (an `http://host:port` URL) on a free
    /// loopback port.
    pub async fn start(upstream: &str, bucket: &str, mutator: Mutator) -> std::io::Result<Proxy> {
        let addr = socket_of(upstream)?;
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let upstream = Arc::new(Mutex::new(addr));
        let target = upstream.clone();
        let prefix = format!("/{bucket}/");
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (mutator, target, prefix) = (mutator.clone(), target.clone(), prefix.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let upstream = *target.lock().unwrap_or_else(|e| e.into_inner());
                        handle(req, upstream, mutator.clone(), prefix.clone())
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(Proxy {
            url,
            upstream,
            task,
        })
    }

    /// Sends what went to `old` to `new` from now on (a dead node replaced).
    pub fn retarget(&self, old: &str, new: &str) {
        let (Ok(old), Ok(new)) = (socket_of(old), socket_of(new)) else {
            return;
        };
        let mut up = self.upstream.lock().unwrap_or_else(|e| e.into_inner());
        if *up == old {
            *up = new;
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn socket_of(url: &str) -> std::io::Result<SocketAddr> {
    let bad = || std::io::Error::other(format!("{url}: not an http://host:port URL"));
    let rest = url.strip_prefix("http://").ok_or_else(bad)?;
    rest.trim_end_matches('/').parse().map_err(|_| bad())
}

/// What a request is, as far as the proxy cares.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Op {
    Put {
        generation: Option<u64>,
    },
    CompleteMultipart,
    Delete,
    /// `ranged`: any Range header; `range`: a `bytes=a-b` window.
    Get {
        ranged: bool,
        range: Option<(u64, u64)>,
    },
    Head,
    List,
    Other,
}

fn classify(req: &Request<Incoming>, prefix: &str) -> (Op, Option<String>) {
    let path = req.uri().path();
    let query = req.uri().query().unwrap_or("");
    let key = path
        .strip_prefix(prefix)
        .filter(|k| !k.is_empty())
        .map(percent_decode);
    let has = |name: &str| query.split('&').any(|p| p.split('=').next() == Some(name));
    let op = match (req.method(), &key) {
        (&Method::GET, None) if has("list-type") => Op::List,
        (&Method::PUT, Some(_)) if !has("uploadId") => Op::Put {
            generation: req
                .headers()
                .get(GENERATION_HEADER)
                .and_then(|v| v.to_str().ok()?.parse().ok()),
        },
        (&Method::POST, Some(_)) if has("uploadId") => Op::CompleteMultipart,
        (&Method::DELETE, Some(_)) if !has("uploadId") => Op::Delete,
        (&Method::GET, Some(_)) if !has("uploadId") => Op::Get {
            ranged: req.headers().contains_key("range"),
            range: req
                .headers()
                .get("range")
                .and_then(|v| v.to_str().ok())
                .and_then(window),
        },
        (&Method::HEAD, Some(_)) => Op::Head,
        _ => Op::Other,
    };
    (op, key)
}

/// `bytes=a-b` with both ends: (a, b).
fn window(spec: &str) -> Option<(u64, u64)> {
    let (a, b) = spec.strip_prefix("bytes=")?.split_once('-')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(v) = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

fn answer(
    status: StatusCode,
    headers: &[(&'static str, &str)],
    body: impl Into<Bytes>,
) -> Response<Body> {
    let mut resp = Response::new(full(body));
    *resp.status_mut() = status;
    for (k, v) in headers {
        if let Ok(v) = HeaderValue::from_str(v) {
            resp.headers_mut().insert(*k, v);
        }
    }
    resp
}

async fn handle(
    req: Request<Incoming>,
    upstream: SocketAddr,
    mutator: Mutator,
    prefix: String,
) -> Result<Response<Body>, hyper::Error> {
    let (op, key) = classify(&req, &prefix);
    let armed = mutator.armed();
    // Lies told instead of forwarding a write.
    if let Some(key) = &key {
        let lie = {
            let s = mutator.lock();
            let track = s.keys.get(key);
            match (armed, &op) {
                // A PUT of a key that is surely absent now: never written,
                // or deleted and settled.
                (Some(Mutation::UnstoredPut), Op::Put { .. }) => track.is_none_or(|t| {
                    t.last.is_none() && t.in_flight == 0 && !t.tainted || t.settled(true)
                }),
                (Some(Mutation::UnappliedDelete), Op::Delete) => {
                    track.is_some_and(|t| t.settled(false))
                }
                _ => false,
            }
        };
        if lie {
            let m = armed.expect("a lie needs an armed mutation");
            if mutator.inject(
                m,
                key,
                format!("{op:?} answered by the proxy, never forwarded"),
            ) {
                // Drain what the client sends, so it sees a normal exchange.
                let _ = req.into_body().collect().await;
                return Ok(match m {
                    Mutation::UnstoredPut => answer(
                        StatusCode::OK,
                        &[("etag", "\"0123456789abcdef0123456789abcdef\"")],
                        Bytes::new(),
                    ),
                    _ => answer(StatusCode::NO_CONTENT, &[], Bytes::new()),
                });
            }
        }
    }
    let is_write = matches!(op, Op::Put { .. } | Op::CompleteMultipart | Op::Delete);
    if let (true, Some(k)) = (is_write, &key) {
        let mut s = mutator.lock();
        s.keys.entry(k.clone()).or_default().in_flight += 1;
        // A new write ends the lies told of the key's LIST entry.
        s.lingering.retain(|l| l.key != *k);
    }
    // Replays instead of forwarding a read.
    if let (Some(k), Op::Get { ranged: false, .. }) = (&key, &op) {
        let replay = {
            let s = mutator.lock();
            match armed {
                Some(Mutation::OlderGeneration) => s.keys.get(k).and_then(|t| {
                    (t.overwritten_since_cached && t.settled(false))
                        .then(|| t.cached.clone())
                        .flatten()
                }),
                Some(Mutation::OtherKeysBody)
                    if s.keys.get(k).is_some_and(|t| t.settled(false)) =>
                {
                    s.keys
                        .iter()
                        .filter(|(other, _)| *other != k)
                        .find_map(|(_, t)| t.cached.clone().filter(|c| c.2.len() >= 8192))
                }
                _ => None,
            }
        };
        if let Some((status, headers, body)) = replay {
            let m = armed.expect("a replay needs an armed mutation");
            if mutator.inject(
                m,
                k,
                format!("GET answered with a cached body of {} bytes", body.len()),
            ) {
                let mut resp = Response::new(full(body));
                *resp.status_mut() = status;
                *resp.headers_mut() = headers;
                resp.headers_mut().remove(CONTENT_LENGTH);
                return Ok(resp);
            }
        }
    }
    let resp = match forward(req, upstream).await {
        Ok(resp) => resp,
        Err(e) => {
            if let (true, Some(k)) = (is_write, &key) {
                let mut s = mutator.lock();
                let t = s.keys.entry(k.clone()).or_default();
                t.in_flight -= 1;
                t.last = Some((op == Op::Delete, false, Instant::now()));
                t.uncertain = true;
            }
            return Ok(answer(StatusCode::BAD_GATEWAY, &[], format!("proxy: {e}")));
        }
    };
    let status = resp.status();
    if let (true, Some(k)) = (is_write, &key) {
        let mut s = mutator.lock();
        let t = s.keys.entry(k.clone()).or_default();
        t.in_flight -= 1;
        t.last = Some((op == Op::Delete, status.is_success(), Instant::now()));
        if op != Op::Delete && status.is_success() && t.cached.is_some() {
            t.overwritten_since_cached = true;
        }
        // 5xx, 408 and 429 leave the write's effect uncertain.
        t.uncertain |= !status.is_success() && !status.is_client_error()
            || matches!(status.as_u16(), 408 | 429);
        if status.is_success() {
            // The entry listed before an overwrite is an older version.
            t.superseded = match op {
                Op::Delete => None,
                _ => t.listed.take(),
            };
            t.listed = None;
        }
    }
    match (&op, key) {
        (Op::Get { ranged, range }, Some(k)) if status == StatusCode::OK || range.is_some() => {
            mutate_get(resp, &k, *ranged, *range, &mutator).await
        }
        (Op::Head, Some(k)) if status == StatusCode::OK => {
            let mut resp = resp;
            let settled = mutator
                .lock()
                .keys
                .get(&k)
                .is_some_and(|t| t.settled(false));
            let length = resp
                .headers()
                .get(CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
            if let (true, Some(n)) = (settled, length)
                && mutator.inject(
                    Mutation::WrongHeadLength,
                    &k,
                    format!("HEAD Content-Length {n} answered as {}", n + 1),
                )
            {
                resp.headers_mut()
                    .insert(CONTENT_LENGTH, HeaderValue::from(n + 1));
            }
            Ok(resp.map(|b| b.boxed()))
        }
        (Op::List, _) if status == StatusCode::OK => mutate_list(resp, &mutator).await,
        _ => Ok(resp.map(|b| b.boxed())),
    }
}

/// Sends a request upstream over a fresh connection, unchanged.
async fn forward(
    req: Request<Incoming>,
    upstream: SocketAddr,
) -> Result<Response<Incoming>, String> {
    let exchange = async {
        let stream = TcpStream::connect(upstream)
            .await
            .map_err(|e| format!("connect {upstream}: {e}"))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        sender.send_request(req).await.map_err(|e| e.to_string())
    };
    tokio::time::timeout(UPSTREAM_TIMEOUT, exchange)
        .await
        .map_err(|_| format!("no answer from {upstream} within {UPSTREAM_TIMEOUT:?}"))?
}

/// A GET's answer: cached for later replays, and flipped or shifted when
/// armed so.
async fn mutate_get(
    resp: Response<Incoming>,
    key: &str,
    ranged: bool,
    range: Option<(u64, u64)>,
    mutator: &Mutator,
) -> Result<Response<Body>, hyper::Error> {
    let length = resp
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
    let armed = mutator.armed();
    let (settled, wants_cache) = {
        let s = mutator.lock();
        let track = s.keys.get(key);
        let cached = s.keys.values().filter(|t| t.cached.is_some()).count();
        (
            track.is_some_and(|t| t.settled(false)),
            !ranged
                && matches!(
                    armed,
                    Some(Mutation::OlderGeneration | Mutation::OtherKeysBody)
                )
                && cached < CACHED_MAX
                && track.is_none_or(|t| t.cached.is_none()),
        )
    };
    let mutate = settled
        && match (armed, range) {
            (Some(Mutation::FlippedByte), None) => !ranged && length.is_some_and(|n| n >= 64),
            (Some(Mutation::ShiftedRange), Some((a, b))) => {
                resp.status() == StatusCode::PARTIAL_CONTENT && b > a
            }
            _ => false,
        };
    if !(mutate || wants_cache) || length.is_none_or(|n| n > BUFFER_MAX) {
        return Ok(resp.map(|b| b.boxed()));
    }
    let (parts, body) = resp.into_parts();
    let mut bytes = body.collect().await?.to_bytes().to_vec();
    if wants_cache && parts.status == StatusCode::OK {
        let mut s = mutator.lock();
        let t = s.keys.entry(key.to_string()).or_default();
        t.cached = Some((
            parts.status,
            parts.headers.clone(),
            Bytes::from(bytes.clone()),
        ));
        t.overwritten_since_cached = false;
    }
    if mutate {
        let m = armed.expect("mutate needs an armed mutation");
        let detail = match m {
            Mutation::FlippedByte => {
                let at = bytes.len() / 2;
                bytes[at] ^= 0x01;
                format!("byte {at} of {} flipped", bytes.len())
            }
            _ => {
                bytes.rotate_left(1);
                format!("{} bytes of {range:?} shifted by one", bytes.len())
            }
        };
        if !mutator.inject(m, key, detail) {
            // Another answer claimed it first: undo.
            match m {
                Mutation::FlippedByte => {
                    let at = bytes.len() / 2;
                    bytes[at] ^= 0x01;
                }
                _ => bytes.rotate_right(1),
            }
        }
    }
    Ok(Response::from_parts(parts, full(bytes)))
}

/// A LIST page's answer: its entries followed (what each key is listed
/// with), then, when armed, one present key dropped, one deleted key
/// added or one overwritten key shown with its older version, and the
/// lies still lingering told again on every page they concern.
async fn mutate_list(
    resp: Response<Incoming>,
    mutator: &Mutator,
) -> Result<Response<Body>, hyper::Error> {
    let (mut parts, body) = resp.into_parts();
    let bytes = body.collect().await?.to_bytes();
    let mut text = String::from_utf8_lossy(&bytes).into_owned();
    parts.headers.remove(CONTENT_LENGTH);
    let Ok(page) = crate::s3::S3Client::parse_list(&bytes) else {
        return Ok(Response::from_parts(parts, full(text)));
    };
    let keys: Vec<&str> = page.contents.iter().map(|e| e.key.as_str()).collect();
    let (Some(&first), Some(&last)) = (keys.first(), keys.last()) else {
        return Ok(Response::from_parts(parts, full(text)));
    };
    let mut s = mutator.lock();
    for e in &page.contents {
        let t = s.keys.entry(e.key.clone()).or_default();
        let entry = (e.size, e.etag.clone().unwrap_or_default());
        if t.superseded.as_ref() == Some(&entry) {
            t.superseded = None;
        }
        t.listed = Some(entry);
    }
    let now = Instant::now();
    match s.armed {
        Some(Mutation::ListEntryDropped) => {
            // Not the last entry of the page: that one bounds what a
            // truncated page covers.
            let victim = keys[..keys.len() - 1]
                .iter()
                .find(|k| s.keys.get(**k).is_some_and(|t| t.settled(false)))
                .map(|k| k.to_string());
            if let Some(victim) = victim
                && let Some(out) = remove_entry(&text, &victim)
            {
                drop(s);
                if mutator.inject(
                    Mutation::ListEntryDropped,
                    &victim,
                    "left out of a LIST page".into(),
                ) {
                    text = out;
                }
                s = mutator.lock();
            }
        }
        Some(Mutation::ListEntryAdded) => {
            let ghost = s
                .keys
                .iter()
                .find(|(k, t)| k.as_str() > first && k.as_str() < last && t.settled(true))
                .map(|(k, _)| k.clone());
            if let Some(ghost) = ghost {
                drop(s);
                let detail = format!(
                    "added to every LIST page covering it for {} s",
                    LINGER.as_secs()
                );
                if mutator.inject(Mutation::ListEntryAdded, &ghost, detail) {
                    mutator.linger(Mutation::ListEntryAdded, &ghost, None);
                }
                s = mutator.lock();
            }
        }
        Some(Mutation::ListOlderVersion) => {
            let older = keys.iter().find_map(|k| {
                let t = s.keys.get(*k)?;
                let old = t.superseded.clone()?;
                (t.settled(false) && !t.uncertain && t.listed.as_ref() != Some(&old))
                    .then(|| (k.to_string(), old))
            });
            if let Some((key, old)) = older {
                drop(s);
                let detail = format!(
                    "listed with its older version ({} bytes, ETag {}) on every LIST page showing it for {} s",
                    old.0,
                    old.1,
                    LINGER.as_secs()
                );
                if mutator.inject(Mutation::ListOlderVersion, &key, detail) {
                    mutator.linger(Mutation::ListOlderVersion, &key, Some(old));
                }
                s = mutator.lock();
            }
        }
        _ => {}
    }
    s.lingering.retain(|l| l.until > now);
    for l in &s.lingering {
        let changed = match (l.mutation, &l.entry) {
            (Mutation::ListEntryAdded, _)
                if l.key.as_str() > first && l.key.as_str() < last && !keys.contains(&&*l.key) =>
            {
                add_entry(&text, &keys, &l.key)
            }
            (Mutation::ListOlderVersion, Some((size, etag))) if keys.contains(&&*l.key) => {
                set_entry(&text, &l.key, *size, etag)
            }
            _ => None,
        };
        if let Some(out) = changed {
            text = out;
        }
    }
    Ok(Response::from_parts(parts, full(text)))
}

/// The `<Contents>` element of `key` in a ListObjectsV2 document, as a
/// byte range.
fn entry_span(xml: &str, key: &str) -> Option<(usize, usize)> {
    let at = xml.find(&format!("<Key>{key}</Key>"))?;
    let start = xml[..at].rfind("<Contents>")?;
    let end = at + xml[at..].find("</Contents>")? + "</Contents>".len();
    Some((start, end))
}

/// `key`'s entry with another size and ETag.
fn set_entry(xml: &str, key: &str, size: u64, etag: &str) -> Option<String> {
    let (a, b) = entry_span(xml, key)?;
    let mut entry = xml[a..b].to_string();
    for (tag, value) in [
        ("Size", size.to_string()),
        ("ETag", quick_xml::escape::escape(etag).into_owned()),
    ] {
        let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
        // A store that lists no ETag gets only the size changed.
        let Some(at) = entry.find(&open) else {
            continue;
        };
        let from = at + open.len();
        let to = from + entry[from..].find(&close)?;
        entry.replace_range(from..to, &value);
    }
    Some(format!("{}{entry}{}", &xml[..a], &xml[b..]))
}

fn remove_entry(xml: &str, key: &str) -> Option<String> {
    let (a, b) = entry_span(xml, key)?;
    Some(format!("{}{}", &xml[..a], &xml[b..]))
}

/// Adds `ghost` before the first listed key that sorts after it, as a copy
/// of that key's entry.
fn add_entry(xml: &str, keys: &[&str], ghost: &str) -> Option<String> {
    let next = keys.iter().find(|k| **k > ghost)?;
    let (a, b) = entry_span(xml, next)?;
    let copy = xml[a..b].replace(
        &format!("<Key>{next}</Key>"),
        &format!("<Key>{ghost}</Key>"),
    );
    Some(format!("{}{copy}{}", &xml[..a], &xml[a..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: &str = "<ListBucketResult><Contents><Key>p/a</Key><Size>1</Size></Contents>\
        <Contents><Key>p/c</Key><Size>3</Size></Contents></ListBucketResult>";

    #[test]
    fn list_entries_are_removed_and_added_in_key_order() {
        assert_eq!(
            remove_entry(PAGE, "p/a").unwrap(),
            "<ListBucketResult><Contents><Key>p/c</Key><Size>3</Size></Contents></ListBucketResult>"
        );
        let added = add_entry(PAGE, &["p/a", "p/c"], "p/b").unwrap();
        let page = crate::s3::S3Client::parse_list(added.as_bytes()).unwrap();
        let keys: Vec<&str> = page.contents.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys, vec!["p/a", "p/b", "p/c"]);
        assert_eq!(remove_entry(PAGE, "p/zz"), None);
        let with_etag = PAGE.replace(
            "<Size>3</Size>",
            "<Size>3</Size><ETag>&quot;e3&quot;</ETag>",
        );
        let older = set_entry(&with_etag, "p/c", 7, "\"e1\"").unwrap();
        let page = crate::s3::S3Client::parse_list(older.as_bytes()).unwrap();
        assert_eq!(page.contents[1].size, 7);
        assert_eq!(page.contents[1].etag.as_deref(), Some("\"e1\""));
        assert_eq!(page.contents[0].size, 1);
    }

    #[test]
    fn every_mutation_names_a_distinct_expectation_but_two_corruptions_and_two_mismatches() {
        let mut classes: Vec<Class> = Mutation::ALL.iter().map(|m| m.expected()).collect();
        classes.sort();
        classes.dedup();
        assert_eq!(classes.len(), Mutation::ALL.len() - 2);
        assert_eq!(percent_decode("run%2Fa%20b"), "run/a b");
        assert_eq!(window("bytes=3-9"), Some((3, 9)));
        assert_eq!(window("bytes=-9"), None);
    }
}
