//! The built-in Garage flavor: per-node `garage.toml`, bootstrap through
//! Garage's own CLI, and the health conditions of the recovery gate.
//!
//! The facts this relies on (measured on these hosts) are collected in
//! `shared/design/garage.md`: `GetClusterHealth` is one node's view, so every
//! node is asked; the block resync queue may stay non-empty by design, so
//! the gate looks at errored blocks instead; keys and buckets reach each
//! node's S3 endpoint lazily, so boot probes every endpoint.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use super::spec::{ClusterSpec, GarageSection};
use super::{
    ClusterError, Ctx, Node, S3Target, Secrets, Unmet, allocate_ports, io_err, write_file,
};

/// Port names of a Garage node, in `port_base` offset order.
const PORTS: [&str; 3] = ["s3", "rpc", "admin"];

/// Metrics of the gate: what they say, and whether they must read 0
/// (errored blocks) or only stay within the profile's backlog bound (the
/// merkle updater, which a busy cluster is never quite done with).
const GATE_METRICS: [(&str, &str, bool); 2] = [
    ("block_resync_errored_blocks", ERRORED_BLOCKS, true),
    (
        "table_merkle_updater_todo_queue_length",
        "table sync (merkle updater) backlog",
        false,
    ),
];

/// The gate condition of errored resync blocks.
pub const ERRORED_BLOCKS: &str = "errored resync blocks";

pub struct Garage {
    bin: PathBuf,
    secrets: Secrets,
    settings: GarageSection,
    /// `hex@addr` of every node that has been started, by node name.
    node_ids: BTreeMap<String, String>,
    layout_version: u64,
}

impl Garage {
    /// Chooses ports and renders every node's configuration (spares too).
    pub fn prepare(
        profile: &ClusterSpec,
        ctx: &Ctx,
        bin: Option<PathBuf>,
        secrets: Secrets,
    ) -> Result<(Vec<Node>, Garage), ClusterError> {
        let settings = profile
            .garage
            .clone()
            .expect("a validated garage profile has a [garage] table");
        let bin = bin.expect("a garage profile always resolves a binary");
        let total = settings.nodes + settings.spares;
        let wanted: Vec<(String, Ipv4Addr, Vec<String>)> = (1..=total)
            .map(|i| {
                (
                    format!("n{i}"),
                    ctx.addrs.ip(i as usize - 1),
                    PORTS.iter().map(|p| p.to_string()).collect(),
                )
            })
            .collect();
        let ports = allocate_ports(profile.port_base, &wanted)?;
        let mut nodes = Vec::new();
        for (i, ((name, ip, _), ports)) in wanted.into_iter().zip(ports).enumerate() {
            let dir = ctx.run_dir.join("nodes").join(&name);
            let meta = dir.join("meta");
            let data = dir.join("data");
            for d in [&meta, &data] {
                std::fs::create_dir_all(d).map_err(io_err(d))?;
            }
            let config = dir.join("garage.toml");
            write_file(
                &config,
                &render_config(&settings, &secrets, &profile.s3.region, &dir, ip, &ports),
            )?;
            nodes.push(Node {
                name,
                role: "storage".into(),
                spare: i as u32 >= settings.nodes,
                log: dir.join("node.log"),
                program: bin.clone(),
                args: vec!["-c".into(), config.display().to_string(), "server".into()],
                env: vec![("RUST_LOG".into(), settings.log_filter.clone())],
                s3_endpoint: Some(format!("http://{ip}:{}", ports["s3"])),
                ip,
                ports,
                data_dirs: vec![meta, data],
                dir,
                pid: None,
                starts: 0,
                retired: false,
            });
        }
        let garage = Garage {
            bin,
            secrets,
            settings,
            node_ids: BTreeMap::new(),
            layout_version: 0,
        };
        Ok((nodes, garage))
    }

    fn cli(&self, node: &Node, args: &[&str]) -> Vec<String> {
        let mut argv = vec![
            self.bin.display().to_string(),
            "-c".into(),
            node.dir.join("garage.toml").display().to_string(),
        ];
        argv.extend(args.iter().map(|s| s.to_string()));
        argv
    }

    /// Connects the started nodes, applies the first layout, and creates
    /// the access key and the bucket.
    pub async fn bootstrap(
        &mut self,
        ctx: &Ctx,
        nodes: &[Node],
        s3: &S3Target,
    ) -> Result<(), ClusterError> {
        let active: Vec<&Node> = nodes.iter().filter(|n| !n.spare).collect();
        let first = active[0];
        for node in &active {
            self.node_id(ctx, node).await?;
        }
        for node in active.iter().skip(1) {
            let id = self.node_ids[&node.name].clone();
            ctx.retry_command(
                node,
                "garage node connect",
                &self.cli(first, &["node", "connect", &id]),
            )
            .await?;
        }
        for node in &active {
            self.assign(ctx, node, first).await?;
        }
        self.apply_layout(ctx, first).await?;
        let key = &s3.access_key_id;
        let key_args = [
            "key",
            "import",
            "--yes",
            "-n",
            "faultline",
            key,
            &s3.secret_access_key,
        ];
        ctx.retry_command(first, "garage key import", &self.cli(first, &key_args))
            .await?;
        ctx.retry_command(
            first,
            "garage bucket create",
            &self.cli(first, &["bucket", "create", &s3.bucket]),
        )
        .await?;
        let allow = [
            "bucket", "allow", "--read", "--write", "--owner", &s3.bucket, "--key", key,
        ];
        ctx.retry_command(first, "garage bucket allow", &self.cli(first, &allow))
            .await?;
        self.set_resync(ctx, first, true).await
    }

    /// Sets the profile's resync tranquility and worker count on `node`,
    /// or with `all` on every node it is connected to. Garage keeps them
    /// in the node's metadata, across restarts.
    async fn set_resync(&self, ctx: &Ctx, node: &Node, all: bool) -> Result<(), ClusterError> {
        let values = [
            (
                "resync-tranquility",
                self.settings.resync_tranquility.to_string(),
            ),
            (
                "resync-worker-count",
                self.settings.resync_worker_count.to_string(),
            ),
        ];
        for (var, value) in &values {
            let mut args = vec!["worker", "set"];
            if all {
                args.push("-a");
            }
            args.extend([*var, value.as_str()]);
            ctx.retry_command(node, "garage worker set", &self.cli(node, &args))
                .await?;
        }
        Ok(())
    }

    /// Moves a dead node's share to a started spare: connect the spare,
    /// remove the dead node from the layout, assign the spare in its own
    /// zone, apply. The cluster then rebalances onto the spare.
    pub async fn replace(
        &mut self,
        ctx: &Ctx,
        dead: &Node,
        spare: &Node,
        via: &Node,
    ) -> Result<(), ClusterError> {
        let id = self.node_id(ctx, spare).await?;
        ctx.retry_command(
            spare,
            "garage node connect",
            &self.cli(via, &["node", "connect", &id]),
        )
        .await?;
        let dead_hex = self
            .node_ids
            .get(&dead.name)
            .and_then(|id| id.split('@').next())
            .ok_or_else(|| ClusterError::Config(format!("{} has no known node id", dead.name)))?
            .to_string();
        ctx.retry_command(
            via,
            "garage layout remove",
            &self.cli(via, &["layout", "remove", &dead_hex]),
        )
        .await?;
        self.assign(ctx, spare, via).await?;
        self.apply_layout(ctx, via).await?;
        // The old layout version still counts the dead node, which will
        // never acknowledge the new one: tell Garage to stop waiting for it
        // (refused, and retried, while the live nodes hold no quorum of
        // the data; never with --allow-missing-data).
        let version = self.layout_version.to_string();
        ctx.retry_command(
            via,
            "garage layout skip-dead-nodes",
            &self.cli(via, &["layout", "skip-dead-nodes", "--version", &version]),
        )
        .await?;
        self.set_resync(ctx, spare, false).await
    }

    /// Reads a started node's `id@addr` and remembers it.
    async fn node_id(&mut self, ctx: &Ctx, node: &Node) -> Result<String, ClusterError> {
        let out = ctx
            .retry_command(
                node,
                "garage node id",
                &self.cli(node, &["node", "id", "-q"]),
            )
            .await?;
        let id = out
            .output
            .lines()
            .map(str::trim)
            .find(|l| l.contains('@'))
            .ok_or_else(|| ClusterError::Step {
                node: node.name.clone(),
                step: "garage node id".into(),
                detail: format!("no `id@addr` in output: {}", out.output.trim()),
                log: node.log.display().to_string(),
            })?
            .to_string();
        self.node_ids.insert(node.name.clone(), id.clone());
        Ok(id)
    }

    /// Stages a node in the layout, in a zone of its own so replicas
    /// spread over as many nodes as can be.
    async fn assign(&self, ctx: &Ctx, node: &Node, via: &Node) -> Result<(), ClusterError> {
        let hex_id = self.node_ids[&node.name]
            .split('@')
            .next()
            .unwrap_or_default()
            .to_string();
        let args = [
            "layout",
            "assign",
            "-z",
            &node.name,
            "-c",
            &self.settings.capacity,
            &hex_id,
        ];
        ctx.retry_command(node, "garage layout assign", &self.cli(via, &args))
            .await?;
        Ok(())
    }

    /// Applies the staged layout as the next version (exactly current + 1).
    async fn apply_layout(&mut self, ctx: &Ctx, via: &Node) -> Result<(), ClusterError> {
        let next = (self.layout_version + 1).to_string();
        // Not retried: a retry after an apply that took effect would ask for
        // a version that no longer follows the current one.
        let out = ctx
            .run_command(
                "garage layout apply",
                &self.cli(via, &["layout", "apply", "--version", &next]),
                &[],
            )
            .await?;
        if !out.success {
            return Err(ClusterError::Step {
                node: via.name.clone(),
                step: format!("garage layout apply --version {next}"),
                detail: format!("{}: {}", out.status, out.output.trim()),
                log: via.log.display().to_string(),
            });
        }
        self.layout_version += 1;
        Ok(())
    }

    /// Where each node's `/metrics` answers, and with which token.
    pub fn metrics_targets(&self, nodes: &[&Node]) -> Vec<super::MetricsTarget> {
        nodes
            .iter()
            .map(|n| super::MetricsTarget {
                node: n.name.clone(),
                url: format!("http://{}:{}/metrics", n.ip, n.ports["admin"]),
                token: self.secrets.metrics_token.clone(),
            })
            .collect()
    }

    /// Asks each node to retry its errored blocks now. A block whose
    /// resync failed while a peer was down (the usual case: the peer was
    /// being restarted by a fault) waits out a growing backoff, behind
    /// the resync backlog, before Garage tries it again; this is the
    /// operator's `garage block retry-now --all`. A block missing
    /// everywhere fails again, and the gate keeps failing on it.
    pub async fn retry_errored_blocks(&self, ctx: &Ctx, nodes: &[&Node]) {
        for node in nodes {
            let argv = self.cli(node, &["block", "retry-now", "--all"]);
            if let Err(e) = ctx.run_command("garage block retry-now", &argv, &[]).await {
                tracing::warn!(node = %node.name, error = %e, "garage block retry-now failed");
            }
        }
    }

    /// Garage's gate conditions for the nodes whose process runs.
    pub async fn gate(&self, ctx: &Ctx, up: &[&Node]) -> Vec<Unmet> {
        let checks = up.iter().map(|node| self.gate_node(ctx, node));
        futures::future::join_all(checks)
            .await
            .into_iter()
            .flatten()
            .collect()
    }

    async fn gate_node(&self, ctx: &Ctx, node: &Node) -> Vec<Unmet> {
        let admin = format!("http://{}:{}", node.ip, node.ports["admin"]);
        let mut unmet = Vec::new();
        let health = async {
            let text = admin_get(
                ctx,
                &format!("{admin}/v2/GetClusterHealth"),
                &self.secrets.admin_token,
            )
            .await?;
            let v: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| format!("bad JSON ({e}): {text}"))?;
            match v["status"].as_str() {
                Some("healthy") => Ok(()),
                Some(other) => Err(format!(
                    "\"{other}\" (connected nodes {}, storage nodes up {}/{}, partitions all ok {}/{})",
                    v["connectedNodes"],
                    v["storageNodesUp"],
                    v["storageNodes"],
                    v["partitionsAllOk"],
                    v["partitions"]
                )),
                None => Err(format!("no status in {text}")),
            }
        };
        let metrics_url = format!("{admin}/metrics");
        let metrics = admin_get(ctx, &metrics_url, &self.secrets.metrics_token);
        let (health, metrics) = tokio::join!(health, metrics);
        if let Err(detail) = health {
            unmet.push(Unmet::node(node, "GetClusterHealth", detail));
        }
        match metrics {
            Err(detail) => unmet.push(Unmet::node(node, "metrics", detail)),
            Ok(text) => {
                for (metric, what, zero) in GATE_METRICS {
                    let max = if zero {
                        0.0
                    } else {
                        self.settings.gate_merkle_backlog_max as f64
                    };
                    match metric_sum(&text, metric) {
                        Some(v) if v <= max => {}
                        Some(v) => unmet.push(Unmet::node(
                            node,
                            what,
                            format!("{metric} = {v} (at most {max} to pass)"),
                        )),
                        None => {
                            unmet.push(Unmet::node(node, what, format!("{metric} not reported")))
                        }
                    }
                }
            }
        }
        unmet
    }
}

impl Garage {
    /// Which peers each node reports down (`GetClusterStatus`, asked of
    /// the node itself), by node name; or why it did not answer.
    pub async fn peers_down(
        &self,
        ctx: &Ctx,
        asked: &[&Node],
        all: &[Node],
    ) -> BTreeMap<String, Result<Vec<String>, String>> {
        let ask = asked.iter().map(|node| async move {
            let url = format!(
                "http://{}:{}/v2/GetClusterStatus",
                node.ip, node.ports["admin"]
            );
            let answer = admin_get(ctx, &url, &self.secrets.admin_token)
                .await
                .and_then(|text| {
                    let v: serde_json::Value = serde_json::from_str(&text)
                        .map_err(|e| format!("bad JSON ({e}): {text}"))?;
                    let peers = v["nodes"].as_array().cloned().unwrap_or_default();
                    Ok(peers
                        .iter()
                        .filter(|p| p["isUp"] == serde_json::Value::Bool(false))
                        .filter_map(|p| self.name_of(p, all))
                        .collect())
                });
            (node.name.clone(), answer)
        });
        futures::future::join_all(ask).await.into_iter().collect()
    }

    /// The active node a `GetClusterStatus` entry is about: by its id (a
    /// node that is down may have no address there), else its address.
    fn name_of(&self, peer: &serde_json::Value, all: &[Node]) -> Option<String> {
        let id = peer["id"].as_str().unwrap_or_default();
        let by_id = self
            .node_ids
            .iter()
            .find(|(_, v)| !id.is_empty() && v.split('@').next() == Some(id))
            .map(|(name, _)| name.clone());
        let by_addr = || {
            let ip = peer["addr"]
                .as_str()?
                .rsplit_once(':')?
                .0
                .parse::<Ipv4Addr>()
                .ok()?;
            all.iter().find(|n| n.ip == ip).map(|n| n.name.clone())
        };
        by_id
            .or_else(by_addr)
            .filter(|name| all.iter().any(|n| &n.name == name && n.is_active()))
    }
}

/// GETs an admin-API URL with a bearer token; the body, or why not.
async fn admin_get(ctx: &Ctx, url: &str, token: &str) -> Result<String, String> {
    let resp = ctx
        .http
        .get(url)
        .bearer_auth(token)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = resp.status();
    let text = resp.text().await.map_err(|e| e.to_string())?;
    if !status.is_success() {
        return Err(format!("HTTP {status}: {}", text.trim()));
    }
    Ok(text)
}

/// Renders one node's `garage.toml`.
fn render_config(
    g: &GarageSection,
    secrets: &Secrets,
    region: &str,
    dir: &std::path::Path,
    ip: Ipv4Addr,
    ports: &BTreeMap<String, u16>,
) -> String {
    format!(
        r#"# Rendered by faultline for this run; edits are overwritten on the next run.
metadata_dir = "{dir}/meta"
data_dir = "{dir}/data"
db_engine = "{db}"
replication_factor = {rf}
consistency_mode = "{cm}"
block_size = {bs}
metadata_fsync = {mf}
data_fsync = {df}
rpc_bind_addr = "{ip}:{rpc}"
rpc_public_addr = "{ip}:{rpc}"
# Outgoing RPC leaves from this node's own address too, so rules that
# name the pair of addresses cut or slow exactly one link.
rpc_bind_outgoing = true
rpc_secret = "{secret}"

[s3_api]
api_bind_addr = "{ip}:{s3}"
s3_region = "{region}"

[admin]
api_bind_addr = "{ip}:{admin}"
admin_token = "{admin_token}"
metrics_token = "{metrics_token}"
"#,
        dir = dir.display(),
        db = g.db_engine.as_str(),
        rf = g.replication_factor,
        cm = g.consistency_mode.as_str(),
        bs = g.block_size,
        mf = g.metadata_fsync,
        df = g.data_fsync,
        rpc = ports["rpc"],
        ip = ip,
        s3 = ports["s3"],
        admin = ports["admin"],
        secret = secrets.rpc_secret,
        admin_token = secrets.admin_token,
        metrics_token = secrets.metrics_token,
    )
}

/// Sums every sample of `name` in a Prometheus text exposition; `None` if
/// the metric does not appear.
pub fn metric_sum(text: &str, name: &str) -> Option<f64> {
    let mut sum = None;
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        if !(rest.starts_with('{') || rest.starts_with(' ')) {
            continue; // a longer metric name sharing this prefix
        }
        let value = rest.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok());
        if let Some(v) = value {
            *sum.get_or_insert(0.0) += v;
        }
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_sum_adds_label_sets_and_ignores_longer_names() {
        let text = "# HELP x\nblock_resync_errored_blocks 2\nblock_resync_errored_blocks_total 9\n\
                    table_merkle_updater_todo_queue_length{table_name=\"a\"} 1\n\
                    table_merkle_updater_todo_queue_length{table_name=\"b\"} 3\n";
        assert_eq!(metric_sum(text, "block_resync_errored_blocks"), Some(2.0));
        assert_eq!(
            metric_sum(text, "table_merkle_updater_todo_queue_length"),
            Some(4.0)
        );
        assert_eq!(metric_sum(text, "cluster_healthy"), None);
    }

    #[test]
    fn config_has_the_node_ports_and_shared_secret() {
        let profile = crate::profile::Profile::parse(
            std::path::Path::new("t.toml"),
            "name = \"g\"\nkind = \"garage\"\n[garage]\nversion = \"2.5.0\"\nnodes = 3\nreplication_factor = 3\n",
        )
        .unwrap();
        let ports = BTreeMap::from([("s3".into(), 1), ("rpc".into(), 2), ("admin".into(), 3)]);
        let secrets = Secrets::from_seed(1);
        let text = render_config(
            profile.cluster.garage.as_ref().unwrap(),
            &secrets,
            "garage",
            std::path::Path::new("/r/n1"),
            Ipv4Addr::new(127, 100, 7, 1),
            &ports,
        );
        let parsed: toml::Table = toml::from_str(&text).unwrap();
        assert_eq!(parsed["rpc_bind_addr"].as_str(), Some("127.100.7.1:2"));
        assert_eq!(parsed["rpc_public_addr"].as_str(), Some("127.100.7.1:2"));
        assert_eq!(parsed["rpc_bind_outgoing"].as_bool(), Some(true));
        assert_eq!(
            parsed["s3_api"]["api_bind_addr"].as_str(),
            Some("127.100.7.1:1")
        );
        assert_eq!(
            parsed["rpc_secret"].as_str(),
            Some(secrets.rpc_secret.as_str())
        );
        assert_eq!(parsed["consistency_mode"].as_str(), Some("consistent"));
        assert_eq!(parsed["db_engine"].as_str(), Some("sqlite"));
    }
}
