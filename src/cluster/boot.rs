//! Booting: the run directory, ports, secrets and binaries, the nodes
//! started under the supervisor, the flavor's bootstrap, and the S3 probes
//! through every endpoint (`Cluster::probe`: writes the next generation of
//! its key and reads it back; a wrong answer is a `WrongProbe`).

use std::collections::BTreeMap;
use std::fmt;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;

use super::addrs::AddrLease;
use super::journal::{CommandLog, last_line};
use super::spec::{ClusterSpec, Kind, PortBase};
use super::supervisor::Supervisor;
use super::{
    BootOptions, Cluster, ClusterError, Ctx, Flavor, RETRY_INTERVAL_MS, S3Target, io_err,
    write_file,
};
use super::{garage, generic, provision};
use crate::history::OpRecord;
use crate::history::body::Body;
use crate::s3::Timeouts as S3Timeouts;

/// A probe that wrote an object and then read back something else (404,
/// other bytes): its PUT and GET as operations of the history, timed from
/// the start of boot, for the run to record and judge like any other.
#[derive(Debug, Clone)]
pub struct WrongProbe {
    pub run_dir: PathBuf,
    /// The run's key prefix (the probe's key lies outside it).
    pub prefix: String,
    pub endpoint: String,
    pub node: Option<String>,
    pub seen: String,
    pub ops: Vec<OpRecord>,
}

impl fmt::Display for WrongProbe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the S3 probe through {} ({}) wrote an object and read back {}",
            self.endpoint,
            self.node.as_deref().unwrap_or("not a node's own endpoint"),
            self.seen
        )
    }
}

/// Why a probe did not pass.
#[derive(Debug)]
pub enum ProbeFailure {
    /// No meaningful answer (refused, timed out, 5xx, not ready yet).
    NoAnswer(String),
    /// A wrong answer to a read of what it had just written.
    Wrong(Box<WrongProbe>),
}

impl fmt::Display for ProbeFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProbeFailure::NoAnswer(why) => f.write_str(why),
            ProbeFailure::Wrong(w) => write!(f, "WRONG DATA: {w}"),
        }
    }
}

/// Secrets for one run, derived from the seed so a run can be re-created.
#[derive(Clone)]
pub struct Secrets {
    pub rpc_secret: String,
    pub admin_token: String,
    pub metrics_token: String,
    pub access_key_id: String,
    pub secret_access_key: String,
}

impl Secrets {
    pub fn from_seed(seed: u64) -> Secrets {
        // A named sub-stream: nothing else draws from this one.
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        rng.set_stream(0x5ec2e75);
        let mut hex = |n: usize| {
            let bytes: Vec<u8> = (0..n).map(|_| rng.random()).collect();
            hex::encode(bytes)
        };
        Secrets {
            rpc_secret: hex(32),
            admin_token: hex(16),
            metrics_token: hex(16),
            access_key_id: format!("GK{}", hex(12)),
            secret_access_key: hex(32),
        }
    }
}

impl Cluster {
    /// Boots the cluster a profile's cluster half describes and waits
    /// until it is ready; `profile_toml`, the whole profile as resolved,
    /// goes into the run directory for the record. On failure every
    /// process already started is killed before returning.
    pub async fn boot(
        opts: &BootOptions,
        mut profile: ClusterSpec,
        profile_toml: &str,
    ) -> Result<Cluster, ClusterError> {
        let started = Instant::now();
        if let Some(base) = opts.port_base {
            profile.port_base = PortBase::Fixed(base);
        }
        check_endpoints(&opts.s3_endpoints, opts.allow_remote)?;
        let profile_dir = opts
            .profile
            .canonicalize()
            .map_err(io_err(&opts.profile))?
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let binary = resolve_binary(&profile, opts).await?;
        let run_dir = create_run_dir(&opts.runs_dir, opts.seed)?;
        write_file(&run_dir.join("profile.toml"), profile_toml)?;
        let secrets = Secrets::from_seed(opts.seed);
        let access_key_id = profile
            .s3
            .access_key_id
            .clone()
            .unwrap_or(secrets.access_key_id.clone());
        let secret_access_key = profile
            .s3
            .secret_access_key
            .clone()
            .unwrap_or(secrets.secret_access_key.clone());
        write_credentials(
            &run_dir.join("credentials"),
            &access_key_id,
            &secret_access_key,
        )?;
        let cmdlog = CommandLog::create(
            &run_dir,
            vec![secret_access_key.clone(), secrets.rpc_secret.clone()],
        )?;
        let lease_dir = AddrLease::default_dir();
        let addrs = AddrLease::acquire(&lease_dir)?;
        tracing::info!(block = %addrs.block(), "node addresses");
        // Tables of runs killed mid-fault, this block's former owner's too.
        let own = addrs.table_name();
        let stale = |t: &str| t == own || AddrLease::table_is_stale(&lease_dir, t);
        for t in crate::net::nft::sweep_stale(stale).await {
            tracing::warn!(table = %t, "deleted the nftables table of a run that is gone");
        }
        let ctx = Ctx {
            addrs,
            run_dir: run_dir.clone(),
            profile_dir,
            sup: Supervisor::start().map_err(io_err(&run_dir))?,
            http: reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(2))
                .timeout(Duration::from_secs(3))
                .pool_max_idle_per_host(0)
                .no_proxy()
                .build()
                .expect("reqwest client without TLS always builds"),
            timeouts: profile.timeouts.clone(),
            cmdlog,
        };
        let (nodes, flavor, node_endpoints) = match profile.kind {
            Kind::Garage => {
                let (nodes, g) = garage::Garage::prepare(&profile, &ctx, binary, secrets)?;
                let eps = nodes
                    .iter()
                    .filter(|n| !n.spare)
                    .filter_map(|n| n.s3_endpoint.clone())
                    .collect();
                (nodes, Flavor::Garage(g), eps)
            }
            Kind::Generic => {
                let (nodes, g, eps) = generic::Generic::prepare(
                    &profile,
                    &ctx,
                    binary,
                    &secrets,
                    &access_key_id,
                    &secret_access_key,
                )?;
                (nodes, Flavor::Generic(g), eps)
            }
        };
        let endpoints = if opts.s3_endpoints.is_empty() {
            node_endpoints.clone()
        } else {
            opts.s3_endpoints.clone()
        };
        let s3 = S3Target {
            node_endpoints,
            endpoints,
            region: profile.s3.region.clone(),
            bucket: profile.s3.bucket.clone(),
            access_key_id,
            secret_access_key,
        };
        let mut cluster = Cluster {
            profile,
            seed: opts.seed,
            nodes,
            s3,
            ctx,
            flavor,
            booted_in: Duration::ZERO,
            started,
            probes: AtomicU64::new(0),
            links: None,
            relays: Vec::new(),
        };
        // On error, dropping `cluster` drops the supervisor, which kills
        // every process started so far.
        cluster.start_initial_nodes().await?;
        match &mut cluster.flavor {
            Flavor::Garage(g) => {
                g.bootstrap(&cluster.ctx, &cluster.nodes, &cluster.s3)
                    .await?
            }
            Flavor::Generic(g) => g.bootstrap(&cluster.ctx, &cluster.nodes).await?,
        }
        let all: Vec<String> = cluster
            .s3
            .node_endpoints
            .iter()
            .chain(&cluster.s3.endpoints)
            .cloned()
            .collect();
        for endpoint in dedup(all) {
            cluster.probe_until_ready(&endpoint).await?;
        }
        // A probe's object lives on a few nodes only: Garage is ready once
        // every node is connected to every other, which its health says.
        // (garage-5 once answered 503 "Not connected" right after a boot
        // that had only probed.)
        if matches!(cluster.flavor, Flavor::Garage(_)) {
            let deadline = Duration::from_millis(cluster.ctx.timeouts.step_ms);
            cluster.wait_recovered(deadline).await?;
        }
        cluster.booted_in = started.elapsed();
        cluster.write_state()?;
        tracing::info!(
            took_ms = cluster.booted_in.as_millis() as u64,
            "cluster ready"
        );
        Ok(cluster)
    }

    pub(super) async fn start_initial_nodes(&mut self) -> Result<(), ClusterError> {
        debug_assert!(self.nodes.iter().all(|n| !n.retired));
        let names: Vec<String> = self
            .nodes
            .iter()
            .filter(|n| !n.spare)
            .map(|n| n.name.clone())
            .collect();
        for name in names {
            self.start_node(&name).await?;
        }
        self.write_state()
    }

    /// Writes a small object through `endpoint` and reads it back. Its
    /// body is the next generation of the probe's key, from the seed, so
    /// a wrong answer is judged by the oracle like any read.
    pub async fn probe(&self, endpoint: &str) -> Result<(), ProbeFailure> {
        use crate::history::{OpKind, Outcome};
        use crate::s3::{GENERATION_HEADER, Keep, Payload};
        use reqwest::Method;
        const PROBE_BYTES: u64 = 4096;
        let timeouts = S3Timeouts {
            connect: Duration::from_secs(2),
            first_byte: Duration::from_secs(5),
            total: Duration::from_secs(5),
        };
        let client = self.s3.client(endpoint, timeouts);
        let key = format!("{PROBE_PREFIX}{}", sanitize(endpoint));
        let generation = 1 + self.probes.fetch_add(1, Ordering::Relaxed);
        let body = Body::new(self.seed, &key, generation, PROBE_BYTES);
        let sha = body.sha256();
        let headers = [(GENERATION_HEADER, generation.to_string())];
        let payload = Payload::Slice {
            body: &body,
            start: 0,
            end: PROBE_BYTES,
            sha256: Some(sha),
        };
        let put = client
            .exchange(Method::PUT, Some(&key), &[], &headers, payload, Keep::All)
            .await
            .map_err(|f| ProbeFailure::NoAnswer(format!("PUT: {}", f.error)))?;
        if !put.status.is_success() {
            return Err(ProbeFailure::NoAnswer(format!(
                "PUT: HTTP {}: {}",
                put.status.as_u16(),
                last_line(&String::from_utf8_lossy(&put.body))
            )));
        }
        let get = client
            .exchange(Method::GET, Some(&key), &[], &[], Payload::Empty, Keep::All)
            .await
            .map_err(|f| ProbeFailure::NoAnswer(format!("GET: {}", f.error)))?;
        let text = String::from_utf8_lossy(&get.body);
        let absent = get.status.as_u16() == 404 && !text.contains("NoSuchBucket");
        let wrong = match () {
            _ if absent => "404 (absent)".to_string(),
            _ if !get.status.is_success() => {
                return Err(ProbeFailure::NoAnswer(format!(
                    "GET: HTTP {}: {}",
                    get.status.as_u16(),
                    last_line(&text)
                )));
            }
            _ if get.sha256 == sha && get.body_len == PROBE_BYTES => return Ok(()),
            _ => format!("{} other bytes", get.body_len),
        };
        let ns = |t: Instant| t.saturating_duration_since(self.started).as_nanos() as u64;
        let mut w = OpRecord::new(OpKind::Put, Some(key.clone()), Outcome::Ok);
        w.generation = Some(generation);
        (w.size, w.bytes, w.sha256) = (Some(PROBE_BYTES), PROBE_BYTES, Some(sha));
        (w.t_invoke_ns, w.t_return_ns) = (ns(put.t_invoke), ns(put.t_return));
        w.http_status = Some(put.status.as_u16());
        w.etag = put.etag();
        let mut r = OpRecord::new(OpKind::Get, Some(key), Outcome::Ok);
        (r.t_invoke_ns, r.t_return_ns) = (ns(get.t_invoke), ns(get.t_return));
        r.http_status = Some(get.status.as_u16());
        if !absent {
            r.generation = get.generation();
            (r.size, r.bytes, r.sha256) = (Some(get.body_len), get.body_len, Some(get.sha256));
            r.detail = crate::history::body::trace(&get.body, 0).map(|trace| {
                serde_json::to_string(&crate::history::TraceDetail { trace })
                    .expect("a trace serialises")
            });
        }
        for op in [&mut w, &mut r] {
            op.origin = crate::history::Origin::Probe;
        }
        Err(ProbeFailure::Wrong(Box::new(WrongProbe {
            run_dir: self.ctx.run_dir.clone(),
            prefix: self.run_prefix(),
            endpoint: endpoint.to_string(),
            node: self.node_by_endpoint(endpoint),
            seen: wrong,
            ops: vec![w, r],
        })))
    }

    pub(super) async fn probe_until_ready(&self, endpoint: &str) -> Result<(), ClusterError> {
        let deadline = Instant::now() + Duration::from_millis(self.ctx.timeouts.step_ms);
        loop {
            let err = match self.probe(endpoint).await {
                Ok(()) => return Ok(()),
                Err(ProbeFailure::Wrong(w)) => return Err(ClusterError::WrongProbe(w)),
                Err(ProbeFailure::NoAnswer(e)) => e,
            };
            if Instant::now() >= deadline {
                let node = self.node_by_endpoint(endpoint);
                let log = node
                    .as_deref()
                    .and_then(|n| self.node(n))
                    .map(|n| n.log.display().to_string())
                    .unwrap_or_else(|| self.commands_log().display().to_string());
                return Err(ClusterError::Step {
                    node: node.unwrap_or_else(|| endpoint.to_string()),
                    step: format!("S3 probe through {endpoint}"),
                    detail: err,
                    log,
                });
            }
            tokio::time::sleep(Duration::from_millis(RETRY_INTERVAL_MS)).await;
        }
    }
}

/// The object every S3 probe writes, outside any workload prefix.
pub(super) const PROBE_PREFIX: &str = "faultline-probe/";
async fn resolve_binary(
    profile: &ClusterSpec,
    opts: &BootOptions,
) -> Result<Option<PathBuf>, ClusterError> {
    if let Some(path) = &opts.binary_override {
        if !provision::is_executable(path) {
            return Err(ClusterError::Config(format!(
                "--garage-bin {}: no executable file there",
                path.display()
            )));
        }
        return Ok(Some(path.canonicalize().map_err(io_err(path))?));
    }
    let wanted = match (&profile.garage, &profile.binary) {
        (Some(g), _) => Some((
            "garage".to_string(),
            g.version.clone(),
            "garage".to_string(),
        )),
        (None, Some(b)) => Some((
            b.krate.clone(),
            b.version.clone(),
            b.name.clone().unwrap_or(b.krate.clone()),
        )),
        (None, None) => None,
    };
    match wanted {
        Some((krate, version, name)) => Ok(Some(
            provision::ensure_binary(&opts.cache_dir, &krate, &version, &name).await?,
        )),
        None => Ok(None),
    }
}

/// Refuses workload endpoints outside loopback unless explicitly allowed.
pub fn check_endpoints(endpoints: &[String], allow_remote: bool) -> Result<(), ClusterError> {
    for ep in endpoints {
        let url = reqwest::Url::parse(ep)
            .map_err(|e| ClusterError::Config(format!("--s3-endpoint {ep}: not a URL ({e})")))?;
        if url.scheme() != "http" {
            return Err(ClusterError::Config(format!(
                "--s3-endpoint {ep}: only http:// endpoints are supported by this build"
            )));
        }
        let host = url.host_str().unwrap_or_default();
        let loopback = host == "localhost"
            || host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        if !loopback && !allow_remote {
            return Err(ClusterError::Config(format!(
                "--s3-endpoint {ep}: {host} is not a loopback address; pass --allow-remote to send the workload there"
            )));
        }
    }
    Ok(())
}

/// Creates `runs/<utc-timestamp>-<seed>/` (with a suffix if it exists).
pub(super) fn create_run_dir(runs_dir: &Path, seed: u64) -> Result<PathBuf, ClusterError> {
    std::fs::create_dir_all(runs_dir).map_err(io_err(runs_dir))?;
    let stamp = time::OffsetDateTime::now_utc()
        .format(time::macros::format_description!(
            "[year][month][day]T[hour][minute][second]Z"
        ))
        .expect("a fixed format always formats");
    for attempt in 1..100 {
        let name = if attempt == 1 {
            format!("{stamp}-{seed}")
        } else {
            format!("{stamp}-{seed}-{attempt}")
        };
        let dir = runs_dir.join(name);
        match std::fs::create_dir(&dir) {
            Ok(()) => return dir.canonicalize().map_err(io_err(&dir)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(io_err(&dir)(e)),
        }
    }
    Err(ClusterError::Config(format!(
        "{}: 99 runs with seed {seed} started this second",
        runs_dir.display()
    )))
}

/// Chooses ports for every node: free ones, or `base + 10*i + j` checked
/// free. `wanted[i]` lists node i's port names.
pub(crate) fn allocate_ports(
    base: PortBase,
    wanted: &[(String, Ipv4Addr, Vec<String>)],
) -> Result<Vec<BTreeMap<String, u16>>, ClusterError> {
    let mut out = Vec::with_capacity(wanted.len());
    match base {
        PortBase::Auto => {
            // Keep every listener open until all are chosen so no port is
            // handed out twice.
            let mut held = Vec::new();
            for (node, ip, names) in wanted {
                let mut ports = BTreeMap::new();
                for name in names {
                    let what = PathBuf::from(format!("{ip}:0 (port {name} of {node})"));
                    let l = TcpListener::bind((*ip, 0)).map_err(|e| ClusterError::Io {
                        path: what.clone(),
                        source: e,
                    })?;
                    let port = l.local_addr().map_err(io_err(&what))?.port();
                    held.push(l);
                    ports.insert(name.clone(), port);
                }
                out.push(ports);
            }
        }
        PortBase::Fixed(base) => {
            for (i, (node, ip, names)) in wanted.iter().enumerate() {
                let mut ports = BTreeMap::new();
                for (j, name) in names.iter().enumerate() {
                    let port = u32::from(base) + 10 * i as u32 + j as u32;
                    let port = u16::try_from(port).map_err(|_| {
                        ClusterError::Config(format!(
                            "port_base {base} leaves no room for node {node}'s ports"
                        ))
                    })?;
                    if TcpListener::bind((*ip, port)).is_err() {
                        return Err(ClusterError::PortInUse {
                            port,
                            node: node.clone(),
                            purpose: name.clone(),
                        });
                    }
                    ports.insert(name.clone(), port);
                }
                out.push(ports);
            }
        }
    }
    Ok(out)
}

/// Writes the S3 credentials as an AWS shared-credentials file, mode 0600.
pub(super) fn write_credentials(
    path: &Path,
    key_id: &str,
    secret: &str,
) -> Result<(), ClusterError> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .create_new(true)
        .write(true)
        .mode(0o600)
        .open(path)
        .map_err(io_err(path))?;
    writeln!(
        f,
        "[faultline]\naws_access_key_id = {key_id}\naws_secret_access_key = {secret}"
    )
    .map_err(io_err(path))
}

pub(super) fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

pub(super) fn dedup(items: Vec<String>) -> Vec<String> {
    let mut seen = std::collections::BTreeSet::new();
    items
        .into_iter()
        .filter(|i| seen.insert(i.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_endpoints_pass_and_others_need_allow_remote() {
        for ok in [
            "http://127.0.0.1:3900",
            "http://127.8.9.10:1/",
            "http://localhost:9000",
            "http://[::1]:80",
        ] {
            check_endpoints(&[ok.into()], false).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        let err = check_endpoints(&["http://10.0.0.5:9000".into()], false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("--allow-remote"), "{err}");
        check_endpoints(&["http://10.0.0.5:9000".into()], true).unwrap();
        assert!(check_endpoints(&["not a url".into()], false).is_err());
    }

    #[test]
    fn fixed_ports_follow_the_base_and_report_a_taken_one() {
        let ip = Ipv4Addr::new(127, 100, 0, 1);
        let wanted = vec![(
            "n1".to_string(),
            ip,
            vec!["s3".to_string(), "rpc".to_string()],
        )];
        // The port below the held one is the s3 port; another process (a
        // test running beside this one) may hold it too, so try a few. A
        // port held on every address is taken on the node's too.
        for _ in 0..20 {
            let holder = TcpListener::bind("0.0.0.0:0").unwrap();
            let taken = holder.local_addr().unwrap().port();
            match allocate_ports(PortBase::Fixed(taken - 1), &wanted).unwrap_err() {
                ClusterError::PortInUse {
                    port,
                    node,
                    purpose,
                } if port == taken => {
                    assert_eq!((node.as_str(), purpose.as_str()), ("n1", "rpc"));
                    return;
                }
                ClusterError::PortInUse { .. } => continue,
                other => panic!("{other}"),
            }
        }
        panic!("the port below every held one was taken as well");
    }

    #[test]
    fn auto_ports_are_distinct() {
        let wanted: Vec<_> = (0..5)
            .map(|i| {
                let ip = Ipv4Addr::new(127, 100, 0, 1 + i as u8);
                (
                    format!("n{i}"),
                    ip,
                    vec!["a".into(), "b".into(), "c".into()],
                )
            })
            .collect();
        let ports = allocate_ports(PortBase::Auto, &wanted).unwrap();
        let all: std::collections::BTreeSet<u16> =
            ports.iter().flat_map(|p| p.values().copied()).collect();
        assert_eq!(all.len(), 15);
    }

    #[test]
    fn secrets_follow_the_seed_and_garage_key_format() {
        let a = Secrets::from_seed(7);
        assert_eq!(a.access_key_id, Secrets::from_seed(7).access_key_id);
        assert_ne!(a.rpc_secret, Secrets::from_seed(8).rpc_secret);
        assert_eq!(a.rpc_secret.len(), 64);
        assert!(a.access_key_id.starts_with("GK") && a.access_key_id.len() == 26);
        assert_eq!(a.secret_access_key.len(), 64);
    }
}
