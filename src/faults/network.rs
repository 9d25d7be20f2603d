//! Network partitions between nodes, Jepsen's shapes: one node isolated
//! (`partition-node`), a one-way cut (`partition-one-way`: A cannot reach
//! B, B still reaches A), random majority/minority halves
//! (`partition-halves`), two halves sharing one node (`partition-bridge`)
//! and a ring of overlapping majorities (`partition-ring`). Each is a set
//! of rules in the run's own nftables table, over the nodes' own
//! addresses (`cluster/addrs.rs`), so only links between two nodes are
//! cut: the workload and the runner's admin calls, which leave from
//! 127.0.0.1, still reach every node.
//!
//! A symmetric cut drops every packet between the two addresses. A
//! one-way cut drops every packet of the connections A opens to B (both
//! directions of them, `ct original`), so B's own connections to A keep
//! working, which is what "A cannot reach B" means for TCP.
//!
//! Confirmed by probes from every active node's address to every other's
//! port: exactly the cut pairs must fail, every other pair must connect.
//! At the end of the hold the store's own view (which peers each node
//! reports down) is recorded; healing deletes the table and probes every
//! pair again.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddrV4;
use std::time::Duration;

use rand::seq::SliceRandom;
use serde_json::json;

use super::{Choose, Chosen, Fault, KindSpec, Planned, Step, StepResult};
use crate::cluster::Node;
use crate::net::{Reach, reach};

pub(super) const KINDS: &[KindSpec] = &[
    KindSpec {
        name: "partition-node",
        min_nodes: 2,
        net: true,
        choose: |p, cx| partition(p, cx, Shape::Node),
    },
    KindSpec {
        name: "partition-one-way",
        min_nodes: 2,
        net: true,
        choose: |p, cx| partition(p, cx, Shape::OneWay),
    },
    KindSpec {
        name: "partition-halves",
        min_nodes: 3,
        net: true,
        choose: |p, cx| partition(p, cx, Shape::Halves),
    },
    KindSpec {
        name: "partition-bridge",
        min_nodes: 3,
        net: true,
        choose: |p, cx| partition(p, cx, Shape::Bridge),
    },
    KindSpec {
        name: "partition-ring",
        min_nodes: 4,
        net: true,
        choose: |p, cx| partition(p, cx, Shape::Ring),
    },
];

/// A probe's deadline: a cut link drops the SYN, so the probe times out.
const PROBE_DEADLINE: Duration = Duration::from_millis(1500);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    Node,
    OneWay,
    Halves,
    Bridge,
    Ring,
}

impl Shape {
    fn as_str(self) -> &'static str {
        match self {
            Shape::Node => "isolated node",
            Shape::OneWay => "one-way cut",
            Shape::Halves => "halves",
            Shape::Bridge => "bridge",
            Shape::Ring => "majorities ring",
        }
    }
}

/// The two sides of a halves or bridge shape, in `order`: the minority
/// and the majority (the first n/2 and the rest), or the two halves the
/// bridge (`order[0]`) connects.
fn sides(shape: Shape, order: &[usize]) -> (&[usize], &[usize]) {
    match shape {
        Shape::Halves => order.split_at(order.len() / 2),
        Shape::Bridge => order[1..].split_at((order.len() - 1) / 2),
        _ => unreachable!("only halves and bridges have two sides"),
    }
}

/// Which ordered pairs (a, b), indices into the nodes, cannot reach each
/// other: for a symmetric shape both (a, b) and (b, a); for the one-way
/// cut only (a, b). `order` is the nodes drawn in a seeded order, the
/// target first.
fn cuts(shape: Shape, order: &[usize]) -> BTreeSet<(usize, usize)> {
    let n = order.len();
    let mut out = BTreeSet::new();
    let mut both = |a: usize, b: usize| {
        out.insert((a, b));
        out.insert((b, a));
    };
    match shape {
        Shape::Node => {
            for &b in &order[1..] {
                both(order[0], b);
            }
        }
        Shape::OneWay => {
            out.insert((order[0], order[1]));
        }
        Shape::Halves | Shape::Bridge => {
            // Nothing within a side is cut; a bridge reaches both sides.
            let (left, right) = sides(shape, order);
            for &a in left {
                for &b in right {
                    both(a, b);
                }
            }
        }
        Shape::Ring => {
            // Each node keeps its neighbours within `reach` on a ring in the
            // order: itself and 2 * reach others, a majority; farther ones
            // are cut, so no two nodes see the same majority.
            let majority = n / 2 + 1;
            let keep = majority / 2;
            for i in 0..n {
                for j in i + 1..n {
                    let d = (j - i).min(n - (j - i));
                    if d > keep {
                        both(order[i], order[j]);
                    }
                }
            }
        }
    }
    out
}

fn partition(p: &Planned, cx: &mut Choose<'_>, shape: Shape) -> Chosen {
    // The target (a node of the planned role) first, the rest shuffled.
    let (target, _) = super::process::pick(p, cx)?;
    let nodes: Vec<Node> = cx.cluster.active_nodes(None).into_iter().cloned().collect();
    let target = nodes
        .iter()
        .position(|n| n.name == target)
        .expect("the target is a node in service");
    let mut rest: Vec<usize> = (0..nodes.len()).filter(|&i| i != target).collect();
    rest.shuffle(cx.rng);
    let mut order = vec![target];
    order.extend(rest);
    let cut = cuts(shape, &order);
    let probe_port = |n: &Node| {
        n.ports
            .get("rpc")
            .or_else(|| n.ports.values().next())
            .copied()
    };
    if nodes.iter().any(|n| probe_port(n).is_none()) {
        return Err("a node without ports cannot be probed".into());
    }
    Ok(Box::new(Partition {
        shape,
        hold: Duration::from_millis(cx.settings.net_hold_ms),
        target: describe(shape, &nodes, &order, &cut),
        ports: nodes.iter().map(|n| probe_port(n).unwrap()).collect(),
        nodes,
        cut,
        observed: serde_json::Map::new(),
    }))
}

/// The ledger's target text: who is cut from whom.
fn describe(
    shape: Shape,
    nodes: &[Node],
    order: &[usize],
    cut: &BTreeSet<(usize, usize)>,
) -> String {
    let name = |i: usize| nodes[i].name.as_str();
    match shape {
        Shape::Node => format!("{} isolated", name(order[0])),
        Shape::OneWay => format!("{} cannot reach {}", name(order[0]), name(order[1])),
        Shape::Halves | Shape::Bridge => {
            let (left, right) = sides(shape, order);
            let names = |side: &[usize]| {
                let mut s: Vec<&str> = side.iter().map(|&i| name(i)).collect();
                s.sort();
                s.join(",")
            };
            match shape {
                Shape::Halves => format!("{} | {}", names(left), names(right)),
                _ => format!("{} | {} | {}", names(left), name(order[0]), names(right)),
            }
        }
        Shape::Ring => {
            let mut pairs: Vec<String> = cut
                .iter()
                .filter(|(a, b)| a < b)
                .map(|&(a, b)| format!("{}-{}", name(a), name(b)))
                .collect();
            pairs.sort();
            format!("ring, cut {}", pairs.join(" "))
        }
    }
}

#[derive(Debug)]
struct Partition {
    shape: Shape,
    hold: Duration,
    target: String,
    nodes: Vec<Node>,
    /// Each node's probed port, by index.
    ports: Vec<u16>,
    cut: BTreeSet<(usize, usize)>,
    /// What was seen: rules, probes, the store's view.
    observed: serde_json::Map<String, serde_json::Value>,
}

impl Partition {
    fn rules(&self) -> Vec<String> {
        let ip = |i: usize| self.nodes[i].ip;
        self.cut
            .iter()
            .map(|&(a, b)| match self.shape {
                Shape::OneWay => format!(
                    "ct original ip saddr {} ct original ip daddr {} drop",
                    ip(a),
                    ip(b)
                ),
                _ => format!("ip saddr {} ip daddr {} drop", ip(a), ip(b)),
            })
            .collect()
    }

    /// Probes every ordered pair of nodes: what each saw.
    async fn probe(&self) -> BTreeMap<(usize, usize), Reach> {
        let n = self.nodes.len();
        let pairs: Vec<(usize, usize)> = (0..n)
            .flat_map(|a| (0..n).filter(move |&b| b != a).map(move |b| (a, b)))
            .collect();
        let probes = pairs.iter().map(|&(a, b)| {
            let to = SocketAddrV4::new(self.nodes[b].ip, self.ports[b]);
            async move { ((a, b), reach(self.nodes[a].ip, to, PROBE_DEADLINE).await) }
        });
        futures::future::join_all(probes)
            .await
            .into_iter()
            .collect()
    }

    fn pair(&self, (a, b): (usize, usize)) -> String {
        format!("{}->{}", self.nodes[a].name, self.nodes[b].name)
    }

    /// The probes as the record shows them, and the pairs that disagree
    /// with `expect_cut`.
    fn judge(
        &self,
        seen: &BTreeMap<(usize, usize), Reach>,
        expect_cut: &BTreeSet<(usize, usize)>,
    ) -> (serde_json::Value, Vec<String>) {
        let mut shown = serde_json::Map::new();
        let mut wrong = Vec::new();
        for (&pair, &r) in seen {
            shown.insert(self.pair(pair), json!(format!("{r:?}").to_lowercase()));
            let cut = expect_cut.contains(&pair);
            if cut == r.connected() {
                wrong.push(format!(
                    "{} {} ({r:?})",
                    self.pair(pair),
                    if cut {
                        "should be cut"
                    } else {
                        "should connect"
                    }
                ));
            }
        }
        (serde_json::Value::Object(shown), wrong)
    }
}

impl Fault for Partition {
    fn target(&self) -> String {
        self.target.clone()
    }

    fn params(&self) -> serde_json::Value {
        let mut p = self.observed.clone();
        p.insert("shape".into(), json!(self.shape.as_str()));
        p.insert("hold_ms".into(), json!(self.hold.as_millis() as u64));
        p.insert(
            "cut".into(),
            json!(self.cut.iter().map(|&c| self.pair(c)).collect::<Vec<_>>()),
        );
        serde_json::Value::Object(p)
    }

    fn apply<'a>(&'a mut self, step: &'a mut Step<'_>) -> StepResult<'a> {
        Box::pin(async move {
            let rules = self.rules();
            self.observed.insert("rules".into(), json!(rules));
            step.cut_links(&crate::net::Rules::filter(rules)).await?;
            let seen = self.probe().await;
            let (shown, wrong) = self.judge(&seen, &self.cut);
            self.observed.insert("probes".into(), shown);
            if !wrong.is_empty() {
                return Err(step.not_confirmed(format!(
                    "connect probes: {}; table: {}",
                    wrong.join(", "),
                    step.cluster.links_listing().await.unwrap_or_default()
                )));
            }
            step.confirmed();
            Ok(())
        })
    }

    fn hold(&self) -> Duration {
        self.hold
    }

    fn undo<'a>(&'a mut self, step: &'a mut Step<'_>) -> StepResult<'a> {
        Box::pin(async move {
            // What the store saw at the end of the hold, before healing.
            let view: serde_json::Map<String, serde_json::Value> = step
                .cluster
                .peers_down()
                .await
                .into_iter()
                .map(|(node, v)| {
                    let v = match v {
                        Ok(down) => json!(down),
                        Err(e) => json!(format!("no answer: {e}")),
                    };
                    (node, v)
                })
                .collect();
            if !view.is_empty() {
                self.observed
                    .insert("peers_down_at_heal".into(), serde_json::Value::Object(view));
            }
            step.heal_links().await?;
            let seen = self.probe().await;
            let (_, wrong) = self.judge(&seen, &BTreeSet::new());
            if !wrong.is_empty() {
                return Err(
                    step.cluster_error(crate::cluster::ClusterError::Net(format!(
                        "links still cut after the table was deleted: {}",
                        wrong.join(", ")
                    ))),
                );
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(shape: Shape, n: usize) -> BTreeSet<(usize, usize)> {
        cuts(shape, &(0..n).collect::<Vec<_>>())
    }

    #[test]
    fn an_isolated_node_is_cut_from_every_other_both_ways() {
        let c = pairs(Shape::Node, 3);
        assert_eq!(c, BTreeSet::from([(0, 1), (1, 0), (0, 2), (2, 0)]), "{c:?}");
    }

    #[test]
    fn a_one_way_cut_names_one_direction_only() {
        assert_eq!(pairs(Shape::OneWay, 3), BTreeSet::from([(0, 1)]));
    }

    #[test]
    fn halves_cut_the_minority_from_the_majority_and_nothing_within_a_side() {
        let c = pairs(Shape::Halves, 5);
        // {0,1} | {2,3,4}: 2 * 3 pairs, both ways.
        assert_eq!(c.len(), 12);
        assert!(!c.contains(&(0, 1)) && !c.contains(&(2, 3)));
        assert!(c.contains(&(1, 4)) && c.contains(&(4, 1)));
    }

    #[test]
    fn a_bridge_node_reaches_both_halves_which_do_not_reach_each_other() {
        let c = pairs(Shape::Bridge, 5);
        // 0 bridges {1,2} and {3,4}.
        assert!(c.iter().all(|&(a, b)| a != 0 && b != 0));
        assert_eq!(c.len(), 8);
        assert!(c.contains(&(1, 3)) && !c.contains(&(1, 2)));
        // Three nodes: the two ends are cut, the middle reaches both.
        assert_eq!(pairs(Shape::Bridge, 3), BTreeSet::from([(1, 2), (2, 1)]));
    }

    #[test]
    fn in_a_ring_every_node_sees_a_majority_and_no_two_see_the_same() {
        for n in [4, 5, 7] {
            let c = pairs(Shape::Ring, n);
            let sees = |i: usize| -> BTreeSet<usize> {
                (0..n).filter(|&j| j == i || !c.contains(&(i, j))).collect()
            };
            for i in 0..n {
                assert!(sees(i).len() > n / 2, "n={n}: node {i} sees {:?}", sees(i));
                for j in i + 1..n {
                    assert_ne!(sees(i), sees(j), "n={n}: {i} and {j}");
                }
            }
            assert!(!c.is_empty());
        }
    }
}
