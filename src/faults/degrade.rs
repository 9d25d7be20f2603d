//! Degraded links and faulty client paths: the network works, badly.
//!
//! Between two nodes A and B (both directions of the link):
//! `link-loss` drops a random share of the packets (an nftables rule,
//! `numgen random`), `link-latency` delays every chunk and `link-bandwidth`
//! throttles it, through the runner's relay (`net::proxy`).
//!
//! On the workload's way to one node's S3 endpoint, Toxiproxy's menu:
//! `client-latency` (delay with jitter), `client-bandwidth`,
//! `client-blackhole` (accepts, never answers), `client-reset` (the request
//! reaches the node, the answer is replaced by a reset), `client-slicer`
//! (small segments) and `client-limit-data` (the answer cut after N bytes).
//! These make ambiguous writes and unavailable reads on purpose; none may
//! become a finding.
//!
//! A relayed fault redirects the link's new connections to the relay
//! (`dnat` in the run's table) and resets the ones already open (a
//! `reject with tcp reset` that the redirected ones no longer match), so
//! every connection of the link goes through the toxic for the hold.
//! Confirmed by a probe from the link's source address that the relay
//! accepts; loss by the drop rule's counter. Healing deletes the table,
//! then heals the relay: the toxic ends for every connection at once, and
//! the ones still open stay relayed, unchanged, until they end (the
//! cluster keeps the relay), since closing them would fail the requests in
//! flight on them, which no healed network does.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use rand::Rng;
use serde_json::json;

use super::{Choose, Chosen, Fault, KindSpec, Planned, Step, StepResult};
use crate::cluster::{ClusterError, Node};
use crate::net::proxy::{MARK, Proxy, Toxic};
use crate::net::{Rules, connect_from, reach};

pub(super) const KINDS: &[KindSpec] = &[
    KindSpec {
        name: "link-loss",
        min_nodes: 2,
        net: true,
        choose: |p, cx| link(p, cx, Degrade::Loss(cx.settings.loss_percent)),
    },
    KindSpec {
        name: "link-latency",
        min_nodes: 2,
        net: true,
        choose: |p, cx| link(p, cx, Degrade::Relay(latency(cx))),
    },
    KindSpec {
        name: "link-bandwidth",
        min_nodes: 2,
        net: true,
        choose: |p, cx| link(p, cx, Degrade::Relay(bandwidth(cx))),
    },
    KindSpec {
        name: "client-latency",
        min_nodes: 1,
        net: true,
        choose: |p, cx| client(p, cx, latency(cx)),
    },
    KindSpec {
        name: "client-bandwidth",
        min_nodes: 1,
        net: true,
        choose: |p, cx| client(p, cx, bandwidth(cx)),
    },
    KindSpec {
        name: "client-blackhole",
        min_nodes: 1,
        net: true,
        choose: |p, cx| client(p, cx, Toxic::Blackhole),
    },
    KindSpec {
        name: "client-reset",
        min_nodes: 1,
        net: true,
        choose: |p, cx| client(p, cx, Toxic::ResetPeer),
    },
    KindSpec {
        name: "client-slicer",
        min_nodes: 1,
        net: true,
        choose: |p, cx| {
            let bytes = cx.settings.slice_bytes;
            client(p, cx, Toxic::Slicer { bytes })
        },
    },
    KindSpec {
        name: "client-limit-data",
        min_nodes: 1,
        net: true,
        choose: |p, cx| {
            let bytes = cx.settings.limit_bytes;
            client(p, cx, Toxic::LimitData { bytes })
        },
    },
];

/// A probe's deadline.
const PROBE_DEADLINE: Duration = Duration::from_millis(1500);
/// Connect probes a loss rule must drop some packets of.
const LOSS_PROBES: usize = 40;

fn latency(cx: &Choose<'_>) -> Toxic {
    Toxic::Latency {
        delay_ms: cx.settings.latency_ms,
        jitter_ms: cx.settings.jitter_ms,
    }
}

fn bandwidth(cx: &Choose<'_>) -> Toxic {
    Toxic::Bandwidth {
        bytes_per_sec: cx.settings.bandwidth_kib_s * 1024,
    }
}

#[derive(Debug, Clone, Copy)]
enum Degrade {
    Loss(u32),
    Relay(Toxic),
}

/// Where the redirected connections go: `to`, when they come from
/// `from` (any source but the relay's own when `None`).
#[derive(Debug, Clone, Copy)]
struct Path {
    from: Option<Ipv4Addr>,
    to: SocketAddrV4,
}

impl Path {
    fn matches(&self) -> String {
        let from = match self.from {
            Some(ip) => format!("ip saddr {ip} "),
            None => String::new(),
        };
        format!(
            "meta mark != {MARK:#x} {from}ip daddr {} tcp dport {}",
            self.to.ip(),
            self.to.port()
        )
    }

    /// Where a probe of this path leaves from.
    fn probe_from(&self) -> Ipv4Addr {
        self.from.unwrap_or(Ipv4Addr::LOCALHOST)
    }
}

fn link(p: &Planned, cx: &mut Choose<'_>, how: Degrade) -> Chosen {
    let (a, _) = super::process::pick(p, cx)?;
    let others: Vec<&Node> = cx
        .cluster
        .active_nodes(None)
        .into_iter()
        .filter(|n| n.name != a)
        .collect();
    if others.is_empty() {
        return Err("a link needs a second node in service".into());
    }
    let b = others[cx.rng.random_range(0..others.len())].clone();
    let a = cx.cluster.node(&a).expect("picked in service").clone();
    if a.ports.is_empty() || b.ports.is_empty() {
        return Err("a node without ports has no link to degrade".into());
    }
    // Every port of each end, from the other end's address: the store's
    // own connections between the two, whichever side opened them.
    let paths = [(&a, &b), (&b, &a)]
        .iter()
        .flat_map(|(from, to)| {
            to.ports.values().map(|&port| Path {
                from: Some(from.ip),
                to: SocketAddrV4::new(to.ip, port),
            })
        })
        .collect();
    Ok(Box::new(Degraded {
        target: format!("{}<->{}", a.name, b.name),
        how,
        paths,
        seed: cx.rng.random(),
        hold: Duration::from_millis(cx.settings.link_hold_ms),
        proxy: None,
        observed: serde_json::Map::new(),
    }))
}

fn client(p: &Planned, cx: &mut Choose<'_>, toxic: Toxic) -> Chosen {
    let (node, _) = super::process::pick(p, cx)?;
    let n = cx.cluster.node(&node).expect("picked in service");
    let to = n
        .s3_endpoint
        .as_deref()
        .and_then(endpoint_addr)
        .ok_or_else(|| format!("{node} serves no S3 endpoint on an IPv4 address"))?;
    Ok(Box::new(Degraded {
        target: format!("client->{node}"),
        how: Degrade::Relay(toxic),
        paths: vec![Path { from: None, to }],
        seed: cx.rng.random(),
        hold: Duration::from_millis(cx.settings.link_hold_ms),
        proxy: None,
        observed: serde_json::Map::new(),
    }))
}

/// `http://127.1.2.3:3900` as an address.
fn endpoint_addr(url: &str) -> Option<SocketAddrV4> {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    rest.split('/').next()?.parse().ok()
}

#[derive(Debug)]
struct Degraded {
    target: String,
    how: Degrade,
    paths: Vec<Path>,
    seed: u64,
    hold: Duration,
    proxy: Option<Proxy>,
    observed: serde_json::Map<String, serde_json::Value>,
}

impl Degraded {
    /// The rules and, for a relayed fault, the relay they point to.
    async fn rules(&mut self, relay_ip: Ipv4Addr) -> std::io::Result<Rules> {
        let mut rules = Rules::default();
        match self.how {
            Degrade::Loss(percent) => {
                // Both directions of every packet between the two ends.
                let (a, b) = (self.paths[0].probe_from(), *self.paths[0].to.ip());
                for (x, y) in [(a, b), (b, a)] {
                    rules.filter.push(format!(
                        "ip saddr {x} ip daddr {y} numgen random mod 100 < {percent} counter drop"
                    ));
                }
            }
            Degrade::Relay(toxic) => {
                let upstreams: Vec<SocketAddrV4> = self.paths.iter().map(|p| p.to).collect();
                let proxy = Proxy::start(relay_ip, &upstreams, toxic, self.seed).await?;
                for (path, listen) in self.paths.iter().zip(proxy.listening()) {
                    let m = path.matches();
                    rules.nat.push(format!("{m} dnat to {listen}"));
                    rules.filter.push(format!("{m} reject with tcp reset"));
                }
                self.proxy = Some(proxy);
            }
        }
        Ok(rules)
    }

    /// Confirms the fault: loss by its drop counter after a burst of
    /// probes, a relay by a probe of every path that the relay accepted.
    async fn confirm(&self, step: &Step<'_>) -> Result<serde_json::Value, String> {
        match &self.proxy {
            None => {
                let p = &self.paths[0];
                let probes = (0..LOSS_PROBES).map(|_| reach(p.probe_from(), p.to, PROBE_DEADLINE));
                futures::future::join_all(probes).await;
                let listing = step.cluster.links_listing().await.unwrap_or_default();
                let dropped = crate::net::nft::dropped_packets(&listing);
                match dropped {
                    0 => Err(format!(
                        "{LOSS_PROBES} probes, no packet dropped; table: {listing}"
                    )),
                    n => Ok(json!({ "probes": LOSS_PROBES, "dropped_packets": n })),
                }
            }
            Some(proxy) => {
                let mut seen = serde_json::Map::new();
                let mut wrong = Vec::new();
                for p in &self.paths {
                    let name = format!("{}->{}", p.probe_from(), p.to);
                    let ok = match connect_from(p.probe_from(), p.to, PROBE_DEADLINE).await {
                        Ok((_stream, local)) => {
                            // The relay records the peer once its accept runs.
                            let mut seen = false;
                            for _ in 0..100 {
                                seen = proxy.stats.accepted_from(local);
                                if seen {
                                    break;
                                }
                                tokio::time::sleep(Duration::from_millis(10)).await;
                            }
                            seen
                        }
                        Err(_) => false,
                    };
                    seen.insert(name.clone(), json!(if ok { "relayed" } else { "direct" }));
                    if !ok {
                        wrong.push(name);
                    }
                }
                match wrong.is_empty() {
                    true => Ok(serde_json::Value::Object(seen)),
                    false => Err(format!("not redirected to the relay: {}", wrong.join(", "))),
                }
            }
        }
    }
}

impl Fault for Degraded {
    fn target(&self) -> String {
        self.target.clone()
    }

    fn params(&self) -> serde_json::Value {
        let mut p = self.observed.clone();
        match self.how {
            Degrade::Loss(percent) => p.insert("loss_percent".into(), json!(percent)),
            Degrade::Relay(toxic) => p.insert("toxic".into(), json!(toxic)),
        };
        p.insert("hold_ms".into(), json!(self.hold.as_millis() as u64));
        p.insert(
            "paths".into(),
            json!(
                self.paths
                    .iter()
                    .map(|p| format!("{}->{}", p.probe_from(), p.to))
                    .collect::<Vec<_>>()
            ),
        );
        serde_json::Value::Object(p)
    }

    fn apply<'a>(&'a mut self, step: &'a mut Step<'_>) -> StepResult<'a> {
        Box::pin(async move {
            let relay_ip = step.cluster.relay_ip();
            let rules = self.rules(relay_ip).await.map_err(|e| {
                step.cluster_error(ClusterError::Net(format!("cannot start the relay: {e}")))
            })?;
            self.observed.insert(
                "rules".into(),
                json!([rules.nat.as_slice(), rules.filter.as_slice()].concat()),
            );
            step.cut_links(&rules).await?;
            let seen = self
                .confirm(step)
                .await
                .map_err(|e| step.not_confirmed(e))?;
            self.observed.insert("probes".into(), seen);
            step.confirmed();
            Ok(())
        })
    }

    fn hold(&self) -> Duration {
        self.hold
    }

    fn undo<'a>(&'a mut self, step: &'a mut Step<'_>) -> StepResult<'a> {
        Box::pin(async move {
            if self.proxy.is_none() {
                let listing = step.cluster.links_listing().await.unwrap_or_default();
                self.observed.insert(
                    "dropped_packets_at_heal".into(),
                    json!(crate::net::nft::dropped_packets(&listing)),
                );
            }
            step.heal_links().await?;
            // New connections go direct again; the ones the relay carries
            // go on without the toxic until they end by themselves.
            if let Some(mut proxy) = self.proxy.take() {
                self.observed.insert("relayed".into(), json!(proxy.heal()));
                step.cluster.keep_relaying(proxy);
            }
            for p in &self.paths {
                if !reach(p.probe_from(), p.to, PROBE_DEADLINE)
                    .await
                    .connected()
                {
                    return Err(step.cluster_error(ClusterError::Net(format!(
                        "{}->{} does not connect after healing",
                        p.probe_from(),
                        p.to
                    ))));
                }
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_matches_its_source_and_skips_the_relay_s_own_sockets() {
        let to = "127.100.3.2:3901".parse().unwrap();
        let p = Path {
            from: Some("127.100.3.1".parse().unwrap()),
            to,
        };
        assert_eq!(
            p.matches(),
            "meta mark != 0xfa17 ip saddr 127.100.3.1 ip daddr 127.100.3.2 tcp dport 3901"
        );
        let any = Path { from: None, to };
        assert_eq!(
            any.matches(),
            "meta mark != 0xfa17 ip daddr 127.100.3.2 tcp dport 3901"
        );
        assert_eq!(any.probe_from(), Ipv4Addr::LOCALHOST);
    }

    #[test]
    fn an_endpoint_url_names_its_address() {
        assert_eq!(
            endpoint_addr("http://127.1.2.3:3900"),
            Some("127.1.2.3:3900".parse().unwrap())
        );
        assert_eq!(endpoint_addr("http://localhost:3900/"), None);
    }
}
