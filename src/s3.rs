//! The project's own S3 client: path-style requests over reqwest, signed
//! with SigV4 by `aws-sigv4` (the signer the AWS SDK for Rust itself uses).
//!
//! It never retries: a chaos runner must see every attempt, so one call is
//! one request, and a failure carries an [`ErrorClass`] that says whether
//! any byte was sent. Idle connections are not pooled, so a request is
//! never silently replayed on a fresh connection after a pooled one turned
//! out dead. Every request has a connect, a first-byte and a total deadline.
//!
//! Bodies stream: uploads are generated slice by slice from a [`Body`]
//! (signed with their precomputed sha256, so the server verifies what
//! arrived), and downloads are hashed as they arrive, keeping only what the
//! caller asks for.

use std::time::{Duration, Instant, SystemTime};

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{
    PayloadChecksumKind, PercentEncodingMode, SignableBody, SignableRequest, SigningSettings,
    UriPathNormalizationMode, sign,
};
use aws_sigv4::sign::v4;
use futures::StreamExt;
use reqwest::{Method, StatusCode};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::history::ErrorClass;
use crate::history::body::{Body, slice_sha256};

/// User metadata header carrying an object's generation.
pub const GENERATION_HEADER: &str = "x-amz-meta-faultline-generation";

/// Upload pieces are generated this large.
const UPLOAD_CHUNK_BYTES: usize = 64 * 1024;

/// Where and as whom to talk S3.
#[derive(Clone)]
pub struct S3Config {
    /// Base URL, e.g. `http://127.0.0.1:3900`.
    pub endpoint: String,
    pub region: String,
    pub bucket: String,
    pub access_key_id: String,
    pub secret_access_key: String,
}

impl std::fmt::Debug for S3Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Config")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("bucket", &self.bucket)
            .field("access_key_id", &self.access_key_id)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// Establishing the TCP connection.
    pub connect: Duration,
    /// From sending a read until the response headers arrive.
    pub first_byte: Duration,
    /// The whole exchange, body included.
    pub total: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(2),
            first_byte: Duration::from_secs(5),
            total: Duration::from_secs(30),
        }
    }
}

/// A request that got no complete answer.
#[derive(Debug, thiserror::Error)]
#[error("{}: {message}", class.as_str())]
pub struct S3Error {
    pub class: ErrorClass,
    /// The status, when the failure is an HTTP status the caller rejected.
    pub status: Option<u16>,
    pub message: String,
}

impl S3Error {
    fn new(class: ErrorClass, message: impl Into<String>) -> S3Error {
        S3Error {
            class,
            status: None,
            message: message.into(),
        }
    }
}

/// What to send.
pub enum Payload<'a> {
    Empty,
    Bytes(Vec<u8>),
    /// `body`'s bytes `[start, end)`, generated while sending. Signing
    /// needs their sha256; pass it when the caller already has it, so the
    /// slice is not hashed twice.
    Slice {
        body: &'a Body,
        start: u64,
        end: u64,
        sha256: Option<[u8; 32]>,
    },
}

/// What to keep of the response body (it is always hashed).
#[derive(Debug, Clone, Copy)]
pub enum Keep {
    /// Every byte (small bodies, ranges, XML).
    All,
    /// Only the first N bytes (enough to trace whose bytes they are).
    Prefix(usize),
}

/// A complete exchange.
#[derive(Debug)]
pub struct Response {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    /// The kept part of the body.
    pub body: Vec<u8>,
    /// How many body bytes arrived.
    pub body_len: u64,
    pub sha256: [u8; 32],
    /// Just before the request was handed to the connection.
    pub t_invoke: Instant,
    /// Just after the last body byte arrived.
    pub t_return: Instant,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The object's ETag: the header, or for a completed multipart upload
    /// the `ETag` element of its XML answer.
    pub fn etag(&self) -> Option<String> {
        if let Some(e) = self.header("etag") {
            return Some(e.to_string());
        }
        #[derive(serde::Deserialize)]
        struct Completed {
            #[serde(rename = "ETag")]
            etag: String,
        }
        let text = std::str::from_utf8(&self.body).ok()?;
        if !text.contains("CompleteMultipartUploadResult") {
            return None;
        }
        quick_xml::de::from_str::<Completed>(text)
            .ok()
            .map(|c| c.etag)
    }

    /// The generation the object's user metadata names.
    pub fn generation(&self) -> Option<u64> {
        self.header(GENERATION_HEADER).and_then(|v| v.parse().ok())
    }

    pub fn content_length(&self) -> Option<u64> {
        self.header("content-length").and_then(|v| v.parse().ok())
    }

    /// `(first, last, total)` from `Content-Range: bytes first-last/total`.
    pub fn content_range(&self) -> Option<(u64, u64, u64)> {
        let v = self.header("content-range")?.strip_prefix("bytes ")?;
        let (range, total) = v.split_once('/')?;
        let (first, last) = range.split_once('-')?;
        Some((first.parse().ok()?, last.parse().ok()?, total.parse().ok()?))
    }

    /// The size a 416 answer reports, `Content-Range: bytes */total`.
    pub fn unsatisfied_total(&self) -> Option<u64> {
        self.header("content-range")?
            .strip_prefix("bytes */")?
            .parse()
            .ok()
    }
}

/// A failed exchange with its timing (for the history).
#[derive(Debug)]
pub struct Failure {
    pub error: S3Error,
    pub t_invoke: Instant,
    pub t_return: Instant,
}

/// One ListObjectsV2 page.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ListPage {
    #[serde(default)]
    pub contents: Vec<ListEntry>,
    #[serde(default)]
    pub is_truncated: bool,
    pub next_continuation_token: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ListEntry {
    pub key: String,
    pub size: u64,
    #[serde(rename = "ETag")]
    pub etag: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct InitiateMultipartUploadResult {
    upload_id: String,
}

#[derive(Clone)]
pub struct S3Client {
    cfg: S3Config,
    http: reqwest::Client,
    timeouts: Timeouts,
}

impl S3Client {
    pub fn new(cfg: S3Config, timeouts: Timeouts) -> S3Client {
        let http = reqwest::Client::builder()
            .connect_timeout(timeouts.connect)
            .pool_max_idle_per_host(0)
            .no_proxy()
            .build()
            // Building fails only if the TLS backend cannot initialise, and
            // this build has none.
            .expect("reqwest client without TLS always builds");
        S3Client {
            cfg,
            http,
            timeouts,
        }
    }

    pub fn config(&self) -> &S3Config {
        &self.cfg
    }

    /// PUT an object; 2xx only. Used by probes and tests.
    pub async fn put_object(&self, key: &str, body: Vec<u8>) -> Result<Response, S3Error> {
        let r = self.exchange(
            Method::PUT,
            Some(key),
            &[],
            &[],
            Payload::Bytes(body),
            Keep::All,
        );
        success(r.await.map_err(|f| f.error)?)
    }

    /// GET an object; 2xx or 404 (an observation of absence).
    pub async fn get_object(&self, key: &str) -> Result<Response, S3Error> {
        let r = self.exchange(Method::GET, Some(key), &[], &[], Payload::Empty, Keep::All);
        let resp = r.await.map_err(|f| f.error)?;
        if resp.status == StatusCode::NOT_FOUND {
            return Ok(resp);
        }
        success(resp)
    }

    /// Parses a ListObjectsV2 answer.
    pub fn parse_list(body: &[u8]) -> Result<ListPage, S3Error> {
        let text = std::str::from_utf8(body)
            .map_err(|e| S3Error::new(ErrorClass::Transport, e.to_string()))?;
        quick_xml::de::from_str(text).map_err(|e| {
            S3Error::new(
                ErrorClass::Transport,
                format!("bad ListObjectsV2 XML ({e})"),
            )
        })
    }

    /// Starts a multipart upload; returns its id.
    pub async fn create_multipart(&self, key: &str, generation: u64) -> Result<String, Failure> {
        let gen_header = [(GENERATION_HEADER, generation.to_string())];
        let resp = self
            .exchange(
                Method::POST,
                Some(key),
                &[("uploads", "")],
                &gen_header,
                Payload::Empty,
                Keep::All,
            )
            .await?;
        let resp = success_timed(resp)?;
        let parsed: InitiateMultipartUploadResult =
            quick_xml::de::from_str(&String::from_utf8_lossy(&resp.body)).map_err(|e| Failure {
                error: S3Error::new(
                    ErrorClass::Transport,
                    format!("bad InitiateMultipartUpload XML ({e})"),
                ),
                t_invoke: resp.t_invoke,
                t_return: resp.t_return,
            })?;
        Ok(parsed.upload_id)
    }

    /// Uploads one part; returns its ETag.
    pub async fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        part: u32,
        payload: Payload<'_>,
    ) -> Result<String, Failure> {
        let part_s = part.to_string();
        let query = [("partNumber", part_s.as_str()), ("uploadId", upload_id)];
        let resp = self
            .exchange(Method::PUT, Some(key), &query, &[], payload, Keep::All)
            .await?;
        let resp = success_timed(resp)?;
        resp.etag().ok_or_else(|| Failure {
            error: S3Error::new(ErrorClass::Transport, "UploadPart answer without ETag"),
            t_invoke: resp.t_invoke,
            t_return: resp.t_return,
        })
    }

    /// Completes a multipart upload from `(part number, ETag)` pairs.
    pub async fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[(u32, String)],
    ) -> Result<Response, Failure> {
        let mut xml = String::from("<CompleteMultipartUpload>");
        for (n, etag) in parts {
            xml.push_str(&format!(
                "<Part><PartNumber>{n}</PartNumber><ETag>{etag}</ETag></Part>"
            ));
        }
        xml.push_str("</CompleteMultipartUpload>");
        let query = [("uploadId", upload_id)];
        let resp = self
            .exchange(
                Method::POST,
                Some(key),
                &query,
                &[],
                Payload::Bytes(xml.into_bytes()),
                Keep::All,
            )
            .await?;
        // S3 may answer 200 with an error document after a long complete.
        if resp.status.is_success() && String::from_utf8_lossy(&resp.body).contains("<Error>") {
            return Err(Failure {
                error: S3Error {
                    class: ErrorClass::ServerError,
                    status: Some(resp.status.as_u16()),
                    message: String::from_utf8_lossy(&resp.body).into_owned(),
                },
                t_invoke: resp.t_invoke,
                t_return: resp.t_return,
            });
        }
        success_timed(resp)
    }

    /// Aborts a multipart upload (best effort, for cleanup after a failure).
    pub async fn abort_multipart(&self, key: &str, upload_id: &str) -> Result<Response, Failure> {
        let query = [("uploadId", upload_id)];
        self.exchange(
            Method::DELETE,
            Some(key),
            &query,
            &[],
            Payload::Empty,
            Keep::All,
        )
        .await
    }

    /// Sends one signed request and reads the whole answer. Never retries.
    /// Any HTTP status is a response; only a missing answer is a failure.
    pub async fn exchange(
        &self,
        method: Method,
        key: Option<&str>,
        query: &[(&str, &str)],
        headers: &[(&str, String)],
        payload: Payload<'_>,
        keep: Keep,
    ) -> Result<Response, Failure> {
        let url = self.url(key, query);
        let (payload_hash, body) = match payload {
            Payload::Empty => (
                hex::encode(Sha256::digest(b"")),
                reqwest::Body::from(Vec::new()),
            ),
            Payload::Bytes(b) => (hex::encode(Sha256::digest(&b)), reqwest::Body::from(b)),
            Payload::Slice {
                body,
                start,
                end,
                sha256,
            } => {
                let hash = sha256.unwrap_or_else(|| slice_sha256(body, start, end));
                let body = body.clone();
                let pieces = futures::stream::iter(slices(start, end, UPLOAD_CHUNK_BYTES as u64))
                    .map(move |(s, e)| Ok::<_, std::io::Error>(body.slice(s, e)));
                (hex::encode(hash), reqwest::Body::wrap_stream(pieces))
            }
        };
        let signed = self.sign(&method, &url, headers, &payload_hash);
        let now = Instant::now();
        let signed = signed.map_err(|message| Failure {
            error: S3Error::new(ErrorClass::NotSent, message),
            t_invoke: now,
            t_return: now,
        })?;
        let mut req = self
            .http
            .request(method.clone(), &url)
            .timeout(self.timeouts.total);
        for (name, value) in headers {
            req = req.header(*name, value);
        }
        for (name, value) in signed {
            req = req.header(name, value);
        }
        let req = req.body(body);
        // Reads send nothing after the headers, so their first byte must
        // come quickly; a write's answer comes after its upload.
        let first_byte = if method == Method::GET || method == Method::HEAD {
            self.timeouts.first_byte
        } else {
            self.timeouts.total
        };
        let t_invoke = Instant::now();
        let fail = |error: S3Error| Failure {
            error,
            t_invoke,
            t_return: Instant::now(),
        };
        let resp = match tokio::time::timeout(first_byte, req.send()).await {
            Err(_) => {
                return Err(fail(S3Error::new(
                    ErrorClass::Timeout,
                    "no response headers in time",
                )));
            }
            Ok(Err(e)) => return Err(fail(classify(&e))),
            Ok(Ok(resp)) => resp,
        };
        let status = resp.status();
        let headers = resp.headers().clone();
        let expected_len = if method == Method::HEAD {
            None
        } else {
            resp.content_length()
        };
        let mut hasher = Sha256::new();
        let mut kept = Vec::new();
        let mut received = 0u64;
        let mut stream = resp.bytes_stream();
        while let Some(piece) = stream.next().await {
            let piece = match piece {
                Ok(p) => p,
                Err(e) => {
                    let mut error = classify(&e);
                    if expected_len.is_some_and(|n| received < n)
                        && error.class != ErrorClass::Timeout
                    {
                        error.class = ErrorClass::Truncated;
                        error.message = format!(
                            "body ended after {received} of {} bytes: {}",
                            expected_len.unwrap_or(0),
                            error.message
                        );
                    }
                    return Err(fail(error));
                }
            };
            hasher.update(&piece);
            let room = match keep {
                Keep::All => piece.len(),
                Keep::Prefix(n) => n.saturating_sub(kept.len()).min(piece.len()),
            };
            kept.extend_from_slice(&piece[..room]);
            received += piece.len() as u64;
        }
        if let Some(n) = expected_len.filter(|&n| received < n) {
            return Err(fail(S3Error::new(
                ErrorClass::Truncated,
                format!("body ended after {received} of {n} bytes"),
            )));
        }
        Ok(Response {
            status,
            headers,
            body: kept,
            body_len: received,
            sha256: hasher.finalize().into(),
            t_invoke,
            t_return: Instant::now(),
        })
    }

    fn sign(
        &self,
        method: &Method,
        url: &str,
        headers: &[(&str, String)],
        payload_hash: &str,
    ) -> Result<Vec<(String, String)>, String> {
        let mut settings = SigningSettings::default();
        settings.payload_checksum_kind = PayloadChecksumKind::XAmzSha256;
        settings.percent_encoding_mode = PercentEncodingMode::Single;
        settings.uri_path_normalization_mode = UriPathNormalizationMode::Disabled;
        let identity = Credentials::new(
            &self.cfg.access_key_id,
            &self.cfg.secret_access_key,
            None,
            None,
            "faultline",
        )
        .into();
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region(&self.cfg.region)
            .name("s3")
            .time(SystemTime::now())
            .settings(settings)
            .build()
            .map_err(|e| e.to_string())?
            .into();
        let signable = SignableRequest::new(
            method.as_str(),
            url,
            headers.iter().map(|(k, v)| (*k, v.as_str())),
            SignableBody::Precomputed(payload_hash.to_string()),
        )
        .map_err(|e| e.to_string())?;
        let (instructions, _) = sign(signable, &params)
            .map_err(|e| e.to_string())?
            .into_parts();
        Ok(instructions
            .headers()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect())
    }

    fn url(&self, key: Option<&str>, query: &[(&str, &str)]) -> String {
        let mut url = format!(
            "{}/{}",
            self.cfg.endpoint.trim_end_matches('/'),
            self.cfg.bucket
        );
        if let Some(key) = key {
            url.push('/');
            url.push_str(&encode(key, false));
        }
        if !query.is_empty() {
            // SigV4 wants the canonical query sorted; sending it sorted keeps
            // what is signed and what is sent obviously the same.
            let mut q: Vec<_> = query
                .iter()
                .map(|(k, v)| (encode(k, true), encode(v, true)))
                .collect();
            q.sort();
            url.push('?');
            url.push_str(
                &q.iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join("&"),
            );
        } else if key.is_none() {
            url.push('/');
        }
        url
    }
}

/// `[start, end)` cut into pieces of at most `chunk`.
fn slices(start: u64, end: u64, chunk: u64) -> impl Iterator<Item = (u64, u64)> {
    (start..end)
        .step_by(chunk as usize)
        .map(move |s| (s, (s + chunk).min(end)))
}

fn success(resp: Response) -> Result<Response, S3Error> {
    if resp.status.is_success() {
        Ok(resp)
    } else {
        Err(status_error(&resp))
    }
}

fn success_timed(resp: Response) -> Result<Response, Failure> {
    if resp.status.is_success() {
        Ok(resp)
    } else {
        Err(Failure {
            error: status_error(&resp),
            t_invoke: resp.t_invoke,
            t_return: resp.t_return,
        })
    }
}

fn status_error(resp: &Response) -> S3Error {
    let code = resp.status.as_u16();
    let class = match code {
        408 | 429 | 500..=599 => ErrorClass::ServerError,
        _ => ErrorClass::ClientError,
    };
    S3Error {
        class,
        status: Some(code),
        message: format!(
            "HTTP {code}: {}",
            String::from_utf8_lossy(&resp.body[..resp.body.len().min(512)])
        ),
    }
}

fn classify(e: &reqwest::Error) -> S3Error {
    let class = if e.is_connect() {
        ErrorClass::NotSent
    } else if e.is_timeout() {
        ErrorClass::Timeout
    } else {
        ErrorClass::Transport
    };
    S3Error::new(class, error_chain(e))
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push_str(": ");
        out.push_str(&s.to_string());
        cur = s.source();
    }
    out
}

/// Percent-encodes per RFC 3986 as SigV4 expects: unreserved characters stay,
/// and `/` stays in paths (object keys) but not in query values.
fn encode(s: &str, encode_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        let keep = b.is_ascii_alphanumeric()
            || matches!(b, b'-' | b'.' | b'_' | b'~')
            || (b == b'/' && !encode_slash);
        if keep {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{OpKind, Outcome, classify_error, classify_status};

    fn client(endpoint: &str) -> S3Client {
        S3Client::new(
            S3Config {
                endpoint: endpoint.into(),
                region: "garage".into(),
                bucket: "b".into(),
                access_key_id: "GK".into(),
                secret_access_key: "s".into(),
            },
            Timeouts {
                connect: Duration::from_secs(1),
                first_byte: Duration::from_millis(500),
                total: Duration::from_secs(2),
            },
        )
    }

    #[test]
    fn urls_are_path_style_and_encoded() {
        let c = client("http://127.0.0.1:1/");
        assert_eq!(
            c.url(Some("run/a b+c"), &[]),
            "http://127.0.0.1:1/b/run/a%20b%2Bc"
        );
        assert_eq!(
            c.url(None, &[("prefix", "run/x"), ("list-type", "2")]),
            "http://127.0.0.1:1/b?list-type=2&prefix=run%2Fx"
        );
        assert_eq!(
            c.url(Some("k"), &[("uploads", "")]),
            "http://127.0.0.1:1/b/k?uploads="
        );
    }

    #[test]
    fn secret_is_not_in_debug_output() {
        assert!(!format!("{:?}", client("http://x").config()).contains("secret_access_key"));
    }

    #[test]
    fn a_completed_multipart_upload_names_its_etag_in_its_body() {
        let answer = |headers: &[(&str, &str)], body: &str| {
            let mut map = reqwest::header::HeaderMap::new();
            for (k, v) in headers {
                map.insert(
                    reqwest::header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                    v.parse().unwrap(),
                );
            }
            Response {
                status: StatusCode::OK,
                headers: map,
                body: body.as_bytes().to_vec(),
                body_len: body.len() as u64,
                sha256: [0; 32],
                t_invoke: Instant::now(),
                t_return: Instant::now(),
            }
        };
        let completed = r#"<?xml version="1.0" encoding="UTF-8"?>
<CompleteMultipartUploadResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Bucket>b</Bucket><Key>k</Key><ETag>&quot;39ae-2&quot;</ETag></CompleteMultipartUploadResult>"#;
        assert_eq!(answer(&[], completed).etag().as_deref(), Some("\"39ae-2\""));
        assert_eq!(
            answer(&[("etag", "\"e1\"")], "").etag().as_deref(),
            Some("\"e1\"")
        );
        assert_eq!(answer(&[], "<ListBucketResult/>").etag(), None);
    }

    #[test]
    fn list_pages_parse() {
        let xml = br#"<?xml version="1.0" encoding="UTF-8"?>
<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Name>b</Name><Prefix>p/</Prefix>
<KeyCount>2</KeyCount><MaxKeys>2</MaxKeys><IsTruncated>true</IsTruncated>
<Contents><Key>p/a</Key><LastModified>2026-01-01T00:00:00.000Z</LastModified><ETag>"e1"</ETag><Size>0</Size></Contents>
<Contents><Key>p/b</Key><ETag>"e2"</ETag><Size>12</Size></Contents>
<NextContinuationToken>tok</NextContinuationToken></ListBucketResult>"#;
        let page = S3Client::parse_list(xml).unwrap();
        assert!(page.is_truncated);
        assert_eq!(page.next_continuation_token.as_deref(), Some("tok"));
        assert_eq!(
            page.contents,
            vec![
                ListEntry {
                    key: "p/a".into(),
                    size: 0,
                    etag: Some("\"e1\"".into())
                },
                ListEntry {
                    key: "p/b".into(),
                    size: 12,
                    etag: Some("\"e2\"".into())
                },
            ]
        );
        let empty = S3Client::parse_list(
            b"<ListBucketResult><IsTruncated>false</IsTruncated></ListBucketResult>",
        )
        .unwrap();
        assert_eq!(empty, ListPage::default());
    }

    #[test]
    fn slices_cover_the_range_exactly() {
        let v: Vec<_> = slices(5, 20, 7).collect();
        assert_eq!(v, vec![(5, 12), (12, 19), (19, 20)]);
        assert_eq!(slices(3, 3, 7).count(), 0);
        let body = Body::new(1, "k", 1, 200_000);
        assert_eq!(
            slice_sha256(&body, 10, 150_000),
            <[u8; 32]>::from(Sha256::digest(body.slice(10, 150_000)))
        );
    }

    /// How the test server misbehaves.
    #[derive(Clone, Copy)]
    enum Misbehave {
        /// Reads the request, then closes with a TCP reset.
        ResetAfterRequest,
        /// Reads the request and never answers.
        Stall,
        /// Answers with this status and a short body.
        Status(u16),
        /// Promises 100 bytes, sends 10, closes.
        Truncate,
    }

    /// A loopback server that answers every connection the same wrong way.
    async fn misbehaving_server(mode: Misbehave) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                tokio::spawn(async move {
                    // Read until the end of the headers (requests here have no body).
                    let mut seen = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                        match conn.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => seen.extend_from_slice(&buf[..n]),
                        }
                    }
                    match mode {
                        Misbehave::ResetAfterRequest => {
                            let _ = socket2::SockRef::from(&conn).set_linger(Some(Duration::ZERO));
                            drop(conn);
                        }
                        Misbehave::Stall => tokio::time::sleep(Duration::from_secs(10)).await,
                        Misbehave::Status(code) => {
                            let body = "<Error><Code>X</Code></Error>";
                            let head = format!(
                                "HTTP/1.1 {code} X\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                                body.len()
                            );
                            let _ = conn.write_all(head.as_bytes()).await;
                        }
                        Misbehave::Truncate => {
                            let _ = conn
                                .write_all(
                                    b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n0123456789",
                                )
                                .await;
                        }
                    }
                });
            }
        });
        url
    }

    async fn get(endpoint: &str) -> Result<Response, Failure> {
        client(endpoint)
            .exchange(Method::GET, Some("k"), &[], &[], Payload::Empty, Keep::All)
            .await
    }

    async fn put(endpoint: &str) -> Result<Response, Failure> {
        client(endpoint)
            .exchange(
                Method::PUT,
                Some("k"),
                &[],
                &[],
                Payload::Bytes(b"abc".to_vec()),
                Keep::All,
            )
            .await
    }

    #[tokio::test]
    async fn refused_connection_is_not_sent_and_certainly_failed() {
        // Bind and drop: the port is then closed on loopback.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let f = put(&format!("http://127.0.0.1:{port}")).await.unwrap_err();
        assert_eq!(f.error.class, ErrorClass::NotSent, "{}", f.error);
        assert_eq!(classify_error(OpKind::Put, f.error.class), Outcome::Fail);
    }

    #[tokio::test]
    async fn reset_after_the_request_was_sent_is_ambiguous() {
        let url = misbehaving_server(Misbehave::ResetAfterRequest).await;
        let f = put(&url).await.unwrap_err();
        assert_eq!(f.error.class, ErrorClass::Transport, "{}", f.error);
        assert_eq!(
            classify_error(OpKind::Put, f.error.class),
            Outcome::Ambiguous
        );
        assert_eq!(
            classify_error(OpKind::Get, f.error.class),
            Outcome::Unavailable
        );
    }

    #[tokio::test]
    async fn a_stalled_read_times_out_at_the_first_byte_deadline() {
        let url = misbehaving_server(Misbehave::Stall).await;
        let f = get(&url).await.unwrap_err();
        assert_eq!(f.error.class, ErrorClass::Timeout, "{}", f.error);
        let waited = f.t_return - f.t_invoke;
        assert!(
            waited >= Duration::from_millis(500) && waited < Duration::from_secs(2),
            "{waited:?}"
        );
        assert_eq!(
            classify_error(OpKind::Get, f.error.class),
            Outcome::Unavailable
        );
    }

    #[tokio::test]
    async fn a_truncated_body_is_told_apart() {
        let url = misbehaving_server(Misbehave::Truncate).await;
        let f = get(&url).await.unwrap_err();
        assert_eq!(f.error.class, ErrorClass::Truncated, "{}", f.error);
        assert_eq!(
            classify_error(OpKind::Get, f.error.class),
            Outcome::Unavailable
        );
    }

    #[tokio::test]
    async fn statuses_are_answers_classified_by_the_contract() {
        for (code, write, read) in [
            (500, Outcome::Ambiguous, Outcome::Unavailable),
            (503, Outcome::Ambiguous, Outcome::Unavailable),
            (404, Outcome::Fail, Outcome::Ok),
            (403, Outcome::Fail, Outcome::Fail),
        ] {
            let url = misbehaving_server(Misbehave::Status(code)).await;
            let r = put(&url).await.unwrap();
            assert_eq!(r.status.as_u16(), code);
            assert_eq!(classify_status(OpKind::Put, code).0, write, "PUT {code}");
            let r = get(&url).await.unwrap();
            assert_eq!(
                classify_status(OpKind::Get, r.status.as_u16()).0,
                read,
                "GET {code}"
            );
        }
    }
}
