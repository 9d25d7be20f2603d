//! The seeded fault plans: the gate's finite one (every kind on every
//! role once) and the soak's endless rounds, each fault aimed at a role
//! drawn by weight. Pure; the kinds choose their nodes when injected.

use std::collections::VecDeque;

use rand::Rng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

use super::{FaultKind, FaultSettings};
use crate::history::seed::substream;

/// One fault the plan asks for: a kind aimed at a role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Planned {
    pub kind: FaultKind,
    pub role: String,
}

/// The gate's finite plan: every kind on every role once, in an order
/// drawn from the seed.
pub fn gate_plan(seed: u64, kinds: &[FaultKind], roles: &[String]) -> Vec<Planned> {
    let mut plan: Vec<Planned> = kinds
        .iter()
        .flat_map(|&kind| {
            roles.iter().map(move |role| Planned {
                kind,
                role: role.clone(),
            })
        })
        .collect();
    plan.shuffle(&mut substream(seed, "fault-plan", 0));
    plan
}

/// The soak's endless plan: rounds of every kind in a seeded order, each
/// aimed at a role drawn by weight.
pub struct SoakPlan {
    rng: ChaCha8Rng,
    kinds: Vec<FaultKind>,
    roles: Vec<(String, u32)>,
    round: VecDeque<FaultKind>,
}

impl SoakPlan {
    pub fn new(seed: u64, settings: &FaultSettings, roles: &[String]) -> SoakPlan {
        SoakPlan {
            rng: substream(seed, "fault-plan", 1),
            kinds: settings.kinds.clone(),
            roles: roles
                .iter()
                .map(|r| (r.clone(), settings.weight(r)))
                .filter(|(_, w)| *w > 0)
                .collect(),
            round: VecDeque::new(),
        }
    }
}

impl Iterator for SoakPlan {
    type Item = Planned;

    fn next(&mut self) -> Option<Planned> {
        if self.round.is_empty() {
            let mut kinds = self.kinds.clone();
            kinds.shuffle(&mut self.rng);
            self.round.extend(kinds);
        }
        let kind = self.round.pop_front()?;
        let total: u32 = self.roles.iter().map(|(_, w)| w).sum();
        if total == 0 {
            return None;
        }
        let mut pick = self.rng.random_range(0..total);
        let role = self
            .roles
            .iter()
            .find(|(_, w)| {
                if pick < *w {
                    true
                } else {
                    pick -= w;
                    false
                }
            })
            .map(|(r, _)| r.clone())
            .expect("the pick is below the total weight");
        Some(Planned { kind, role })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roles(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_gate_plan_fires_every_kind_on_every_role_once_in_a_seeded_order() {
        let r = roles(&["meta", "data", "front"]);
        let all = FaultKind::all();
        let plan = gate_plan(7, &all, &r);
        assert_eq!(plan.len(), all.len() * 3);
        for &kind in &all {
            for role in &r {
                assert_eq!(
                    plan.iter()
                        .filter(|p| p.kind == kind && p.role == *role)
                        .count(),
                    1
                );
            }
        }
        assert_eq!(plan, gate_plan(7, &all, &r));
        assert_ne!(plan, gate_plan(8, &all, &r));
    }

    #[test]
    fn the_soak_plan_cycles_through_every_kind_and_follows_role_weights() {
        let settings = FaultSettings {
            role_weights: [("meta".to_string(), 3), ("front".to_string(), 0)]
                .into_iter()
                .collect(),
            ..FaultSettings::default()
        };
        let r = roles(&["meta", "data", "front"]);
        let n = FaultKind::all().len();
        let plan: Vec<Planned> = SoakPlan::new(1, &settings, &r).take(n * 200).collect();
        for round in plan.chunks(n) {
            let mut kinds: Vec<FaultKind> = round.iter().map(|p| p.kind).collect();
            kinds.sort();
            assert_eq!(kinds, FaultKind::all());
        }
        let count = |role: &str| plan.iter().filter(|p| p.role == role).count();
        assert_eq!(count("front"), 0);
        // meta weighs 3, data 1: about three quarters go to meta.
        assert!(
            count("meta") > 3 * count("data") * 8 / 10,
            "{} {}",
            count("meta"),
            count("data")
        );
        let again: Vec<Planned> = SoakPlan::new(1, &settings, &r).take(n * 200).collect();
        assert_eq!(plan, again);
    }
}
