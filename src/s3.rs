//! The project's own S3 client: path-style requests over reqwest, signed
//! with SigV4 by `aws-sigv4` (the signer the AWS SDK for Rust itself uses).
//!
//! It never retries: a chaos runner must see every attempt, so one call is
//! one request, and its failure says whether any byte was sent. Idle
//! connections are not pooled, so a request is never silently replayed on a
//! fresh connection after a pooled one turned out dead.

use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{
    PayloadChecksumKind, PercentEncodingMode, SignableBody, SignableRequest, SigningSettings,
    UriPathNormalizationMode, sign,
};
use aws_sigv4::sign::v4;
use reqwest::{Method, StatusCode};

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
    pub connect: Duration,
    pub total: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(2),
            total: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum S3Error {
    /// No request byte left the runner (refused, unreachable, connect timeout).
    #[error("not sent: {0}")]
    NotSent(String),
    /// Sent, then no complete answer in time.
    #[error("timed out after sending")]
    Timeout,
    /// Sent, then the connection failed (reset, broken pipe, truncated body).
    #[error("transport failure after sending: {0}")]
    Transport(String),
    /// The server answered with a status the caller did not accept.
    #[error("HTTP {status}: {body}")]
    Status { status: u16, body: String },
    #[error("cannot sign request: {0}")]
    Sign(String),
}

/// A complete response.
#[derive(Debug)]
pub struct Response {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: Vec<u8>,
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

    pub async fn put_object(&self, key: &str, body: Vec<u8>) -> Result<Response, S3Error> {
        ok_only(self.request(Method::PUT, Some(key), &[], body).await?)
    }

    /// GET; a 404 is returned as a response, not an error (it is an observation).
    pub async fn get_object(&self, key: &str) -> Result<Response, S3Error> {
        let resp = self
            .request(Method::GET, Some(key), &[], Vec::new())
            .await?;
        if resp.status == StatusCode::NOT_FOUND {
            return Ok(resp);
        }
        ok_only(resp)
    }

    pub async fn delete_object(&self, key: &str) -> Result<Response, S3Error> {
        ok_only(
            self.request(Method::DELETE, Some(key), &[], Vec::new())
                .await?,
        )
    }

    /// ListObjectsV2 returning the raw XML body.
    pub async fn list_objects_v2(&self, prefix: &str, max_keys: u32) -> Result<Response, S3Error> {
        let max = max_keys.to_string();
        let query = [
            ("list-type", "2"),
            ("prefix", prefix),
            ("max-keys", max.as_str()),
        ];
        ok_only(self.request(Method::GET, None, &query, Vec::new()).await?)
    }

    /// Sends one signed request and reads the whole answer. Never retries.
    pub async fn request(
        &self,
        method: Method,
        key: Option<&str>,
        query: &[(&str, &str)],
        body: Vec<u8>,
    ) -> Result<Response, S3Error> {
        let url = self.url(key, query);
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
            .map_err(|e| S3Error::Sign(e.to_string()))?
            .into();
        let signable = SignableRequest::new(
            method.as_str(),
            &url,
            std::iter::empty(),
            SignableBody::Bytes(&body),
        )
        .map_err(|e| S3Error::Sign(e.to_string()))?;
        let (instructions, _) = sign(signable, &params)
            .map_err(|e| S3Error::Sign(e.to_string()))?
            .into_parts();
        let mut req = self.http.request(method, &url).timeout(self.timeouts.total);
        for (name, value) in instructions.headers() {
            req = req.header(name, value);
        }
        let resp = req.body(body).send().await.map_err(classify)?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp.bytes().await.map_err(classify)?.to_vec();
        Ok(Response {
            status,
            headers,
            body,
        })
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

fn ok_only(resp: Response) -> Result<Response, S3Error> {
    if resp.status.is_success() {
        Ok(resp)
    } else {
        let body = String::from_utf8_lossy(&resp.body[..resp.body.len().min(512)]).into_owned();
        Err(S3Error::Status {
            status: resp.status.as_u16(),
            body,
        })
    }
}

fn classify(e: reqwest::Error) -> S3Error {
    if e.is_connect() {
        return S3Error::NotSent(error_chain(&e));
    }
    if e.is_timeout() {
        return S3Error::Timeout;
    }
    S3Error::Transport(error_chain(&e))
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

    fn client() -> S3Client {
        S3Client::new(
            S3Config {
                endpoint: "http://127.0.0.1:1/".into(),
                region: "garage".into(),
                bucket: "b".into(),
                access_key_id: "GK".into(),
                secret_access_key: "s".into(),
            },
            Timeouts::default(),
        )
    }

    #[test]
    fn urls_are_path_style_and_encoded() {
        let c = client();
        assert_eq!(
            c.url(Some("run/a b+c"), &[]),
            "http://127.0.0.1:1/b/run/a%20b%2Bc"
        );
        assert_eq!(
            c.url(None, &[("prefix", "run/x"), ("list-type", "2")]),
            "http://127.0.0.1:1/b?list-type=2&prefix=run%2Fx"
        );
    }

    #[test]
    fn secret_is_not_in_debug_output() {
        assert!(!format!("{:?}", client().config()).contains("secret_access_key"));
    }

    #[tokio::test]
    async fn refused_connection_is_not_sent() {
        // Port 1 on loopback: nothing listens there on these hosts.
        let err = client().get_object("k").await.unwrap_err();
        assert!(matches!(err, S3Error::NotSent(_)), "{err}");
    }
}
