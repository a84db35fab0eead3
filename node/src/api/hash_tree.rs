//! Hash trees: the certified data structure of the IC (spec `certification.md`; reference §2.1).
//!
//! ```text
//! hash-tree = [0]                    Empty
//!           / [1, hash-tree, hash-tree]   Fork
//!           / [2, label:bytes, hash-tree] Labeled
//!           / [3, value:bytes]           Leaf
//!           / [4, hash:bytes]            Pruned (32 bytes)
//! reconstruct: H(ds("ic-hashtree-empty")), H(ds("ic-hashtree-fork") ‖ r(a) ‖ r(b)),
//!              H(ds("ic-hashtree-labeled") ‖ l ‖ r(t)), H(ds("ic-hashtree-leaf") ‖ v), h
//! ```
//!
//! This module is the client side: decode, reconstruct, encode and look up paths with the
//! spec's `lookup_path`/`find_label` rules, so absence is proven only by adjacent labels. The
//! node side (building trees with cached digests and pruning them to witnesses) is in
//! `labeled_tree`.

use super::cbor::{Value, Writer};
use alloc::boxed::Box;
use alloc::vec::Vec;
use core::fmt;
use sha2::{Digest, Sha256};

pub const DS_EMPTY: &[u8] = b"\x11ic-hashtree-empty";
pub const DS_FORK: &[u8] = b"\x10ic-hashtree-fork";
pub const DS_LABELED: &[u8] = b"\x13ic-hashtree-labeled";
pub const DS_LEAF: &[u8] = b"\x10ic-hashtree-leaf";

/// A hash tree as it travels in a certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HashTree {
    Empty,
    Fork(Box<HashTree>, Box<HashTree>),
    Labeled(Vec<u8>, Box<HashTree>),
    Leaf(Vec<u8>),
    Pruned([u8; 32]),
}

/// Why a CBOR value is not a hash tree.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TreeError {
    /// Not one of the five array shapes, or a pruned hash that is not 32 bytes.
    Malformed,
}

impl fmt::Display for TreeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("malformed hash tree")
    }
}

/// The outcome of `lookup_path` (spec §Lookup).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lookup<'t> {
    /// A leaf's value.
    Found(&'t [u8]),
    /// The tree proves the path does not exist.
    Absent,
    /// The path lies in a pruned part: the tree proves nothing about it.
    Unknown,
    /// The path ends at an inner node, or continues below a leaf.
    Error,
}

/// The outcome of looking up a subtree rather than a leaf.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SubtreeLookup<'t> {
    Found(&'t HashTree),
    Absent,
    Unknown,
    Error,
}

pub fn empty_digest() -> [u8; 32] {
    Sha256::digest(DS_EMPTY).into()
}

pub fn fork_digest(left: &[u8; 32], right: &[u8; 32]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(DS_FORK);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

pub fn labeled_digest(label: &[u8], child: &[u8; 32]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(DS_LABELED);
    h.update(label);
    h.update(child);
    h.finalize().into()
}

pub fn leaf_digest(value: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(DS_LEAF);
    h.update(value);
    h.finalize().into()
}

impl HashTree {
    /// The root hash (`reconstruct` of the spec).
    pub fn digest(&self) -> [u8; 32] {
        match self {
            HashTree::Empty => empty_digest(),
            HashTree::Fork(l, r) => fork_digest(&l.digest(), &r.digest()),
            HashTree::Labeled(label, t) => labeled_digest(label, &t.digest()),
            HashTree::Leaf(v) => leaf_digest(v),
            HashTree::Pruned(h) => *h,
        }
    }

    pub fn from_cbor(value: &Value<'_>) -> Result<HashTree, TreeError> {
        let items = value.as_array().ok_or(TreeError::Malformed)?;
        let (kind, rest) = items.split_first().ok_or(TreeError::Malformed)?;
        let tree = match (kind.as_u64(), rest) {
            (Some(0), []) => HashTree::Empty,
            (Some(1), [l, r]) => HashTree::Fork(
                Box::new(HashTree::from_cbor(l)?),
                Box::new(HashTree::from_cbor(r)?),
            ),
            (Some(2), [label, t]) => {
                let label = label.as_bytes().ok_or(TreeError::Malformed)?;
                HashTree::Labeled(label.to_vec(), Box::new(HashTree::from_cbor(t)?))
            }
            (Some(3), [v]) => HashTree::Leaf(v.as_bytes().ok_or(TreeError::Malformed)?.to_vec()),
            (Some(4), [h]) => {
                let h = h.as_bytes().ok_or(TreeError::Malformed)?;
                HashTree::Pruned(h.try_into().map_err(|_| TreeError::Malformed)?)
            }
            _ => return Err(TreeError::Malformed),
        };
        Ok(tree)
    }

    pub fn encode(&self, w: &mut Writer) {
        match self {
            HashTree::Empty => {
                w.array(1).u64(0);
            }
            HashTree::Fork(l, r) => {
                w.array(3).u64(1);
                l.encode(w);
                r.encode(w);
            }
            HashTree::Labeled(label, t) => {
                w.array(3).u64(2).bytes(label);
                t.encode(w);
            }
            HashTree::Leaf(v) => {
                w.array(2).u64(3).bytes(v);
            }
            HashTree::Pruned(h) => {
                w.array(2).u64(4).bytes(h);
            }
        }
    }

    /// `lookup_path` of the spec for a leaf value.
    pub fn lookup<L: AsRef<[u8]>>(&self, path: &[L]) -> Lookup<'_> {
        match self.lookup_subtree(path) {
            SubtreeLookup::Found(HashTree::Leaf(v)) => Lookup::Found(v),
            SubtreeLookup::Found(HashTree::Empty) => Lookup::Absent,
            SubtreeLookup::Found(HashTree::Pruned(_)) => Lookup::Unknown,
            SubtreeLookup::Found(_) => Lookup::Error,
            SubtreeLookup::Absent => Lookup::Absent,
            SubtreeLookup::Unknown => Lookup::Unknown,
            SubtreeLookup::Error => Lookup::Error,
        }
    }

    /// Follows `path` through labels and returns whatever tree is there.
    pub fn lookup_subtree<L: AsRef<[u8]>>(&self, path: &[L]) -> SubtreeLookup<'_> {
        let mut t = self;
        for label in path {
            match find_label(label.as_ref(), &t.flatten_forks()) {
                SubtreeLookup::Found(sub) => t = sub,
                other => return other,
            }
        }
        SubtreeLookup::Found(t)
    }

    /// The children of a subtree, forks flattened, in order (spec `flatten_forks`).
    pub fn flatten_forks(&self) -> Vec<&HashTree> {
        let mut out = Vec::new();
        let mut stack = alloc::vec![self];
        while let Some(t) = stack.pop() {
            match t {
                HashTree::Empty => {}
                HashTree::Fork(l, r) => {
                    stack.push(r);
                    stack.push(l);
                }
                other => out.push(other),
            }
        }
        out
    }
}

fn label_of(t: &HashTree) -> Option<&[u8]> {
    match t {
        HashTree::Labeled(l, _) => Some(l.as_slice()),
        _ => None,
    }
}

/// `find_label` of the spec on a flattened level.
fn find_label<'t>(label: &[u8], items: &[&'t HashTree]) -> SubtreeLookup<'t> {
    for t in items {
        if let HashTree::Labeled(l, sub) = t {
            if l.as_slice() == label {
                return SubtreeLookup::Found(sub);
            }
        }
    }
    for pair in items.windows(2) {
        if let (Some(l1), Some(l2)) = (label_of(pair[0]), label_of(pair[1])) {
            if l1 < label && label < l2 {
                return SubtreeLookup::Absent;
            }
        }
    }
    match (items.first(), items.last()) {
        (None, _) => return SubtreeLookup::Absent,
        (Some(HashTree::Leaf(_)), _) if items.len() == 1 => return SubtreeLookup::Error,
        _ => {}
    }
    if items
        .first()
        .and_then(|t| label_of(t))
        .is_some_and(|l2| label < l2)
    {
        return SubtreeLookup::Absent;
    }
    if items
        .last()
        .and_then(|t| label_of(t))
        .is_some_and(|l1| l1 < label)
    {
        return SubtreeLookup::Absent;
    }
    SubtreeLookup::Unknown
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_digest_matches_reference() {
        let hex: alloc::string::String = empty_digest()
            .iter()
            .map(|b| alloc::format!("{b:02x}"))
            .collect();
        assert_eq!(
            hex,
            "4e3ed35c4e2d1ee89996483fb6260a64cffb6c47dbab216e7930e82f8190d120"
        );
    }
}
