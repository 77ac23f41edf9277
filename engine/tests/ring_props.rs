//! Property tests for the consistent-hash ring: placement against a brute-force
//! model of the documented algorithm, minimal movement, bounded load.

use bluewren_engine::ring::{key_hash, BoundedLoad, HashRing};
use proptest::prelude::*;
use xxhash_rust::xxh3::xxh3_64;

/// The documented placement, by brute force: every point, sorted by
/// `(hash, name)`, a linear scan for the first `>=` the key hash, then distinct
/// nodes clockwise.
fn reference(ring: &HashRing, key: &[u8], n: usize) -> Vec<String> {
    let mut points: Vec<(u64, String)> = Vec::new();
    for (name, weight) in ring.nodes() {
        for i in 0..weight * ring.vnodes_per_weight() {
            points.push((xxh3_64(format!("{name}#{i}").as_bytes()), name.to_string()));
        }
    }
    points.sort();
    let hash = key_hash(key);
    let start = points.iter().position(|p| p.0 >= hash).unwrap_or(0);
    let mut out: Vec<String> = Vec::new();
    for k in 0..points.len() {
        let name = &points[(start + k) % points.len()].1;
        if out.len() < n && !out.contains(name) {
            out.push(name.clone());
        }
    }
    out
}

fn build(vnodes: u32, members: &[(String, u32)]) -> HashRing {
    let mut ring = HashRing::new(vnodes);
    for (name, weight) in members {
        ring.add(name, *weight).unwrap();
    }
    ring
}

fn members() -> impl Strategy<Value = Vec<(String, u32)>> {
    prop::collection::btree_map("[a-zA-Z0-9.:-]{1,12}|\\PC{1,4}", 1u32..4, 1..8)
        .prop_map(|m| m.into_iter().collect())
}

fn keys() -> impl Strategy<Value = Vec<Vec<u8>>> {
    prop::collection::vec(prop::collection::vec(any::<u8>(), 0..24), 1..64)
}

proptest! {
    #[test]
    fn placement_matches_the_reference(
        members in members(),
        vnodes in 1u32..24,
        keys in keys(),
        n in 1usize..10,
    ) {
        let ring = build(vnodes, &members);
        for key in &keys {
            let want = reference(&ring, key, n);
            prop_assert_eq!(ring.get(key), Some(want[0].as_str()));
            prop_assert_eq!(ring.get_n(key, n), want);
        }
    }

    #[test]
    fn get_n_is_distinct_primary_first_and_capped(
        members in members(),
        key in prop::collection::vec(any::<u8>(), 0..24),
        n in 0usize..40,
    ) {
        let ring = build(16, &members);
        let got = ring.get_n(&key, n);
        prop_assert_eq!(got.len(), n.min(members.len()));
        if n > 0 {
            prop_assert_eq!(Some(got[0]), ring.get(&key));
        }
        let mut dedup = got.clone();
        dedup.sort_unstable();
        dedup.dedup();
        prop_assert_eq!(dedup.len(), got.len());
    }

    #[test]
    fn shares_sum_to_one_and_track_weights(members in members(), vnodes in 1u32..64) {
        let ring = build(vnodes, &members);
        let shares = ring.shares();
        prop_assert_eq!(shares.len(), members.len());
        let total: f64 = shares.iter().map(|s| s.1).sum();
        prop_assert!((total - 1.0).abs() < 1e-9);
        prop_assert!(shares.iter().all(|s| (0.0..=1.0).contains(&s.1)));
    }

    #[test]
    fn removing_a_member_moves_only_its_keys(
        members in members(),
        pick in any::<prop::sample::Index>(),
        keys in keys(),
    ) {
        let before = build(32, &members);
        let gone = &members[pick.index(members.len())].0;
        let mut after = before.clone();
        prop_assert!(after.remove(gone));
        for key in &keys {
            let (was, now) = (before.get(key), after.get(key));
            if was != now {
                prop_assert_eq!(was, Some(gone.as_str()));
            }
            prop_assert_ne!(now, Some(gone.as_str()));
        }
    }

    #[test]
    fn adding_a_member_moves_keys_only_to_it(
        members in members(),
        new in "[a-z]{1,6}-new",
        weight in 1u32..4,
        keys in keys(),
    ) {
        let before = build(32, &members);
        let mut after = before.clone();
        after.add(&new, weight).unwrap();
        for key in &keys {
            let (was, now) = (before.get(key), after.get(key));
            if was != now {
                prop_assert_eq!(now, Some(new.as_str()));
            }
        }
        // Membership changes are order-independent.
        let mut all = members.clone();
        all.push((new.clone(), weight));
        all.reverse();
        let rebuilt = build(32, &all);
        for key in &keys {
            prop_assert_eq!(rebuilt.get(key), after.get(key));
        }
    }

    #[test]
    fn bounded_load_never_exceeds_capacity(
        members in members(),
        epsilon in 0.0f64..2.0,
        ops in prop::collection::vec(
            prop_oneof![
                3 => prop::collection::vec(any::<u8>(), 0..8).prop_map(Ok),
                1 => any::<prop::sample::Index>().prop_map(Err),
            ],
            1..300,
        ),
    ) {
        let names: Vec<String> = members.iter().map(|m| m.0.clone()).collect();
        let mut b = BoundedLoad::new(build(8, &members), epsilon);
        for op in ops {
            match op {
                Ok(key) => {
                    let cap = b.capacity();
                    let bound = ((1.0 + epsilon) * (b.total() + 1) as f64
                        / names.len() as f64).ceil() as usize;
                    prop_assert_eq!(cap, bound);
                    let node = b.assign(&key).expect("non-empty ring always places a key").to_string();
                    prop_assert!(b.load(&node) <= cap);
                }
                Err(pick) => {
                    let node = &names[pick.index(names.len())];
                    let load = b.load(node);
                    prop_assert_eq!(b.release(node), load > 0);
                    prop_assert_eq!(b.load(node), load.saturating_sub(1));
                }
            }
            let sum: usize = names.iter().map(|n| b.load(n)).sum();
            prop_assert_eq!(sum, b.total());
        }
    }

    #[test]
    fn bounded_load_without_releases_stays_within_one_plus_eps_of_mean(
        members in members(),
        epsilon in 0.0f64..1.0,
        count in 1usize..500,
    ) {
        let names: Vec<String> = members.iter().map(|m| m.0.clone()).collect();
        let mut b = BoundedLoad::new(build(8, &members), epsilon);
        for k in 0..count {
            b.assign(format!("key-{k}").as_bytes()).unwrap();
        }
        let limit = ((1.0 + epsilon) * count as f64 / names.len() as f64).ceil() as usize;
        for name in &names {
            prop_assert!(b.load(name) <= limit, "{} has {} > {}", name, b.load(name), limit);
        }
    }
}
