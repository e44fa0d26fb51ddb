//! Nanoseconds per `Balancer::pick` for each algorithm as the pool grows (one thread,
//! release build, a `ServerSet` over plain vectors, `hash_key` included; least connections
//! also gets each request's end through `load_changed`). Used by bench/lb-scale/run.sh.
//!
//!   cargo run --release -p rampart-balance --example pick_cost [-- SIZES]
//!
//! SIZES: comma-separated pool sizes (default 2,100,1000,10000). Prints a TSV:
//! algorithm, servers, ns per pick.

use std::time::Instant;

use rampart_balance::{hash_key, Algorithm, Balancer, ServerSet};

struct Set {
    weights: Vec<u32>,
    in_flight: Vec<u32>,
    latency: Vec<f64>,
    ids: Vec<String>,
}

impl ServerSet for Set {
    fn len(&self) -> usize {
        self.weights.len()
    }
    fn weight(&self, i: usize) -> u32 {
        self.weights[i]
    }
    fn in_flight(&self, i: usize) -> u32 {
        self.in_flight[i]
    }
    fn latency_ns(&self, i: usize) -> f64 {
        self.latency[i]
    }
    fn id(&self, i: usize) -> &str {
        &self.ids[i]
    }
}

fn main() {
    let sizes: Vec<usize> = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "2,100,1000,10000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    println!("algorithm\tservers\tns_per_pick");
    for a in Algorithm::ALL {
        for &n in &sizes {
            let mut set = Set {
                weights: vec![1; n],
                in_flight: vec![0; n],
                latency: (0..n).map(|i| 1e6 + (i % 7) as f64 * 1e5).collect(),
                ids: (0..n)
                    .map(|i| format!("10.0.{}.{}:80", i / 250, i % 250))
                    .collect(),
            };
            let b = Balancer::new(a, 1);
            b.rebuild(&set);
            // 64 requests in flight, as in the lb bench: each pick starts one, ends the oldest.
            let mut ring = std::collections::VecDeque::with_capacity(64);
            let picks = 2_000_000u64;
            let t = Instant::now();
            for k in 0..picks {
                let Some(i) = b.pick(&set, hash_key(&(k as u32).to_be_bytes())) else {
                    continue;
                };
                set.in_flight[i] += 1;
                ring.push_back(i);
                if ring.len() > 64 {
                    if let Some(j) = ring.pop_front() {
                        set.in_flight[j] -= 1;
                        b.load_changed(&set, j);
                    }
                }
            }
            let ns = t.elapsed().as_nanos() as f64 / picks as f64;
            println!("{a}\t{n}\t{ns:.1}");
        }
    }
}
