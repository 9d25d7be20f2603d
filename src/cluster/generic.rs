//! Generic profiles: any cluster described by roles, commands, ports,
//! health probes and hooks, so users can run faultline against their own
//! store without teaching the runner about it.
//!
//! Template variables (see `template.rs`), for commands, files, env values,
//! health probes and hooks:
//! - everywhere: `{run_dir}`, `{profile_dir}`, `{bin}` (with `[binary]`),
//!   `{region}`, `{bucket}`, `{access_key_id}`, `{secret_access_key}`,
//!   `{run_secret}` (64 hex), `{run_token}` (32 hex), and for every node N
//!   `{N.dir}` and `{N.port.P}`;
//! - per node: `{name}`, `{role}`, `{index}`, `{dir}`, `{port.P}`.
//!
//! Nodes are named role + index from 1 (`meta1`, `data2`); a role's spares
//! come after its `count` nodes.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::spec::ClusterSpec;
use super::supervisor::{ProcState, describe_exit};
use super::template::Vars;
use super::{
    ClusterError, Ctx, Node, RETRY_INTERVAL_MS, Secrets, Unmet, allocate_ports, io_err, write_file,
};

#[derive(Debug, Clone)]
enum Health {
    Http(String),
    Tcp(String),
    Command(Vec<String>),
}

pub struct Generic {
    health: BTreeMap<String, Health>,
    bootstrap: Vec<Vec<String>>,
    recovered: Option<Vec<String>>,
    replace: Option<Vec<String>>,
    hook_env: Vec<(String, String)>,
}

impl Generic {
    /// Chooses ports, renders every node's files and commands, and the S3
    /// endpoints. Returns the nodes, the flavor and the endpoints.
    pub fn prepare(
        profile: &ClusterSpec,
        ctx: &Ctx,
        bin: Option<PathBuf>,
        secrets: &Secrets,
        access_key_id: &str,
        secret_access_key: &str,
    ) -> Result<(Vec<Node>, Generic, Vec<String>), ClusterError> {
        let mut global = Vars::default();
        global.set("run_dir", ctx.run_dir.display().to_string());
        global.set("profile_dir", ctx.profile_dir.display().to_string());
        if let Some(bin) = &bin {
            global.set("bin", bin.display().to_string());
        }
        global.set("region", &profile.s3.region);
        global.set("bucket", &profile.s3.bucket);
        global.set("access_key_id", access_key_id);
        global.set("secret_access_key", secret_access_key);
        global.set("run_secret", &secrets.rpc_secret);
        global.set("run_token", &secrets.admin_token);

        // (role index, node index within role from 1, spare)
        let mut layout = Vec::new();
        for (r, role) in profile.roles.iter().enumerate() {
            for i in 1..=role.count + role.spares {
                layout.push((r, i, i > role.count));
            }
        }
        let wanted: Vec<(String, Ipv4Addr, Vec<String>)> = layout
            .iter()
            .enumerate()
            .map(|(n, &(r, i, _))| {
                (
                    format!("{}{i}", profile.roles[r].name),
                    ctx.addrs.ip(n),
                    profile.roles[r].ports.clone(),
                )
            })
            .collect();
        let ports = allocate_ports(profile.port_base, &wanted)?;
        for ((name, ip, _), ports) in wanted.iter().zip(&ports) {
            let dir = ctx.run_dir.join("nodes").join(name);
            global.set(format!("{name}.dir"), dir.display().to_string());
            global.set(format!("{name}.ip"), ip.to_string());
            for (p, port) in ports {
                global.set(format!("{name}.port.{p}"), port.to_string());
            }
        }

        let mut nodes = Vec::new();
        let mut health = BTreeMap::new();
        for ((&(r, i, spare), (name, ip, _)), ports) in layout.iter().zip(&wanted).zip(ports) {
            let role = &profile.roles[r];
            let dir = ctx.run_dir.join("nodes").join(name);
            let mut local = Vars::default();
            local.set("name", name);
            local.set("role", &role.name);
            local.set("index", i.to_string());
            local.set("dir", dir.display().to_string());
            local.set("ip", ip.to_string());
            for (p, port) in &ports {
                local.set(format!("port.{p}"), port.to_string());
            }
            let vars = global.with(&local);
            let ctxt = |what: &str| format!("role {} ({what}) of node {name}", role.name);
            std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
            let mut data_dirs = Vec::new();
            for d in &role.data_dirs {
                let path = dir.join(d);
                std::fs::create_dir_all(&path).map_err(io_err(&path))?;
                data_dirs.push(path);
            }
            for f in &role.files {
                let text = vars.render(&f.template, &ctxt(&format!("file {}", f.path)))?;
                let path = dir.join(&f.path);
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent).map_err(io_err(parent))?;
                }
                write_file(&path, &text)?;
            }
            let argv = vars.render_all(&role.command, &ctxt("command"))?;
            let mut env = Vec::new();
            for (k, v) in &role.env {
                env.push((k.clone(), vars.render(v, &ctxt(&format!("env {k}")))?));
            }
            if let Some(h) = &role.health {
                let probe = match (&h.http, &h.tcp, &h.command) {
                    (Some(url), _, _) => Health::Http(vars.render(url, &ctxt("health.http"))?),
                    (_, Some(addr), _) => Health::Tcp(vars.render(addr, &ctxt("health.tcp"))?),
                    (_, _, Some(cmd)) => {
                        Health::Command(vars.render_all(cmd, &ctxt("health.command"))?)
                    }
                    _ => unreachable!("validation requires exactly one health probe"),
                };
                health.insert(name.clone(), probe);
            }
            nodes.push(Node {
                name: name.clone(),
                role: role.name.clone(),
                spare,
                log: dir.join("node.log"),
                program: PathBuf::from(&argv[0]),
                args: argv[1..].to_vec(),
                env,
                s3_endpoint: None,
                ip: *ip,
                ports,
                data_dirs,
                dir,
                pid: None,
                starts: 0,
                retired: false,
            });
        }

        let endpoints = global.render_all(&profile.s3.endpoints, "s3.endpoints")?;
        for ep in &endpoints {
            let url = reqwest::Url::parse(ep).map_err(|e| {
                ClusterError::Config(format!("s3.endpoints: {ep} is not a URL ({e})"))
            })?;
            let port = url.port_or_known_default();
            let host = url.host_str().and_then(|h| h.parse::<Ipv4Addr>().ok());
            let serves = |n: &Node| port.is_some_and(|p| n.ports.values().any(|&q| q == p));
            // The node at that address, else (an endpoint named by
            // 127.0.0.1 or a name) the node with that port.
            let at = nodes
                .iter()
                .position(|n| serves(n) && host == Some(n.ip))
                .or_else(|| nodes.iter().position(serves));
            if let Some(node) = at.map(|i| &mut nodes[i]) {
                node.s3_endpoint = Some(ep.clone());
            }
        }
        let hooks = profile.hooks.clone().unwrap_or_default();
        let bootstrap = hooks
            .bootstrap
            .iter()
            .enumerate()
            .map(|(i, h)| global.render_all(h, &format!("hooks.bootstrap[{i}]")))
            .collect::<Result<_, _>>()?;
        let recovered = hooks
            .recovered
            .as_ref()
            .map(|h| global.render_all(h, "hooks.recovered"))
            .transpose()?;
        let replace = hooks
            .replace
            .as_ref()
            .map(|h| global.render_all(h, "hooks.replace"))
            .transpose()?;
        let hook_env = vec![
            (
                "FAULTLINE_CLUSTER_JSON".into(),
                ctx.run_dir.join("cluster.json").display().to_string(),
            ),
            ("FAULTLINE_S3_ENDPOINTS".into(), endpoints.join(" ")),
            ("FAULTLINE_S3_REGION".into(), profile.s3.region.clone()),
            ("FAULTLINE_S3_BUCKET".into(), profile.s3.bucket.clone()),
            (
                "FAULTLINE_S3_ACCESS_KEY_ID".into(),
                access_key_id.to_string(),
            ),
            (
                "FAULTLINE_S3_SECRET_ACCESS_KEY".into(),
                secret_access_key.to_string(),
            ),
        ];
        let generic = Generic {
            health,
            bootstrap,
            recovered,
            replace,
            hook_env,
        };
        Ok((nodes, generic, endpoints))
    }

    /// Waits for every started node's health probe, then runs the
    /// bootstrap hooks in order.
    pub async fn bootstrap(&self, ctx: &Ctx, nodes: &[Node]) -> Result<(), ClusterError> {
        for node in nodes.iter().filter(|n| n.is_active()) {
            self.wait_healthy(ctx, node).await?;
        }
        for (i, argv) in self.bootstrap.iter().enumerate() {
            let label = format!("bootstrap hook {}", i + 1);
            let out = ctx.run_command(&label, argv, &self.hook_env).await?;
            if !out.success {
                return Err(ClusterError::Step {
                    node: "cluster".into(),
                    step: label,
                    detail: format!("{}: {}", out.status, super::last_line(&out.output)),
                    log: ctx.run_dir.join("commands.log").display().to_string(),
                });
            }
        }
        Ok(())
    }

    async fn wait_healthy(&self, ctx: &Ctx, node: &Node) -> Result<(), ClusterError> {
        let deadline = Instant::now() + Duration::from_millis(ctx.timeouts.step_ms);
        let step_err = |detail: String| ClusterError::Step {
            node: node.name.clone(),
            step: "health probe".into(),
            detail,
            log: node.log.display().to_string(),
        };
        loop {
            if let Some(pid) = node.pid
                && let ProcState::Exited(status) = ctx.sup.state(pid).await?
            {
                return Err(step_err(format!(
                    "process exited ({})",
                    describe_exit(status)
                )));
            }
            let detail = match self.health.get(&node.name) {
                None => return Ok(()),
                Some(h) => match probe(ctx, h).await {
                    Ok(()) => return Ok(()),
                    Err(e) => e,
                },
            };
            if Instant::now() >= deadline {
                return Err(step_err(format!(
                    "{detail} after {} ms",
                    ctx.timeouts.step_ms
                )));
            }
            tokio::time::sleep(Duration::from_millis(RETRY_INTERVAL_MS)).await;
        }
    }

    /// Hands a dead node's share to a started spare: waits for the spare's
    /// health probe, then runs the `replace` hook with both nodes named in
    /// its environment (`FAULTLINE_DEAD_NODE`, `FAULTLINE_DEAD_DIR`,
    /// `FAULTLINE_SPARE_NODE`, `FAULTLINE_SPARE_DIR`).
    pub async fn replace(&self, ctx: &Ctx, dead: &Node, spare: &Node) -> Result<(), ClusterError> {
        let Some(argv) = &self.replace else {
            return Err(ClusterError::Config(
                "the profile has no [hooks] replace command, so a dead node cannot be replaced"
                    .into(),
            ));
        };
        self.wait_healthy(ctx, spare).await?;
        let mut env = self.hook_env.clone();
        env.extend([
            ("FAULTLINE_DEAD_NODE".to_string(), dead.name.clone()),
            (
                "FAULTLINE_DEAD_DIR".to_string(),
                dead.dir.display().to_string(),
            ),
            ("FAULTLINE_SPARE_NODE".to_string(), spare.name.clone()),
            (
                "FAULTLINE_SPARE_DIR".to_string(),
                spare.dir.display().to_string(),
            ),
        ]);
        let out = ctx.run_command("replace hook", argv, &env).await?;
        if !out.success {
            return Err(ClusterError::Step {
                node: spare.name.clone(),
                step: format!("replace hook ({} for {})", spare.name, dead.name),
                detail: format!("{}: {}", out.status, super::last_line(&out.output)),
                log: ctx.run_dir.join("commands.log").display().to_string(),
            });
        }
        Ok(())
    }

    /// Whether the profile can replace a dead node.
    pub fn can_replace(&self) -> bool {
        self.replace.is_some()
    }

    /// The generic gate conditions: each running node's health probe and
    /// the `recovered` hook.
    pub async fn gate(&self, ctx: &Ctx, up: &[&Node]) -> Vec<Unmet> {
        let probes = up.iter().map(|node| async move {
            let h = self.health.get(&node.name)?;
            probe(ctx, h)
                .await
                .err()
                .map(|e| Unmet::node(node, "health probe", e))
        });
        let mut unmet: Vec<Unmet> = futures::future::join_all(probes)
            .await
            .into_iter()
            .flatten()
            .collect();
        if let Some(argv) = &self.recovered {
            match ctx
                .run_command("recovered hook", argv, &self.hook_env)
                .await
            {
                Ok(out) if out.success => {}
                Ok(out) => unmet.push(Unmet {
                    node: None,
                    condition: "recovered hook".into(),
                    detail: format!("{}: {}", out.status, super::last_line(&out.output)),
                }),
                Err(e) => unmet.push(Unmet {
                    node: None,
                    condition: "recovered hook".into(),
                    detail: e.to_string(),
                }),
            }
        }
        unmet
    }
}

async fn probe(ctx: &Ctx, health: &Health) -> Result<(), String> {
    match health {
        Health::Http(url) => {
            let resp = ctx
                .http
                .get(url)
                .send()
                .await
                .map_err(|e| format!("GET {url}: {e}"))?;
            if resp.status().is_success() {
                Ok(())
            } else {
                Err(format!("GET {url}: HTTP {}", resp.status()))
            }
        }
        Health::Tcp(addr) => {
            let connect = tokio::net::TcpStream::connect(addr.as_str());
            match tokio::time::timeout(Duration::from_secs(2), connect).await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e)) => Err(format!("tcp {addr}: {e}")),
                Err(_) => Err(format!("tcp {addr}: no answer in 2 s")),
            }
        }
        Health::Command(argv) => {
            let out = ctx
                .run_command("health probe", argv, &[])
                .await
                .map_err(|e| e.to_string())?;
            if out.success {
                Ok(())
            } else {
                Err(format!("{}: {}", out.status, super::last_line(&out.output)))
            }
        }
    }
}
