//! What each worker does next: a pure function of the run seed, the
//! worker's index and how many plans it has drawn, so the same seed gives
//! the same keys, sizes, bodies and per-worker op sequence.
//!
//! Every random choice comes from a named ChaCha sub-stream. The draws for
//! one step are always the same count whatever the cluster answered;
//! only the labels that depend on state (PUT versus overwrite, a write
//! turned into a DELETE above the live-data cap) are decided by the caller.

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::history::seed::substream;

/// Relative weights of the operation classes. Writes become PUT, overwrite
/// or multipart by the key's state and the drawn size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mix {
    pub write: u32,
    pub delete: u32,
    pub get: u32,
    pub head: u32,
    pub range: u32,
    pub list: u32,
}

impl Default for Mix {
    /// Writes dominate enough to keep generations moving, reads enough to
    /// see every write several ways, deletes enough to test resurrection.
    fn default() -> Self {
        Mix {
            write: 35,
            delete: 8,
            get: 20,
            head: 12,
            range: 17,
            list: 8,
        }
    }
}

impl Mix {
    /// Parses `write=35,delete=8,...`; unnamed classes keep their default.
    pub fn parse(text: &str) -> Result<Mix, String> {
        let mut mix = Mix::default();
        for part in text.split(',').filter(|p| !p.trim().is_empty()) {
            let (name, value) = part
                .split_once('=')
                .ok_or_else(|| format!("--mix: expected NAME=WEIGHT, found {part:?}"))?;
            let value: u32 = value.trim().parse().map_err(|_| {
                format!("--mix: weight of {name} must be a whole number, found {value:?}")
            })?;
            let slot = match name.trim() {
                "write" => &mut mix.write,
                "delete" => &mut mix.delete,
                "get" => &mut mix.get,
                "head" => &mut mix.head,
                "range" => &mut mix.range,
                "list" => &mut mix.list,
                other => {
                    return Err(format!(
                        "--mix: unknown class {other:?}; expected write, delete, get, head, range, list"
                    ));
                }
            };
            *slot = value;
        }
        if mix.total() == 0 {
            return Err("--mix: at least one weight must be positive".into());
        }
        Ok(mix)
    }

    fn total(&self) -> u32 {
        self.write + self.delete + self.get + self.head + self.range + self.list
    }
}

/// How a Range GET asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeSpec {
    /// `bytes=a-b`, both inclusive.
    Window(u64, u64),
    /// `bytes=a-`.
    From(u64),
    /// `bytes=-n`: the last n bytes.
    Suffix(u64),
}

impl RangeSpec {
    pub fn header(self) -> String {
        match self {
            RangeSpec::Window(a, b) => format!("bytes={a}-{b}"),
            RangeSpec::From(a) => format!("bytes={a}-"),
            RangeSpec::Suffix(n) => format!("bytes=-{n}"),
        }
    }
}

/// One planned step of a worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Write generation-next of own key `key` with `size` bytes.
    Write {
        key: u32,
        size: u64,
    },
    Delete {
        key: u32,
    },
    Get {
        worker: u32,
        key: u32,
    },
    Head {
        worker: u32,
        key: u32,
    },
    Range {
        worker: u32,
        key: u32,
        range: RangeSpec,
    },
    /// List from just after (worker, key), or from the prefix start.
    List {
        after: Option<(u32, u32)>,
    },
}

/// The planner's fixed parameters.
#[derive(Debug, Clone)]
pub struct PlanConfig {
    pub workers: u32,
    pub keys_per_worker: u32,
    pub mix: Mix,
    pub part_size: u64,
}

/// One worker's plan stream.
pub struct Planner {
    cfg: PlanConfig,
    rng: ChaCha8Rng,
    /// Endpoint choices come from their own stream, so changing how many
    /// endpoints there are does not change the op sequence.
    endpoint_rng: ChaCha8Rng,
}

impl Planner {
    pub fn new(seed: u64, worker: u32, cfg: PlanConfig) -> Planner {
        Planner {
            rng: substream(seed, "worker-ops", u64::from(worker)),
            endpoint_rng: substream(seed, "worker-endpoints", u64::from(worker)),
            cfg,
        }
    }

    pub fn next_endpoint(&mut self, endpoints: usize) -> usize {
        self.endpoint_rng.random_range(0..endpoints.max(1))
    }

    pub fn next_plan(&mut self) -> Plan {
        let m = self.cfg.mix;
        // Always the same number of draws per step, whichever class wins.
        let class = self.rng.random_range(0..m.total());
        let own_key = self.rng.random_range(0..self.cfg.keys_per_worker);
        let other = self.rng.random_range(0..self.cfg.workers);
        let other_key = self.rng.random_range(0..self.cfg.keys_per_worker);
        let size = draw_size(&mut self.rng, self.cfg.part_size);
        let range = draw_range(&mut self.rng);
        let list_from_start = self.rng.random_bool(0.25);
        let mut c = class;
        let mut pick = |w: u32| {
            let hit = c < w;
            c = c.saturating_sub(w);
            hit
        };
        if pick(m.write) {
            Plan::Write { key: own_key, size }
        } else if pick(m.delete) {
            Plan::Delete { key: own_key }
        } else if pick(m.get) {
            Plan::Get {
                worker: other,
                key: other_key,
            }
        } else if pick(m.head) {
            Plan::Head {
                worker: other,
                key: other_key,
            }
        } else if pick(m.range) {
            Plan::Range {
                worker: other,
                key: other_key,
                range,
            }
        } else {
            Plan::List {
                after: (!list_from_start).then_some((other, other_key)),
            }
        }
    }
}

/// Object sizes: empty, tiny, small, around the multipart part size (the
/// boundaries are where off-by-ones live), and multi-MiB. Large objects are
/// few (4 %): they carry most of the bytes, and a store keeps what they
/// leave behind for a while (Garage: 10 minutes), so they decide the disk
/// a run needs.
fn draw_size(rng: &mut ChaCha8Rng, part: u64) -> u64 {
    let class = rng.random_range(0..100u32);
    let a = rng.random_range(0..=u64::MAX / 2);
    match class {
        0..5 => 0,
        5..50 => 1 + a % 1024,
        50..86 => 1024 + a % (64 * 1024),
        86..96 => 64 * 1024 + a % (192 * 1024),
        // part - 1, part, part + 1: single PUT below, one part, two parts.
        96..98 => part - 1 + a % 3,
        _ => part + a % (part / 2 + 1),
    }
}

/// Ranges that include the first byte, the last byte, suffixes, windows
/// and one past the end.
fn draw_range(rng: &mut ChaCha8Rng) -> RangeSpec {
    let form = rng.random_range(0..6u32);
    let a = rng.random_range(0..70_000u64);
    let len = rng.random_range(1..5_000u64);
    match form {
        0 => RangeSpec::Window(0, 0),
        1 => RangeSpec::Suffix(1),
        2 => RangeSpec::Suffix(len),
        3 => RangeSpec::Window(a, a + len - 1),
        4 => RangeSpec::From(a),
        _ => RangeSpec::From(1 << 40),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> PlanConfig {
        PlanConfig {
            workers: 24,
            keys_per_worker: 40,
            mix: Mix::default(),
            part_size: 5 << 20,
        }
    }

    fn plans(seed: u64, worker: u32, n: usize) -> Vec<Plan> {
        let mut p = Planner::new(seed, worker, cfg());
        (0..n).map(|_| p.next_plan()).collect()
    }

    #[test]
    fn same_seed_same_sequence_and_other_seeds_or_workers_differ() {
        assert_eq!(plans(1, 3, 500), plans(1, 3, 500));
        assert_ne!(plans(1, 3, 500), plans(2, 3, 500));
        assert_ne!(plans(1, 3, 500), plans(1, 4, 500));
    }

    #[test]
    fn the_mix_and_sizes_cover_every_class_and_boundary() {
        let all = plans(7, 0, 20_000);
        let count = |f: &dyn Fn(&Plan) -> bool| all.iter().filter(|p| f(p)).count();
        let writes = count(&|p| matches!(p, Plan::Write { .. }));
        assert!(
            (6_000..8_000).contains(&writes),
            "{writes} writes of 20000 at weight 35/100"
        );
        for (what, n) in [
            ("delete", count(&|p| matches!(p, Plan::Delete { .. }))),
            ("get", count(&|p| matches!(p, Plan::Get { .. }))),
            ("head", count(&|p| matches!(p, Plan::Head { .. }))),
            ("range", count(&|p| matches!(p, Plan::Range { .. }))),
            ("list", count(&|p| matches!(p, Plan::List { .. }))),
            (
                "empty object",
                count(&|p| matches!(p, Plan::Write { size: 0, .. })),
            ),
            (
                "part - 1",
                count(&|p| matches!(p, Plan::Write { size, .. } if *size == (5 << 20) - 1)),
            ),
            (
                "part",
                count(&|p| matches!(p, Plan::Write { size, .. } if *size == 5 << 20)),
            ),
            (
                "part + 1",
                count(&|p| matches!(p, Plan::Write { size, .. } if *size == (5 << 20) + 1)),
            ),
            (
                "multi-MiB",
                count(&|p| matches!(p, Plan::Write { size, .. } if *size > (5 << 20) + 1024)),
            ),
            (
                "first byte",
                count(&|p| {
                    matches!(
                        p,
                        Plan::Range {
                            range: RangeSpec::Window(0, 0),
                            ..
                        }
                    )
                }),
            ),
            (
                "last byte",
                count(&|p| {
                    matches!(
                        p,
                        Plan::Range {
                            range: RangeSpec::Suffix(1),
                            ..
                        }
                    )
                }),
            ),
            (
                "past the end",
                count(
                    &|p| matches!(p, Plan::Range { range: RangeSpec::From(x), .. } if *x == 1 << 40),
                ),
            ),
        ] {
            assert!(n > 0, "no {what} in 20000 plans");
        }
    }

    #[test]
    fn mix_parses_and_rejects_nonsense() {
        let m = Mix::parse("write=10, list=0").unwrap();
        assert_eq!((m.write, m.list, m.get), (10, 0, Mix::default().get));
        assert!(
            Mix::parse("writes=1")
                .unwrap_err()
                .contains("unknown class")
        );
        assert!(Mix::parse("get=x").unwrap_err().contains("whole number"));
        assert!(Mix::parse("write=0,delete=0,get=0,head=0,range=0,list=0").is_err());
        let only_gets = Mix::parse("write=0,delete=0,head=0,range=0,list=0").unwrap();
        let mut p = Planner::new(
            1,
            0,
            PlanConfig {
                mix: only_gets,
                ..cfg()
            },
        );
        assert!((0..100).all(|_| matches!(p.next_plan(), Plan::Get { .. })));
    }

    #[test]
    fn range_headers_are_well_formed() {
        assert_eq!(RangeSpec::Window(0, 0).header(), "bytes=0-0");
        assert_eq!(RangeSpec::From(5).header(), "bytes=5-");
        assert_eq!(RangeSpec::Suffix(9).header(), "bytes=-9");
    }
}
