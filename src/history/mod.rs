//! The history vocabulary shared by the workload (which produces it), the
//! ledger (which stores it) and the oracle (which judges it), as defined in
//! `shared/design/oracle.md` §1.

use serde::{Deserialize, Serialize};

pub mod body;
pub mod seed;

/// What an operation did, as the oracle sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// The server answered meaningfully (2xx; a 404 for a read is `Ok`: an
    /// observation of "absent"; so is a 416 for a Range GET: "the object is
    /// shorter than the range's first byte").
    Ok,
    /// Certainly had no effect: no request byte left the runner, or a 4xx
    /// other than 404, 408 and 429.
    Fail,
    /// A write that may or may not have taken effect, now or later.
    Ambiguous,
    /// A read that observed nothing (the same conditions as `Ambiguous`).
    Unavailable,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Fail => "fail",
            Outcome::Ambiguous => "ambiguous",
            Outcome::Unavailable => "unavailable",
        }
    }

    pub fn parse(s: &str) -> Option<Outcome> {
        Some(match s {
            "ok" => Outcome::Ok,
            "fail" => Outcome::Fail,
            "ambiguous" => Outcome::Ambiguous,
            "unavailable" => Outcome::Unavailable,
            _ => return None,
        })
    }
}

/// The kinds of operation the workload issues.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OpKind {
    /// PUT of a key with no earlier write.
    Put,
    /// PUT of a key written before.
    Overwrite,
    /// Multipart upload (create, parts, complete) of a large object.
    Multipart,
    Delete,
    Get,
    Head,
    Range,
    /// One page of ListObjectsV2.
    List,
}

impl OpKind {
    pub const ALL: [OpKind; 8] = [
        OpKind::Put,
        OpKind::Overwrite,
        OpKind::Multipart,
        OpKind::Delete,
        OpKind::Get,
        OpKind::Head,
        OpKind::Range,
        OpKind::List,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            OpKind::Put => "put",
            OpKind::Overwrite => "overwrite",
            OpKind::Multipart => "multipart",
            OpKind::Delete => "delete",
            OpKind::Get => "get",
            OpKind::Head => "head",
            OpKind::Range => "range",
            OpKind::List => "list",
        }
    }

    pub fn parse(s: &str) -> Option<OpKind> {
        OpKind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    pub fn is_write(self) -> bool {
        matches!(
            self,
            OpKind::Put | OpKind::Overwrite | OpKind::Multipart | OpKind::Delete
        )
    }

    /// The outcome for a request whose effect is uncertain: `Ambiguous` for
    /// writes, `Unavailable` for reads.
    pub fn uncertain(self) -> Outcome {
        if self.is_write() {
            Outcome::Ambiguous
        } else {
            Outcome::Unavailable
        }
    }
}

/// Which part of the runner issued an operation. The oracle relies on it:
/// a worker's own operations run one after another, so once one of them
/// returns at T, every write that worker invoked before T has been seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    /// The worker's own sequence of planned operations.
    Worker,
    /// A read-back of an acknowledged write, beside the worker's sequence.
    Readback,
    /// Final verification after the last fault healed (oracle.md §7).
    Final,
    /// A boot probe's write and read, recorded when it read back wrong data.
    Probe,
}

impl Origin {
    pub const ALL: [Origin; 4] = [
        Origin::Worker,
        Origin::Readback,
        Origin::Final,
        Origin::Probe,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Worker => "worker",
            Origin::Readback => "readback",
            Origin::Final => "final",
            Origin::Probe => "probe",
        }
    }

    pub fn parse(s: &str) -> Option<Origin> {
        Origin::ALL.into_iter().find(|o| o.as_str() == s)
    }
}

/// What a LIST page observed, stored as JSON in `ops.detail`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ListDetail {
    /// Page number within its walk, from 0.
    #[serde(default)]
    pub page: u32,
    /// The page covers keys after this one (exclusive): the start-after key
    /// of a walk's first page, then the previous page's last key.
    pub after: Option<String>,
    #[serde(default)]
    pub start_after: Option<String>,
    #[serde(default)]
    pub continuation: Option<String>,
    #[serde(default)]
    pub max_keys: u32,
    /// (key, size, ETag) in the order the server listed them.
    pub keys: Vec<(String, u64, Option<String>)>,
    pub truncated: bool,
    #[serde(default)]
    pub next: Option<String>,
}

/// Who wrote some bytes, as their block header says (`workload::body`);
/// a read's first intact header is stored as JSON in `ops.detail`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trace {
    #[serde(with = "hex_u64")]
    pub key_tag: u64,
    pub generation: u64,
    pub block: u64,
    #[serde(with = "hex_u32")]
    pub run_tag: u32,
}

/// The JSON object around a `Trace`: `{"trace": {...}}`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct TraceDetail {
    pub trace: Trace,
}

mod hex_u64 {
    use serde::{Deserialize, Deserializer, Serializer};
    pub fn serialize<S: Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{v:016x}"))
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        let text = <&str>::deserialize(d)?;
        u64::from_str_radix(text, 16).map_err(serde::de::Error::custom)
    }
}

mod hex_u32 {
    use serde::{Deserialize, Deserializer, Serializer};
    pub fn serialize<S: Serializer>(v: &u32, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{v:08x}"))
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
        let text = <&str>::deserialize(d)?;
        u32::from_str_radix(text, 16).map_err(serde::de::Error::custom)
    }
}

/// Why an operation did not get a meaningful answer, finer than `Outcome`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorClass {
    /// Connection refused or never established: no byte was sent.
    NotSent,
    /// Sent, then no answer before the first-byte or total deadline.
    Timeout,
    /// Sent, then the connection broke (reset, broken pipe, early close).
    Transport,
    /// The body ended before its Content-Length.
    Truncated,
    /// 5xx, 408 or 429.
    ServerError,
    /// 4xx other than 404, 408 and 429.
    ClientError,
}

impl ErrorClass {
    pub const ALL: [ErrorClass; 6] = [
        ErrorClass::NotSent,
        ErrorClass::Timeout,
        ErrorClass::Transport,
        ErrorClass::Truncated,
        ErrorClass::ServerError,
        ErrorClass::ClientError,
    ];

    pub fn parse(s: &str) -> Option<ErrorClass> {
        ErrorClass::ALL.into_iter().find(|c| c.as_str() == s)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::NotSent => "not_sent",
            ErrorClass::Timeout => "timeout",
            ErrorClass::Transport => "transport",
            ErrorClass::Truncated => "truncated",
            ErrorClass::ServerError => "server_error",
            ErrorClass::ClientError => "client_error",
        }
    }
}

/// Classifies an HTTP status for an operation of `kind` (oracle.md §1).
pub fn classify_status(kind: OpKind, status: u16) -> (Outcome, Option<ErrorClass>) {
    match status {
        200..=299 => (Outcome::Ok, None),
        404 if !kind.is_write() => (Outcome::Ok, None),
        // An observation of the object's size, checked like any read.
        416 if kind == OpKind::Range => (Outcome::Ok, None),
        408 | 429 | 500..=599 => (kind.uncertain(), Some(ErrorClass::ServerError)),
        400..=499 => (Outcome::Fail, Some(ErrorClass::ClientError)),
        // 1xx/3xx are not answers S3 gives; nothing certain can be said.
        _ => (kind.uncertain(), Some(ErrorClass::ServerError)),
    }
}

/// Classifies a request that got no complete answer.
pub fn classify_error(kind: OpKind, class: ErrorClass) -> Outcome {
    match class {
        ErrorClass::NotSent => Outcome::Fail,
        _ => kind.uncertain(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_as_the_oracle_contract_says() {
        use ErrorClass::*;
        use OpKind::*;
        use Outcome::*;
        let rows = [
            (Put, 200, Ok, None),
            (Delete, 204, Ok, None),
            (Get, 404, Ok, None),
            (Head, 404, Ok, None),
            (Delete, 404, Fail, Some(ClientError)),
            (Put, 403, Fail, Some(ClientError)),
            (Get, 403, Fail, Some(ClientError)),
            (Put, 408, Ambiguous, Some(ServerError)),
            (Put, 429, Ambiguous, Some(ServerError)),
            (Put, 500, Ambiguous, Some(ServerError)),
            (Put, 503, Ambiguous, Some(ServerError)),
            (Get, 503, Unavailable, Some(ServerError)),
            (Range, 500, Unavailable, Some(ServerError)),
            (Range, 416, Ok, None),
            (Get, 416, Fail, Some(ClientError)),
        ];
        for (kind, status, outcome, class) in rows {
            assert_eq!(
                classify_status(kind, status),
                (outcome, class),
                "{kind:?} {status}"
            );
        }
    }

    #[test]
    fn only_unsent_requests_certainly_failed() {
        assert_eq!(
            classify_error(OpKind::Put, ErrorClass::NotSent),
            Outcome::Fail
        );
        assert_eq!(
            classify_error(OpKind::Put, ErrorClass::Timeout),
            Outcome::Ambiguous
        );
        assert_eq!(
            classify_error(OpKind::Delete, ErrorClass::Transport),
            Outcome::Ambiguous
        );
        assert_eq!(
            classify_error(OpKind::Get, ErrorClass::Truncated),
            Outcome::Unavailable
        );
        assert_eq!(
            classify_error(OpKind::Get, ErrorClass::NotSent),
            Outcome::Fail
        );
    }

    #[test]
    fn names_round_trip() {
        for k in OpKind::ALL {
            assert_eq!(OpKind::parse(k.as_str()), Some(k));
        }
        for o in [
            Outcome::Ok,
            Outcome::Fail,
            Outcome::Ambiguous,
            Outcome::Unavailable,
        ] {
            assert_eq!(Outcome::parse(o.as_str()), Some(o));
        }
    }
}

/// One fault window (written by the fault injector).
#[derive(Debug, Clone, PartialEq)]
pub struct FaultRecord {
    pub id: u64,
    pub kind: String,
    pub target: String,
    pub t_start_ns: u64,
    pub t_confirm_ns: Option<u64>,
    pub t_end_ns: Option<u64>,
    pub t_recovered_ns: Option<u64>,
    pub recovery_ms: Option<u64>,
    pub gate: Option<String>,
    /// The fault's parameters and what was observed of it (JSON): a
    /// partition's cut pairs, rules and probes.
    pub params: Option<String>,
}

/// One violation the oracle found, with its witness (JSON).
#[derive(Debug, Clone, PartialEq)]
pub struct FindingRecord {
    pub class: String,
    pub key: Option<String>,
    pub op_id: Option<u64>,
    pub fault_id: Option<u64>,
    pub t_ns: u64,
    pub expected: String,
    pub seen: String,
    pub witness: String,
    /// Set when the profile tolerates it as a known deviation: why.
    pub known: Option<String>,
    /// The profile's tolerance rule (by position) that absorbed it.
    pub rule: Option<u32>,
    /// How long after its deciding write was acknowledged the read began.
    pub since_ack_ns: Option<u64>,
    /// A read of the final verification.
    pub final_read: bool,
}

/// One operation, as recorded.
#[derive(Debug, Clone, PartialEq)]
pub struct OpRecord {
    /// Assigned by the ledger writer when it receives the record (0 until then).
    pub id: u64,
    pub worker: u32,
    pub origin: Origin,
    pub kind: OpKind,
    pub key: Option<String>,
    pub generation: Option<u64>,
    pub range_header: Option<String>,
    pub range: Option<(u64, u64)>,
    pub t_invoke_ns: u64,
    pub t_return_ns: u64,
    pub outcome: Outcome,
    pub http_status: Option<u16>,
    pub error_class: Option<ErrorClass>,
    pub bytes: u64,
    pub size: Option<u64>,
    pub sha256: Option<[u8; 32]>,
    pub etag: Option<String>,
    pub endpoint: u32,
    pub detail: Option<String>,
}

impl OpRecord {
    /// An operation with nothing observed yet; callers set the rest with
    /// struct update syntax.
    pub fn new(kind: OpKind, key: Option<String>, outcome: Outcome) -> OpRecord {
        OpRecord {
            id: 0,
            worker: 0,
            origin: Origin::Worker,
            kind,
            key,
            generation: None,
            range_header: None,
            range: None,
            t_invoke_ns: 0,
            t_return_ns: 0,
            outcome,
            http_status: None,
            error_class: None,
            bytes: 0,
            size: None,
            sha256: None,
            etag: None,
            endpoint: 0,
            detail: None,
        }
    }
}
