//! Profiles: the TOML files under `configs/` that describe a whole run.
//! The cluster half (`cluster::spec::ClusterSpec`: roles, commands, ports,
//! health probes, hooks, S3) is what `Cluster::boot` takes; this module
//! adds the sections above the cluster: the workload, the faults, the
//! oracle's contract and the store's known deviations (`Tolerance`), and
//! parses and validates the file as one.
//!
//! Two kinds exist. `garage` is the built-in default: the runner knows how
//! to configure, bootstrap and health-check Garage itself. `generic`
//! describes any cluster by roles, commands, ports, health probes and hook
//! commands, so users can point faultline at their own store.
//!
//! Parsing is strict: an unknown key or a value of the wrong type is an
//! error naming the file, the key and what was expected, because a typo in
//! a chaos profile silently falling back to a default would make a run test
//! something other than what its author meant.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::cluster::spec::{
    BinarySection, ClusterSpec, GarageSection, HooksSection, Kind, PortBase, ProfileError,
    RoleSection, S3Section, Timeouts, int_or_keyword, valid_version,
};
use crate::cluster::{BootOptions, Cluster, ClusterError};
use crate::faults::FaultSettings;
use crate::workload::WorkloadConfig;

/// A whole profile: the cluster to boot and how to run against it.
#[derive(Debug, Clone)]
pub struct Profile {
    pub cluster: ClusterSpec,
    /// The workload's settings; the command line overrides some of them.
    pub workload: WorkloadConfig,
    pub oracle: OracleSection,
    /// Which faults to inject and how (the command line overrides some).
    pub faults: FaultSettings,
}

/// A profile as written in its file: every section flat, as users write it.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct ProfileFile {
    /// A short name used in run directories and reports.
    pub name: String,
    pub kind: Kind,
    /// `"auto"` picks free ports at boot; an integer N gives node i (from 0)
    /// the ports N + 10*i + 0, 1, 2, ... in the order its role lists them.
    #[serde(default)]
    pub port_base: PortBase,
    #[serde(default)]
    pub s3: S3Section,
    pub garage: Option<GarageSection>,
    #[serde(default)]
    pub binary: Option<BinarySection>,
    #[serde(default)]
    pub roles: Vec<RoleSection>,
    #[serde(default)]
    pub hooks: Option<HooksSection>,
    #[serde(default)]
    pub timeouts: Timeouts,
    /// The workload's settings; the command line overrides some of them.
    #[serde(default)]
    pub workload: WorkloadConfig,
    #[serde(default)]
    pub oracle: OracleSection,
    /// Which faults to inject and how (the command line overrides some).
    #[serde(default)]
    pub faults: FaultSettings,
}

impl From<ProfileFile> for Profile {
    fn from(f: ProfileFile) -> Profile {
        Profile {
            cluster: ClusterSpec {
                name: f.name,
                kind: f.kind,
                port_base: f.port_base,
                s3: f.s3,
                garage: f.garage,
                binary: f.binary,
                roles: f.roles,
                hooks: f.hooks,
                timeouts: f.timeouts,
            },
            workload: f.workload,
            oracle: f.oracle,
            faults: f.faults,
        }
    }
}

impl Profile {
    /// Reads, parses and validates a profile file.
    pub fn load(path: &Path) -> Result<Profile, ProfileError> {
        let text = std::fs::read_to_string(path).map_err(|source| ProfileError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Profile::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<Profile, ProfileError> {
        let file: ProfileFile = toml::from_str(text).map_err(|e| ProfileError::Parse {
            path: path.to_path_buf(),
            message: e.to_string().trim_end().to_string(),
        })?;
        let profile = Profile::from(file);
        profile.validate(path)?;
        Ok(profile)
    }

    /// The profile as TOML, in the file's own layout.
    pub fn to_toml(&self) -> Result<String, toml::ser::Error> {
        let c = self.cluster.clone();
        toml::to_string_pretty(&ProfileFile {
            name: c.name,
            kind: c.kind,
            port_base: c.port_base,
            s3: c.s3,
            garage: c.garage,
            binary: c.binary,
            roles: c.roles,
            hooks: c.hooks,
            timeouts: c.timeouts,
            workload: self.workload.clone(),
            oracle: self.oracle.clone(),
            faults: self.faults.clone(),
        })
    }

    /// Boots the profile's cluster; the whole profile, as resolved, goes
    /// into the run directory as `profile.toml`.
    pub async fn boot(&self, opts: &BootOptions) -> Result<Cluster, ClusterError> {
        let mut resolved = self.clone();
        if let Some(base) = opts.port_base {
            resolved.cluster.port_base = PortBase::Fixed(base);
        }
        let text = resolved
            .to_toml()
            .map_err(|e| ClusterError::Config(e.to_string()))?;
        Cluster::boot(opts, resolved.cluster, &text).await
    }

    fn validate(&self, path: &Path) -> Result<(), ProfileError> {
        self.cluster.validate(path)?;
        let invalid = |key: &str, expected: &str, found: String| ProfileError::Invalid {
            path: path.to_path_buf(),
            key: key.to_string(),
            expected: expected.to_string(),
            found,
        };
        let w = &self.workload;
        for (key, value, min) in [
            ("workload.workers", u64::from(w.workers), 1),
            ("workload.keys_per_worker", u64::from(w.keys_per_worker), 1),
            ("workload.part_size", w.part_size, 1 << 20),
            ("workload.list_max_keys", u64::from(w.list_max_keys), 1),
            ("workload.list_pages_max", u64::from(w.list_pages_max), 1),
            ("workload.total_timeout_ms", w.total_timeout_ms, 100),
        ] {
            if value < min {
                return Err(invalid(key, &format!("at least {min}"), value.to_string()));
            }
        }
        if !(0.0..=1.0).contains(&w.delete_watermark) {
            return Err(invalid(
                "workload.delete_watermark",
                "a fraction from 0 to 1",
                w.delete_watermark.to_string(),
            ));
        }
        for (i, t) in self.oracle.tolerate.iter().enumerate() {
            if t.within_ms.is_none() {
                return Err(invalid(
                    &format!("oracle.tolerate[{i}].within_ms"),
                    "a bound in milliseconds (how long after the deciding write was acknowledged the deviation may be seen), or \"none\" for a deviation that can hide no value",
                    "nothing".into(),
                ));
            }
        }
        let f = &self.faults;
        if f.kinds.is_empty() {
            return Err(invalid(
                "faults.kinds",
                "at least one fault kind",
                "an empty list".into(),
            ));
        }
        // Privileges are checked where the run starts, not in the file.
        if let Err(why) = f.kinds_for(self.cluster.nodes_in_service(), true) {
            return Err(invalid("faults.kinds", "kinds this cluster can have", why));
        }
        if let Some(v) = &f.update_version
            && !valid_version(v)
        {
            return Err(invalid(
                "faults.update_version",
                "an exact version such as \"2.5.0\"",
                format!("{v:?}"),
            ));
        }
        Ok(())
    }
}

/// What the oracle holds the store to.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OracleSection {
    /// `"read-after-write"` (default; what Garage promises) or `"linearizable"`.
    #[serde(default)]
    pub contract: crate::oracle::Contract,
    /// Known deviations of the store under test: findings they match are
    /// still recorded and reported, as known, but do not fail the run.
    #[serde(default)]
    pub tolerate: Vec<Tolerance>,
}

/// One known deviation: a finding class, narrowed by what was expected or
/// seen, bounded by how long after the deciding write it may be seen and
/// under which fault, and why it is tolerated. Past its bound the same
/// finding fails the run again.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Tolerance {
    pub class: crate::oracle::Class,
    /// The finding's `expected` text must contain this.
    #[serde(default)]
    pub expected_contains: Option<String>,
    /// The finding's `seen` text must contain this.
    #[serde(default)]
    pub seen_contains: Option<String>,
    /// How long after the deciding write (the newest write acknowledged
    /// before the read began) was acknowledged the read may have begun.
    /// Required in a profile; `"none"` for a deviation that hides no value.
    /// (Absent only in ledgers written before bounds existed: unbounded.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub within_ms: Option<Bound>,
    /// Only when the deciding write was acknowledged inside a fault window
    /// (from the fault's start to the end of its recovery), when a node that
    /// was down or cut off could miss it.
    #[serde(default)]
    pub during_fault: bool,
    /// Also in the final verification, after the cluster recovered. Off by
    /// default: a store that recovered must answer right; reports name
    /// every finding such a rule absorbed there.
    #[serde(default)]
    pub final_reads: bool,
    /// Why: the store's behaviour, where it is documented, and the
    /// measurement the bound comes from.
    pub reason: String,
}

/// A tolerance's time bound: milliseconds, or none at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bound {
    Ms(u64),
    None,
}

impl<'de> Deserialize<'de> for Bound {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let expected = "expected a bound in milliseconds or \"none\"";
        Ok(match int_or_keyword::<D, u64>(d, "none", expected)? {
            Some(n) => Bound::Ms(n),
            None => Bound::None,
        })
    }
}

impl Serialize for Bound {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Bound::Ms(n) => s.serialize_u64(*n),
            Bound::None => s.serialize_str("none"),
        }
    }
}

impl Tolerance {
    /// Does this rule absorb `f`? `in_fault` says whether the finding's
    /// deciding write was acknowledged inside a fault window.
    pub fn absorbs(&self, f: &crate::oracle::Finding, in_fault: bool) -> bool {
        let within = match self.within_ms {
            Some(Bound::Ms(ms)) => f
                .since_ack_ns
                .is_some_and(|lag| lag <= ms.saturating_mul(1_000_000)),
            Some(Bound::None) | None => true,
        };
        f.class == self.class
            && self
                .expected_contains
                .as_deref()
                .is_none_or(|s| f.expected.contains(s))
            && self
                .seen_contains
                .as_deref()
                .is_none_or(|s| f.seen.contains(s))
            && within
            && (in_fault || !self.during_fault)
            && (self.final_reads || !f.final_read)
    }

    /// The rule's bounds in a few words, for summaries and reports.
    pub fn bounds(&self) -> String {
        let mut parts = vec![match self.within_ms {
            Some(Bound::Ms(ms)) => format!("within {}", crate::console::ms_text(ms)),
            Some(Bound::None) | None => "no time bound".into(),
        }];
        if self.during_fault {
            parts.push("of a write acknowledged during a fault".into());
        }
        if self.final_reads {
            parts.push("ALSO IN THE FINAL VERIFICATION".into());
        }
        parts.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::spec::{ConsistencyMode, DbEngine};

    fn parse(text: &str) -> Result<Profile, ProfileError> {
        Profile::parse(Path::new("configs/test.toml"), text)
    }

    const GARAGE: &str = r#"
name = "g"
kind = "garage"
[garage]
version = "2.5.0"
nodes = 3
spares = 2
replication_factor = 3
"#;

    #[test]
    fn minimal_garage_profile_gets_defaults() {
        let p = parse(GARAGE).unwrap();
        assert_eq!(p.cluster.port_base, PortBase::Auto);
        let g = p.cluster.garage.unwrap();
        assert_eq!(g.consistency_mode, ConsistencyMode::Consistent);
        assert_eq!(g.db_engine, DbEngine::Sqlite);
        assert_eq!(p.cluster.s3.bucket, "faultline");
    }

    #[test]
    fn unknown_key_names_file_key_and_expected_keys() {
        let err = parse(&GARAGE.replace("spares = 2", "sparez = 2"))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("configs/test.toml: "), "{err}");
        assert!(err.contains("unknown field `sparez`"), "{err}");
        assert!(err.contains("`spares`"), "{err}");
    }

    #[test]
    fn wrong_type_names_file_and_expected_type() {
        let err = parse(&GARAGE.replace("nodes = 3", "nodes = \"three\""))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("configs/test.toml: "), "{err}");
        assert!(err.contains("nodes"), "{err}");
        assert!(err.contains("u32") || err.contains("integer"), "{err}");
    }

    #[test]
    fn fewer_nodes_than_replicas_is_rejected() {
        let err = parse(&GARAGE.replace("nodes = 3", "nodes = 2"))
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "configs/test.toml: key `garage.nodes`: expected at least replication_factor (3), found 2"
        );
    }

    #[test]
    fn port_base_is_auto_or_a_number() {
        let p = parse(&format!("port_base = 40000\n{GARAGE}")).unwrap();
        assert_eq!(p.cluster.port_base, PortBase::Fixed(40000));
        let err = parse(&format!("port_base = \"sometimes\"\n{GARAGE}"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("port_base"), "{err}");
        let err = parse(&format!("port_base = 80\n{GARAGE}"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("key `port_base`"), "{err}");
    }

    #[test]
    fn inexact_version_is_rejected() {
        let err = parse(&GARAGE.replace("\"2.5.0\"", "\"2.5\""))
            .unwrap_err()
            .to_string();
        assert!(err.contains("key `garage.version`"), "{err}");
    }

    #[test]
    fn generic_keys_in_a_garage_profile_are_rejected() {
        let err = parse(&format!("{GARAGE}\n[hooks]\nbootstrap = []\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("key `hooks`"), "{err}");
    }

    #[test]
    fn generic_health_needs_exactly_one_probe() {
        let text = r#"
name = "x"
kind = "generic"
[s3]
endpoints = ["http://127.0.0.1:{n1.port.s3}"]
[[roles]]
name = "n"
count = 1
command = ["true"]
health = { tcp = "127.0.0.1:1", http = "http://127.0.0.1:1/" }
"#;
        let err = parse(text).unwrap_err().to_string();
        assert!(
            err.contains("key `roles[0].health`: expected exactly one of http, tcp, command"),
            "{err}"
        );
    }

    #[test]
    fn a_tolerance_must_say_its_time_bound() {
        let rule = |bound: &str| {
            format!(
                "{GARAGE}\n[[oracle.tolerate]]\nclass = \"list-ghost\"\n{bound}reason = \"r\"\n"
            )
        };
        let err = parse(&rule("")).unwrap_err().to_string();
        assert!(
            err.contains("key `oracle.tolerate[0].within_ms`: expected a bound in milliseconds"),
            "{err}"
        );
        let p = parse(&rule("within_ms = 2000\nduring_fault = true\n")).unwrap();
        let t = &p.oracle.tolerate[0];
        assert_eq!(t.within_ms, Some(Bound::Ms(2000)));
        assert!(t.during_fault && !t.final_reads);
        assert_eq!(
            t.bounds(),
            "within 2.0 s, of a write acknowledged during a fault"
        );
        let p = parse(&rule("within_ms = \"none\"\n")).unwrap();
        assert_eq!(p.oracle.tolerate[0].within_ms, Some(Bound::None));
        let err = parse(&rule("within_ms = \"forever\"\n"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("expected a bound in milliseconds or \"none\""),
            "{err}"
        );
    }

    #[test]
    fn shipped_profiles_parse() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs");
        let mut seen = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                Profile::load(&path).unwrap_or_else(|e| panic!("{e}"));
                seen += 1;
            }
        }
        assert!(
            seen >= 3,
            "expected garage-3, garage-5 and the generic example, saw {seen}"
        );
    }
}
