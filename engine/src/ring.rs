//! Consistent-hash ring: xxh3, virtual nodes, weights, bounded load.
//!
//! The ring maps a key (in BlueWren, a conversation id) to its owner node. When
//! membership changes, only the keys that must move do: removing a node moves
//! exactly the keys it owned, and adding a node moves keys only *to* it.
//!
//! # Placement (normative)
//!
//! The placement is fully specified here so that any implementation can
//! reproduce it key for key:
//!
//! 1. Key hash: `xxh3_64(key)` over the raw key bytes, seed 0 ([`key_hash`]).
//! 2. A node `name` with weight `w` owns `w * vnodes_per_weight` points; point
//!    `i` (for `i` in `0..w * vnodes_per_weight`) is `xxh3_64` of the UTF-8
//!    string `"{name}#{i}"`, with `i` in decimal without padding
//!    (`"node-a#0"`, `"node-a#1"`, ...).
//! 3. All points of all nodes are sorted by `(hash, name)`, names compared
//!    bytewise (the same as by code point), so equal hashes go to the smaller name.
//! 4. A key goes to the first point whose hash is `>=` the key hash; if there is
//!    none, it wraps to the first point.
//! 5. [`HashRing::get_n`] continues clockwise from that point, skipping nodes
//!    already chosen, until it has `n` distinct nodes or has seen every node.
//!
//! Hence point `j` owns the arc `(hash[j-1], hash[j]]` of the 2^64 hash space,
//! and the first point also owns `(hash[last], 2^64)`; [`HashRing::shares`]
//! sums those arcs exactly.
//!
//! # Layout and speed
//!
//! Points live in two parallel arrays (`u64` hashes, `u32` node ids; 12 bytes
//! a point) sorted by `(hash, name)`, plus a prefix index: a table of
//! `2^k + 1` offsets where entry `b` is the first point whose top `k` hash
//! bits are `>= b`, with `k` chosen for four to eight points per bucket. A
//! lookup is one table read and a binary search within one bucket, which
//! keeps a large [`HashRing::DEFAULT_VNODES`] cheap: with it, 64 equal nodes
//! each own within 5% of the mean share (measured max/mean: 1.039 of the hash
//! space, 1.036 over the keys `"key-0"` to `"key-999999"`, for nodes
//! `"node-0"` to `"node-63"`).
//!
//! A membership change hashes and sorts the points of the one node it touches
//! and merges them into the arrays: `O(P + p log p)` for `P` points on the ring
//! and `p` of that node. Point `i` of a node does not depend on its weight, so
//! raising a weight only adds points and lowering it only removes them.

//! # Bounded load
//!
//! [`BoundedLoad`] adds consistent hashing with bounded loads (Mirrokni,
//! Thorup, Zadimoghaddam): each key goes to the first node clockwise whose load
//! is below a capacity of `ceil((1 + eps) * (assigned + 1) / nodes)`, so no node
//! carries more than about `1 + eps` times the mean.

use std::fmt;

use xxhash_rust::xxh3::xxh3_64;

/// Hash of a key: `xxh3_64` with seed 0 over the raw bytes.
#[inline]
pub fn key_hash(key: &[u8]) -> u64 {
    xxh3_64(key)
}

/// Why a node could not be added.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RingError {
    /// The weight was 0; every node needs at least weight 1.
    ZeroWeight,
    /// The node name was empty.
    EmptyName,
    /// The ring would hold more virtual nodes than [`HashRing::MAX_POINTS`].
    TooManyPoints {
        /// Points the ring would hold after the change.
        points: usize,
        /// The limit.
        max: usize,
    },
}

impl fmt::Display for RingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ZeroWeight => f.write_str("node weight must be at least 1"),
            Self::EmptyName => f.write_str("node name must not be empty"),
            Self::TooManyPoints { points, max } => write!(
                f,
                "ring would hold {points} virtual nodes, more than the limit of {max}: \
                 lower the node weights or vnodes_per_weight"
            ),
        }
    }
}

impl std::error::Error for RingError {}

#[derive(Clone, Debug)]
struct Node {
    name: Box<str>,
    weight: u32,
}

/// A consistent-hash ring with weighted virtual nodes. See the [module docs](self)
/// for the exact placement.
#[derive(Clone)]
pub struct HashRing {
    vnodes: u32,
    /// Members sorted by name; a point's owner is an index into this.
    nodes: Vec<Node>,
    /// Point hashes, sorted by `(hash, name)`.
    hashes: Vec<u64>,
    /// `owners[j]` is the node of point `j`.
    owners: Vec<u32>,
    /// `index[b]` = first point whose hash `>> shift` is `>= b`; `2^(64-shift) + 1` entries.
    index: Vec<u32>,
    shift: u32,
}

impl fmt::Debug for HashRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HashRing")
            .field("vnodes_per_weight", &self.vnodes)
            .field("nodes", &self.nodes())
            .field("points", &self.points())
            .finish()
    }
}

impl Default for HashRing {
    fn default() -> Self {
        Self::new(Self::DEFAULT_VNODES)
    }
}

impl HashRing {
    /// Virtual nodes per unit of weight used by [`HashRing::default`]: enough
    /// that 64 equal nodes each own within 5% of the mean share.
    pub const DEFAULT_VNODES: u32 = 4096;

    /// Most points (virtual nodes over all members) a ring may hold: 2^24,
    /// 192 MiB of point arrays (twice that during a membership change).
    pub const MAX_POINTS: usize = 1 << 24;

    /// An empty ring with `vnodes_per_weight` points per unit of weight
    /// (0 is raised to 1, so every member owns at least one point).
    pub fn new(vnodes_per_weight: u32) -> Self {
        Self {
            vnodes: vnodes_per_weight.max(1),
            nodes: Vec::new(),
            hashes: Vec::new(),
            owners: Vec::new(),
            index: Vec::new(),
            shift: 63,
        }
    }

    /// Adds `node` with `weight`, or updates its weight if it is already a
    /// member. Keys move only to `node` when it is added or its weight grows,
    /// and only away from it when its weight shrinks.
    pub fn add(&mut self, node: &str, weight: u32) -> Result<(), RingError> {
        if node.is_empty() {
            return Err(RingError::EmptyName);
        }
        if weight == 0 {
            return Err(RingError::ZeroWeight);
        }
        let found = self.find(node);
        let old = found.map_or(0, |i| self.nodes[i].weight);
        if old == weight {
            return Ok(());
        }
        let v = u64::from(self.vnodes);
        let points = self.hashes.len() as u64 - u64::from(old) * v + u64::from(weight) * v;
        if points > Self::MAX_POINTS as u64 {
            return Err(RingError::TooManyPoints {
                points: usize::try_from(points).unwrap_or(usize::MAX),
                max: Self::MAX_POINTS,
            });
        }
        let points = points as usize;
        match found {
            Some(id) => {
                self.nodes[id].weight = weight;
                let fresh = self.node_points(id);
                let id = id as u32;
                self.merge(|o| (o != id).then_some(o), fresh, points);
            }
            None => {
                let at = self.nodes.partition_point(|n| &*n.name < node);
                let name = node.into();
                self.nodes.insert(at, Node { name, weight });
                let fresh = self.node_points(at);
                let at = at as u32;
                self.merge(|o| Some(o + u32::from(o >= at)), fresh, points);
            }
        }
        Ok(())
    }

    /// Removes `node`; returns whether it was a member. Only its keys move.
    pub fn remove(&mut self, node: &str) -> bool {
        let Some(id) = self.find(node) else {
            return false;
        };
        let points = self.hashes.len() - self.nodes[id].weight as usize * self.vnodes as usize;
        self.nodes.remove(id);
        let id = id as u32;
        self.merge(
            |o| (o != id).then(|| o - u32::from(o > id)),
            Vec::new(),
            points,
        );
        true
    }

    /// Whether `node` is a member.
    pub fn contains(&self, node: &str) -> bool {
        self.find(node).is_some()
    }

    /// Number of member nodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether the ring has no members.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Members as `(name, weight)`, sorted by name.
    pub fn nodes(&self) -> Vec<(&str, u32)> {
        self.nodes.iter().map(|n| (&*n.name, n.weight)).collect()
    }

    /// Points per unit of weight.
    pub fn vnodes_per_weight(&self) -> u32 {
        self.vnodes
    }

    /// Total number of points (virtual nodes) on the ring.
    pub fn points(&self) -> usize {
        self.hashes.len()
    }

    /// The node that owns `key`, or `None` if the ring is empty.
    #[inline]
    pub fn get(&self, key: &[u8]) -> Option<&str> {
        self.get_by_hash(key_hash(key))
    }

    /// The node that owns a precomputed key hash (see [`key_hash`]).
    #[inline]
    pub fn get_by_hash(&self, hash: u64) -> Option<&str> {
        let j = self.position(hash)?;
        Some(self.name(self.owners[j]))
    }

    /// Up to `n` distinct nodes for `key`, clockwise from its owner, which comes
    /// first. Returns `min(n, len())` nodes.
    pub fn get_n(&self, key: &[u8], n: usize) -> Vec<&str> {
        let Some(start) = self.position(key_hash(key)) else {
            return Vec::new();
        };
        let n = n.min(self.nodes.len());
        let mut ids: Vec<u32> = Vec::with_capacity(n);
        // A short list is cheaper to scan than a bitset is to allocate.
        let mut seen = if n > 16 {
            vec![0u64; self.nodes.len().div_ceil(64)]
        } else {
            Vec::new()
        };
        for &id in self.owners[start..].iter().chain(&self.owners[..start]) {
            if ids.len() == n {
                break;
            }
            let fresh = if seen.is_empty() {
                !ids.contains(&id)
            } else {
                let (word, bit) = (id as usize / 64, 1u64 << (id % 64));
                let fresh = seen[word] & bit == 0;
                seen[word] |= bit;
                fresh
            };
            if fresh {
                ids.push(id);
            }
        }
        ids.into_iter().map(|id| self.name(id)).collect()
    }

    /// The exact fraction of the 2^64 hash space each node owns, sorted by
    /// name. The fractions sum to 1 (empty if the ring is empty).
    pub fn shares(&self) -> Vec<(&str, f64)> {
        let mut owned = vec![0u128; self.nodes.len()];
        if let Some(&last) = self.hashes.last() {
            let mut prev = None;
            for (&h, &id) in self.hashes.iter().zip(&self.owners) {
                owned[id as usize] += match prev {
                    // The first point also owns the wrap-around arc (last, 2^64).
                    None => (1u128 << 64) - u128::from(last) + u128::from(h),
                    Some(p) => u128::from(h - p),
                };
                prev = Some(h);
            }
        }
        let space = (1u128 << 64) as f64;
        self.nodes
            .iter()
            .zip(owned)
            .map(|(n, o)| (&*n.name, o as f64 / space))
            .collect()
    }

    fn find(&self, node: &str) -> Option<usize> {
        self.nodes.binary_search_by(|n| (*n.name).cmp(node)).ok()
    }

    #[inline]
    fn name(&self, id: u32) -> &str {
        &self.nodes[id as usize].name
    }

    /// Index of the first point with hash `>= hash`, wrapping to 0.
    #[inline]
    fn position(&self, hash: u64) -> Option<usize> {
        if self.hashes.is_empty() {
            return None;
        }
        let b = (hash >> self.shift) as usize;
        let (lo, hi) = (self.index[b] as usize, self.index[b + 1] as usize);
        let j = lo + self.hashes[lo..hi].partition_point(|&p| p < hash);
        Some(if j == self.hashes.len() { 0 } else { j })
    }

    /// The points of node `id`, as `(hash, id)`, sorted.
    fn node_points(&self, id: usize) -> Vec<(u64, u32)> {
        let node = &self.nodes[id];
        let count = node.weight as usize * self.vnodes as usize;
        let mut points = Vec::with_capacity(count);
        let mut buf = Vec::with_capacity(node.name.len() + 12);
        buf.extend_from_slice(node.name.as_bytes());
        buf.push(b'#');
        let base = buf.len();
        for i in 0..count as u64 {
            buf.truncate(base);
            push_decimal(&mut buf, i);
            points.push((xxh3_64(&buf), id as u32));
        }
        points.sort_unstable();
        points
    }

    /// Rewrites the points: every current point whose owner `keep` maps to a
    /// new id survives under that id, merged with `fresh` (sorted, new ids).
    /// Ids follow name order, so `(hash, id)` order is `(hash, name)` order.
    /// `points` is the new total, already checked against [`Self::MAX_POINTS`].
    fn merge(&mut self, keep: impl Fn(u32) -> Option<u32>, fresh: Vec<(u64, u32)>, points: usize) {
        let mut hashes = Vec::with_capacity(points);
        let mut owners = Vec::with_capacity(points);
        let mut fresh = fresh.into_iter().peekable();
        for (&h, &o) in self.hashes.iter().zip(&self.owners) {
            let Some(o) = keep(o) else { continue };
            while let Some((fh, fo)) = fresh.next_if(|&p| p < (h, o)) {
                hashes.push(fh);
                owners.push(fo);
            }
            hashes.push(h);
            owners.push(o);
        }
        for (fh, fo) in fresh {
            hashes.push(fh);
            owners.push(fo);
        }
        self.hashes = hashes;
        self.owners = owners;

        // Four to eight points per bucket: a small table and a short search.
        let bits = (usize::BITS - 1)
            .saturating_sub(points.leading_zeros() + 2)
            .max(1);
        self.shift = 64 - bits;
        let buckets = 1u64 << bits;
        self.index = Vec::with_capacity(buckets as usize + 1);
        let mut j = 0;
        for b in 0..=buckets {
            while j < self.hashes.len() && self.hashes[j] >> self.shift < b {
                j += 1;
            }
            self.index.push(j as u32);
        }
    }
}

fn push_decimal(buf: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    buf.extend_from_slice(&digits[at..]);
}

/// Consistent hashing with bounded loads (Mirrokni, Thorup, Zadimoghaddam): a
/// key goes to the first node clockwise whose load is below the capacity
/// `ceil((1 + eps) * (assigned + 1) / nodes)`.
///
/// Because `nodes * capacity > assigned`, some node is always below capacity,
/// so [`BoundedLoad::assign`] succeeds on any non-empty ring. Releases lower the
/// mean but never move keys, so after releases a node may sit above the
/// capacity the *next* assignment is held to; it just receives nothing more
/// until it drains.
#[derive(Clone, Debug)]
pub struct BoundedLoad {
    ring: HashRing,
    epsilon: f64,
    loads: Vec<usize>,
    total: usize,
}

impl BoundedLoad {
    /// Bounded-load placement over `ring` with slack `epsilon`.
    ///
    /// `epsilon` should be positive (0.25 is a good start: at most 25% above
    /// the mean). A negative or NaN `epsilon` is clamped to 0, which still
    /// balances perfectly but moves more keys; `f64::INFINITY` disables the
    /// bound, giving plain consistent hashing.
    pub fn new(ring: HashRing, epsilon: f64) -> Self {
        let loads = vec![0; ring.len()];
        Self {
            ring,
            epsilon: if epsilon > 0.0 { epsilon } else { 0.0 },
            loads,
            total: 0,
        }
    }

    /// The underlying ring.
    pub fn ring(&self) -> &HashRing {
        &self.ring
    }

    /// The slack in use after clamping.
    pub fn epsilon(&self) -> f64 {
        self.epsilon
    }

    /// The load limit the next assignment is held to:
    /// `ceil((1 + eps) * (total() + 1) / nodes)`, or 0 for an empty ring.
    pub fn capacity(&self) -> usize {
        if self.ring.is_empty() {
            return 0;
        }
        let c = (1.0 + self.epsilon) * (self.total as f64 + 1.0) / self.ring.len() as f64;
        // Saturates at usize::MAX for an infinite epsilon.
        c.ceil() as usize
    }

    /// Places `key` on the first node clockwise from its hash whose load is
    /// below [`capacity`](Self::capacity), and counts it there. `None` only if
    /// the ring is empty.
    pub fn assign(&mut self, key: &[u8]) -> Option<&str> {
        let start = self.ring.position(key_hash(key))?;
        let cap = self.capacity();
        let owners = &self.ring.owners;
        let id = owners[start..]
            .iter()
            .chain(&owners[..start])
            .copied()
            .find(|&id| self.loads[id as usize] < cap)?;
        self.loads[id as usize] += 1;
        self.total += 1;
        Some(self.ring.name(id))
    }

    /// Takes one key off `node`; false if it is not a member or has no load.
    pub fn release(&mut self, node: &str) -> bool {
        match self.ring.find(node) {
            Some(i) if self.loads[i] > 0 => {
                self.loads[i] -= 1;
                self.total -= 1;
                true
            }
            _ => false,
        }
    }

    /// Keys currently on `node` (0 if it is not a member).
    pub fn load(&self, node: &str) -> usize {
        self.ring.find(node).map_or(0, |i| self.loads[i])
    }

    /// Keys currently assigned over all nodes.
    pub fn total(&self) -> usize {
        self.total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(vnodes: u32, nodes: &[(&str, u32)]) -> HashRing {
        let mut r = HashRing::new(vnodes);
        for &(name, weight) in nodes {
            r.add(name, weight).unwrap();
        }
        r
    }

    fn equal_nodes(count: usize) -> HashRing {
        let mut r = HashRing::default();
        for i in 0..count {
            r.add(&format!("node-{i}"), 1).unwrap();
        }
        r
    }

    /// The placement exactly as the module docs specify it, by brute force.
    fn reference(r: &HashRing, hash: u64, n: usize) -> Vec<String> {
        let mut points: Vec<(u64, String)> = Vec::new();
        for (name, weight) in r.nodes() {
            for i in 0..weight * r.vnodes_per_weight() {
                points.push((xxh3_64(format!("{name}#{i}").as_bytes()), name.to_string()));
            }
        }
        points.sort();
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

    fn keys() -> impl Iterator<Item = String> {
        (0..1_000_000).map(|k| format!("key-{k}"))
    }

    #[test]
    fn key_hash_is_xxh3_seed_zero() {
        assert_eq!(key_hash(b""), 0x2d06_8005_38d3_94c2);
        assert_eq!(key_hash(b"abc"), xxh3_64(b"abc"));
    }

    #[test]
    fn empty_ring_returns_none() {
        let r = HashRing::default();
        assert!(r.is_empty());
        assert_eq!(r.get(b"k"), None);
        assert_eq!(r.get_by_hash(u64::MAX), None);
        assert!(r.get_n(b"k", 3).is_empty());
        assert!(r.shares().is_empty());
        let mut b = BoundedLoad::new(r, 0.25);
        assert_eq!(b.capacity(), 0);
        assert_eq!(b.assign(b"k"), None);
        assert_eq!(b.total(), 0);
    }

    #[test]
    fn ring_emptied_by_remove_returns_none() {
        let mut r = ring(16, &[("a", 1)]);
        assert_eq!(r.get(b"k"), Some("a"));
        assert!(r.remove("a"));
        assert_eq!(r.points(), 0);
        assert_eq!(r.get(b"k"), None);
    }

    #[test]
    fn add_rejects_empty_name_and_zero_weight() {
        let mut r = HashRing::new(8);
        assert_eq!(r.add("", 1), Err(RingError::EmptyName));
        assert_eq!(r.add("a", 0), Err(RingError::ZeroWeight));
        assert!(r.is_empty());
        assert_eq!(
            RingError::ZeroWeight.to_string(),
            "node weight must be at least 1"
        );
        assert_eq!(
            RingError::EmptyName.to_string(),
            "node name must not be empty"
        );
    }

    #[test]
    fn too_many_points_is_refused_before_building() {
        let mut r = ring(1024, &[("a", 1)]);
        let weight = (HashRing::MAX_POINTS / 1024) as u32;
        let err = r.add("b", weight).unwrap_err();
        let points = HashRing::MAX_POINTS + 1024;
        assert_eq!(
            err,
            RingError::TooManyPoints {
                points,
                max: HashRing::MAX_POINTS
            }
        );
        assert!(err.to_string().contains(&points.to_string()));
        assert_eq!(r.nodes(), vec![("a", 1)]);
        assert_eq!(r.points(), 1024);
        // Overflowing u32 arithmetic is caught too.
        let mut huge = HashRing::new(u32::MAX);
        assert!(matches!(
            huge.add("a", u32::MAX),
            Err(RingError::TooManyPoints { .. })
        ));
    }

    #[test]
    fn debug_output_summarizes_instead_of_listing_points() {
        let r = ring(4096, &[("a", 1), ("b", 2)]);
        let text = format!("{r:?}");
        assert!(text.contains("points: 12288"), "{text}");
        assert!(text.len() < 200, "{text}");
    }

    #[test]
    fn zero_vnodes_is_raised_to_one() {
        let r = ring(0, &[("a", 3)]);
        assert_eq!(r.vnodes_per_weight(), 1);
        assert_eq!(r.points(), 3);
        assert_eq!(r.get(b"k"), Some("a"));
    }

    #[test]
    fn nodes_are_sorted_by_name_and_re_adding_updates_weight() {
        let mut r = ring(8, &[("c", 1), ("a", 2), ("b", 1)]);
        assert_eq!(r.nodes(), vec![("a", 2), ("b", 1), ("c", 1)]);
        assert_eq!(r.points(), 32);
        r.add("a", 5).unwrap();
        assert_eq!(r.nodes(), vec![("a", 5), ("b", 1), ("c", 1)]);
        assert_eq!(r.points(), 56);
        assert_eq!(r.len(), 3);
        assert!(r.contains("b"));
        assert!(r.remove("b"));
        assert!(!r.remove("b"));
        assert!(!r.contains("b"));
        assert_eq!(r.points(), 48);
    }

    #[test]
    fn placement_matches_the_documented_algorithm() {
        let r = ring(7, &[("alpha", 1), ("beta", 3), ("gamma", 2), ("δ-node", 1)]);
        let mut hashes: Vec<u64> = (0..2000u32).map(|k| key_hash(&k.to_le_bytes())).collect();
        // Around the wrap and every point edge.
        hashes.extend([0, 1, u64::MAX - 1, u64::MAX]);
        for &p in &r.hashes {
            hashes.extend([p.wrapping_sub(1), p, p.wrapping_add(1)]);
        }
        for h in hashes {
            let want = reference(&r, h, 1);
            assert_eq!(r.get_by_hash(h), Some(want[0].as_str()), "hash {h:#x}");
        }
        for k in 0..200u32 {
            let key = k.to_le_bytes();
            assert_eq!(r.get_n(&key, 3), reference(&r, key_hash(&key), 3));
        }
    }

    #[test]
    fn default_ring_balances_64_nodes_within_5_percent_of_hash_space() {
        let r = equal_nodes(64);
        let shares = r.shares();
        assert_eq!(shares.len(), 64);
        let total: f64 = shares.iter().map(|s| s.1).sum();
        assert!((total - 1.0).abs() < 1e-9, "shares sum to {total}");
        let max = shares.iter().map(|s| s.1).fold(0.0, f64::max);
        assert!(max * 64.0 <= 1.05, "max/mean = {}", max * 64.0);
    }

    #[test]
    fn default_ring_balances_a_million_keys_within_5_percent() {
        let r = equal_nodes(64);
        let mut counts = vec![0usize; 64];
        for key in keys() {
            let node = r.get(key.as_bytes()).unwrap();
            counts[node[5..].parse::<usize>().unwrap()] += 1;
        }
        let max = *counts.iter().max().unwrap() as f64;
        assert!(
            max / (1_000_000.0 / 64.0) <= 1.05,
            "max/mean = {}",
            max / 15625.0
        );
    }

    #[test]
    fn shares_are_exact_arcs_of_the_hash_space() {
        let one = ring(1, &[("solo", 1)]);
        assert_eq!(one.shares(), vec![("solo", 1.0)]);
        let r = ring(1, &[("a", 1), ("b", 1)]);
        let (ha, hb) = (xxh3_64(b"a#0"), xxh3_64(b"b#0"));
        let (lo, hi) = if ha < hb { ("a", "b") } else { ("b", "a") };
        let arc = (ha.abs_diff(hb)) as f64 / 2f64.powi(64);
        let shares: std::collections::HashMap<_, _> = r.shares().into_iter().collect();
        assert!((shares[hi] - arc).abs() < 1e-12);
        assert!((shares[lo] - (1.0 - arc)).abs() < 1e-12);
    }

    #[test]
    fn removing_a_node_moves_only_its_keys() {
        let before = equal_nodes(64);
        let mut after = before.clone();
        assert!(after.remove("node-17"));
        let mut moved = 0;
        for key in keys().step_by(7) {
            let (was, now) = (before.get(key.as_bytes()), after.get(key.as_bytes()));
            if was != now {
                assert_eq!(was, Some("node-17"), "{key} moved from {was:?} to {now:?}");
                moved += 1;
            }
            assert_ne!(now, Some("node-17"));
        }
        assert!(moved > 1000, "only {moved} keys moved");
    }

    #[test]
    fn adding_a_node_moves_keys_only_to_it() {
        let mut r = HashRing::default();
        for i in 0..63 {
            r.add(&format!("node-{i}"), 1).unwrap();
        }
        let before = r.clone();
        r.add("node-new", 1).unwrap();
        let mut moved = 0;
        for key in keys().step_by(7) {
            let (was, now) = (before.get(key.as_bytes()), r.get(key.as_bytes()));
            if was != now {
                assert_eq!(now, Some("node-new"), "{key} moved from {was:?} to {now:?}");
                moved += 1;
            }
        }
        assert!(moved > 1000, "only {moved} keys moved");
    }

    #[test]
    fn raising_a_weight_moves_keys_only_to_that_node() {
        let before = ring(64, &[("a", 1), ("b", 1), ("c", 1)]);
        let mut after = before.clone();
        after.add("b", 3).unwrap();
        let mut moved = 0;
        for k in 0..20_000u32 {
            let key = k.to_le_bytes();
            if before.get(&key) != after.get(&key) {
                assert_eq!(after.get(&key), Some("b"));
                moved += 1;
            }
        }
        assert!(moved > 1000);
    }

    #[test]
    fn a_weight_two_node_owns_twice_the_share() {
        let mut r = HashRing::default();
        for i in 0..8 {
            r.add(&format!("node-{i}"), if i == 3 { 2 } else { 1 })
                .unwrap();
        }
        let shares = r.shares();
        let heavy = shares[3].1;
        let light = (1.0 - heavy) / 7.0;
        assert!((heavy / light - 2.0).abs() < 0.1, "ratio {}", heavy / light);
        assert!((heavy - 2.0 / 9.0).abs() < 0.01, "share {heavy}");
    }

    #[test]
    fn get_n_is_distinct_and_primary_first() {
        let r = equal_nodes(64);
        for k in 0..500u32 {
            let key = k.to_le_bytes();
            let three = r.get_n(&key, 3);
            assert_eq!(three.len(), 3);
            assert_eq!(Some(three[0]), r.get(&key));
            assert!(three[0] != three[1] && three[1] != three[2] && three[0] != three[2]);
        }
    }

    #[test]
    fn get_n_caps_at_membership_and_handles_zero() {
        let r = equal_nodes(64);
        assert!(r.get_n(b"k", 0).is_empty());
        // More than 16 takes the bitset path.
        let all = r.get_n(b"k", 1000);
        assert_eq!(all.len(), 64);
        let mut sorted = all.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), 64);
        assert_eq!(Some(all[0]), r.get(b"k"));
        assert_eq!(r.get_n(b"k", 20), all[..20]);
        assert_eq!(r.get_n(b"k", 5), all[..5]);
    }

    #[test]
    fn bounded_load_never_exceeds_capacity() {
        let mut b = BoundedLoad::new(equal_nodes(16), 0.1);
        for k in 0..20_000u32 {
            let cap = b.capacity();
            let node = b.assign(&k.to_le_bytes()).unwrap().to_string();
            assert!(b.load(&node) <= cap);
        }
        let max = b.ring().nodes().iter().map(|n| b.load(n.0)).max().unwrap();
        assert!(
            max <= (1.1f64 * 20_000.0 / 16.0).ceil() as usize,
            "max load {max}"
        );
        assert_eq!(b.total(), 20_000);
    }

    #[test]
    fn bounded_load_spills_to_the_next_node_clockwise() {
        let r = equal_nodes(4);
        let key = b"hot";
        let order: Vec<String> = r.get_n(key, 4).into_iter().map(String::from).collect();
        let mut b = BoundedLoad::new(r, 0.0);
        // Capacity ceil((t+1)/4): the same key fills each node in turn.
        for round in 0..2 {
            for want in &order {
                assert_eq!(b.assign(key), Some(want.as_str()), "round {round}");
            }
        }
        assert!(order.iter().all(|n| b.load(n) == 2));
    }

    #[test]
    fn release_decrements_only_loaded_members() {
        let mut b = BoundedLoad::new(ring(8, &[("a", 1)]), 0.5);
        assert!(!b.release("a"));
        assert_eq!(b.assign(b"k"), Some("a"));
        assert_eq!(b.load("a"), 1);
        assert!(!b.release("zz"));
        assert_eq!(b.load("zz"), 0);
        assert!(b.release("a"));
        assert!(!b.release("a"));
        assert_eq!(b.total(), 0);
    }

    #[test]
    fn epsilon_is_clamped_and_infinity_is_plain_hashing() {
        assert_eq!(BoundedLoad::new(HashRing::new(1), -1.0).epsilon(), 0.0);
        assert_eq!(BoundedLoad::new(HashRing::new(1), f64::NAN).epsilon(), 0.0);
        let r = equal_nodes(4);
        let mut b = BoundedLoad::new(r.clone(), f64::INFINITY);
        assert_eq!(b.capacity(), usize::MAX);
        for k in 0..1000u32 {
            let key = k.to_le_bytes();
            assert_eq!(b.assign(&key), r.get(&key));
        }
    }

    #[test]
    fn capacity_follows_the_formula() {
        let mut b = BoundedLoad::new(equal_nodes(4), 0.25);
        assert_eq!(b.capacity(), 1); // ceil(1.25 * 1 / 4)
        for k in 0..10u32 {
            b.assign(&k.to_le_bytes());
        }
        assert_eq!(b.capacity(), 4); // ceil(1.25 * 11 / 4) = ceil(3.4375)
    }
}
