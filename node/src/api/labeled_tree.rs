//! The node side of hash trees: a labeled tree with every digest computed once, and witnesses
//! (pruned copies that reveal only requested paths).
//!
//! Invariants: children of a subtree are sorted by label (a `BTreeMap` builds them), and the
//! fork shape over them is a fixed function of their number (balanced: the left half holds
//! `n/2` children), so every node of a subnet derives the same root hash from the same data.
//! A witness keeps the root hash of the full tree; a requested label that does not exist is
//! proven absent by revealing its two neighbours, which are adjacent, so no pruned part lies
//! between them (the spec's `find_label`).

use super::hash_tree::{empty_digest, fork_digest, labeled_digest, leaf_digest, HashTree};
use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::vec::Vec;

/// A tree of labeled nodes with leaf values, before hashing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LabeledTree {
    Leaf(Vec<u8>),
    SubTree(BTreeMap<Vec<u8>, LabeledTree>),
}

impl LabeledTree {
    pub fn empty() -> LabeledTree {
        LabeledTree::SubTree(BTreeMap::new())
    }

    /// Inserts `value` at `path`, creating subtrees on the way; a leaf on the way is replaced.
    pub fn insert<L: AsRef<[u8]>>(&mut self, path: &[L], value: Vec<u8>) {
        let Some((last, prefix)) = path.split_last() else {
            *self = LabeledTree::Leaf(value);
            return;
        };
        let mut node = self;
        for label in prefix {
            node = node.child_mut(label.as_ref());
        }
        if let LabeledTree::SubTree(children) = node.as_subtree_mut() {
            children.insert(last.as_ref().to_vec(), LabeledTree::Leaf(value));
        }
    }

    /// Ensures an (empty) subtree exists at `path`.
    pub fn insert_subtree<L: AsRef<[u8]>>(&mut self, path: &[L]) {
        let mut node = self;
        for label in path {
            node = node.child_mut(label.as_ref());
        }
        node.as_subtree_mut();
    }

    fn as_subtree_mut(&mut self) -> &mut LabeledTree {
        if matches!(self, LabeledTree::Leaf(_)) {
            *self = LabeledTree::empty();
        }
        self
    }

    fn child_mut(&mut self, label: &[u8]) -> &mut LabeledTree {
        match self.as_subtree_mut() {
            LabeledTree::SubTree(children) => children
                .entry(label.to_vec())
                .or_insert_with(LabeledTree::empty),
            LabeledTree::Leaf(_) => unreachable!("as_subtree_mut made it a subtree"),
        }
    }
}

/// A labeled tree with all digests cached: the certified state of one height.
#[derive(Clone, Debug)]
pub enum HashedTree {
    Leaf { value: Vec<u8>, digest: [u8; 32] },
    SubTree(HashedSubtree),
}

/// The children of one node and the digests of the balanced fork tree over them.
#[derive(Clone, Debug)]
pub struct HashedSubtree {
    labels: Vec<Vec<u8>>,
    children: Vec<HashedTree>,
    /// `labeled_digest(label_i, child_i)`.
    labeled: Vec<[u8; 32]>,
    /// Fork digests in heap order (root at 0, children of `i` at `2i+1`, `2i+2`).
    forks: Vec<[u8; 32]>,
    digest: [u8; 32],
}

/// How a child takes part in a witness.
enum Mark<'p, L> {
    /// Reveal the label only (it is a neighbour proving another label absent).
    Bare,
    /// Reveal along these remaining paths.
    Paths(Vec<&'p [L]>),
}

impl HashedTree {
    pub fn new(tree: LabeledTree) -> HashedTree {
        match tree {
            LabeledTree::Leaf(value) => {
                let digest = leaf_digest(&value);
                HashedTree::Leaf { value, digest }
            }
            LabeledTree::SubTree(map) => {
                let n = map.len();
                let mut labels = Vec::with_capacity(n);
                let mut children = Vec::with_capacity(n);
                let mut labeled = Vec::with_capacity(n);
                for (label, child) in map {
                    let child = HashedTree::new(child);
                    labeled.push(labeled_digest(&label, &child.digest()));
                    labels.push(label);
                    children.push(child);
                }
                let mut forks = alloc::vec![[0u8; 32]; if n > 1 { 4 * n } else { 0 }];
                let digest = match n {
                    0 => empty_digest(),
                    _ => fill_forks(&labeled, &mut forks, 0, 0, n),
                };
                HashedTree::SubTree(HashedSubtree {
                    labels,
                    children,
                    labeled,
                    forks,
                    digest,
                })
            }
        }
    }

    pub fn digest(&self) -> [u8; 32] {
        match self {
            HashedTree::Leaf { digest, .. } => *digest,
            HashedTree::SubTree(s) => s.digest,
        }
    }

    /// The node at `path`, if present.
    pub fn get<L: AsRef<[u8]>>(&self, path: &[L]) -> Option<&HashedTree> {
        let mut t = self;
        for label in path {
            let HashedTree::SubTree(s) = t else {
                return None;
            };
            let i = s
                .labels
                .binary_search_by(|l| l.as_slice().cmp(label.as_ref()))
                .ok()?;
            t = &s.children[i];
        }
        Some(t)
    }

    /// The leaf value at `path`, if it is a leaf.
    pub fn get_value<L: AsRef<[u8]>>(&self, path: &[L]) -> Option<&[u8]> {
        match self.get(path)? {
            HashedTree::Leaf { value, .. } => Some(value),
            HashedTree::SubTree(_) => None,
        }
    }

    /// The labels directly under `path`.
    pub fn labels_at<L: AsRef<[u8]>>(&self, path: &[L]) -> &[Vec<u8>] {
        match self.get(path) {
            Some(HashedTree::SubTree(s)) => &s.labels,
            _ => &[],
        }
    }

    /// The whole tree, nothing pruned.
    pub fn to_hash_tree(&self) -> HashTree {
        match self {
            HashedTree::Leaf { value, .. } => HashTree::Leaf(value.clone()),
            HashedTree::SubTree(s) => {
                let mut marks = BTreeMap::new();
                let empty: &[&[u8]] = &[];
                for i in 0..s.labels.len() {
                    marks.insert(i, Mark::Paths(alloc::vec![empty]));
                }
                s.witness_with(&marks)
            }
        }
    }

    /// A witness revealing every requested path (each a prefix: a path that ends at a subtree
    /// reveals all of it) and proving the absence of every requested label that is missing.
    pub fn witness<L: AsRef<[u8]>>(&self, paths: &[&[L]]) -> HashTree {
        if paths.iter().any(|p| p.is_empty()) {
            return self.to_hash_tree();
        }
        match self {
            HashedTree::Leaf { value, .. } => HashTree::Leaf(value.clone()),
            HashedTree::SubTree(s) if paths.is_empty() => HashTree::Pruned(s.digest),
            HashedTree::SubTree(s) => {
                let mut marks: BTreeMap<usize, Mark<'_, L>> = BTreeMap::new();
                for path in paths {
                    let (first, rest) = (path[0].as_ref(), &path[1..]);
                    match s.labels.binary_search_by(|l| l.as_slice().cmp(first)) {
                        Ok(i) => match marks.entry(i).or_insert(Mark::Paths(Vec::new())) {
                            Mark::Paths(v) => v.push(rest),
                            m @ Mark::Bare => *m = Mark::Paths(alloc::vec![rest]),
                        },
                        Err(pos) => {
                            // Neighbours on both sides prove absence.
                            if pos > 0 {
                                marks.entry(pos - 1).or_insert(Mark::Bare);
                            }
                            if pos < s.labels.len() {
                                marks.entry(pos).or_insert(Mark::Bare);
                            }
                        }
                    }
                }
                if s.labels.is_empty() {
                    return HashTree::Empty;
                }
                s.witness_with(&marks)
            }
        }
    }
}

impl HashedSubtree {
    fn witness_with<L: AsRef<[u8]>>(&self, marks: &BTreeMap<usize, Mark<'_, L>>) -> HashTree {
        match self.labels.len() {
            0 => HashTree::Empty,
            n => self.witness_range(marks, 0, 0, n),
        }
    }

    fn witness_range<L: AsRef<[u8]>>(
        &self,
        marks: &BTreeMap<usize, Mark<'_, L>>,
        heap: usize,
        lo: usize,
        hi: usize,
    ) -> HashTree {
        if marks.range(lo..hi).next().is_none() {
            return HashTree::Pruned(if hi - lo == 1 {
                self.labeled[lo]
            } else {
                self.forks[heap]
            });
        }
        if hi - lo == 1 {
            let child = match &marks[&lo] {
                Mark::Bare => HashTree::Pruned(self.children[lo].digest()),
                Mark::Paths(p) => self.children[lo].witness(p),
            };
            return HashTree::Labeled(self.labels[lo].clone(), Box::new(child));
        }
        let mid = lo + (hi - lo) / 2;
        HashTree::Fork(
            Box::new(self.witness_range(marks, 2 * heap + 1, lo, mid)),
            Box::new(self.witness_range(marks, 2 * heap + 2, mid, hi)),
        )
    }
}

/// Fills the fork digests of children `lo..hi` at heap slot `heap`; returns the range's digest.
fn fill_forks(
    labeled: &[[u8; 32]],
    forks: &mut [[u8; 32]],
    heap: usize,
    lo: usize,
    hi: usize,
) -> [u8; 32] {
    if hi - lo == 1 {
        return labeled[lo];
    }
    let mid = lo + (hi - lo) / 2;
    let l = fill_forks(labeled, forks, 2 * heap + 1, lo, mid);
    let r = fill_forks(labeled, forks, 2 * heap + 2, mid, hi);
    let d = fork_digest(&l, &r);
    forks[heap] = d;
    d
}

#[cfg(test)]
mod tests {
    use super::super::hash_tree::Lookup;
    use super::*;

    fn sample() -> HashedTree {
        let mut t = LabeledTree::empty();
        for (i, name) in ["b", "d", "f", "h", "j"].iter().enumerate() {
            t.insert(&[name.as_bytes(), b"x"], alloc::vec![i as u8]);
            t.insert(&[name.as_bytes(), b"y"], alloc::vec![10 + i as u8]);
        }
        t.insert(&[b"time"], alloc::vec![42]);
        HashedTree::new(t)
    }

    #[test]
    fn witnesses_keep_root_and_prove_presence_and_absence() {
        let t = sample();
        let full = t.to_hash_tree();
        assert_eq!(full.digest(), t.digest());
        let cases: &[&[&[u8]]] = &[&[b"d", b"y"], &[b"a"], &[b"e"], &[b"z"], &[b"time"]];
        let w = t.witness(cases);
        assert_eq!(w.digest(), t.digest());
        assert_eq!(w.lookup(&[b"d", b"y"]), Lookup::Found(&[11]));
        assert_eq!(w.lookup(&[b"time"]), Lookup::Found(&[42]));
        assert_eq!(w.lookup(&[b"a"]), Lookup::Absent);
        assert_eq!(w.lookup(&[b"e"]), Lookup::Absent);
        assert_eq!(w.lookup(&[b"z"]), Lookup::Absent);
        // Not requested: unknown, not absent and not found.
        assert_eq!(w.lookup(&[b"h", b"x"]), Lookup::Unknown);
        assert_eq!(w.lookup(&[b"d", b"x"]), Lookup::Unknown);
        // A prefix path reveals the whole subtree.
        let w = t.witness(&[&[b"f"][..]]);
        assert_eq!(w.lookup(&[b"f", b"x"]), Lookup::Found(&[2]));
        assert_eq!(w.lookup(&[b"f", b"q"]), Lookup::Absent);
        // Every size of level hashes the same whether revealed or pruned.
        for n in 0..20u8 {
            let mut lt = LabeledTree::empty();
            for i in 0..n {
                lt.insert(&[[i * 2]], alloc::vec![i]);
            }
            let h = HashedTree::new(lt);
            for probe in 0..(2 * n + 1) {
                let w = h.witness(&[&[[probe]][..]]);
                assert_eq!(w.digest(), h.digest(), "n={n} probe={probe}");
                let value = [probe / 2];
                let expect = if probe % 2 == 0 && probe < 2 * n {
                    Lookup::Found(&value[..])
                } else {
                    Lookup::Absent
                };
                assert_eq!(w.lookup(&[[probe]]), expect, "n={n} probe={probe}");
            }
        }
    }
}
