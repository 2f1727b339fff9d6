//! A dialect's rules compiled into one trie of element names from the root, so that the engine decides what an
//! element means with one child lookup per start tag.

use std::sync::OnceLock;

use crate::dialect::{Dialect, DialectSpec, Field, Rule};

pub(crate) type NodeId = u32;

/// What entering an element starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    Plain,
    Transaction,
    Line,
    Discount,
}

/// An attribute predicate `[@name=value]`.
pub(crate) type Predicate = Option<(&'static str, &'static str)>;

#[derive(Debug, Clone, Copy)]
pub(crate) enum Action {
    /// The element's text fills `field` (if the predicate holds).
    Text { field: Field, pred: Predicate },
    /// The element's presence sets `field` to `value` (if the predicate holds).
    Mark { field: Field, value: &'static str, pred: Predicate },
    /// The value of attribute `name` fills `field`, or, with a constant, its presence sets it.
    Attr { name: &'static str, field: Field, constant: Option<&'static str> },
}

#[derive(Debug, Default)]
pub(crate) struct Node {
    /// (the name's [`name_print`], the name, the child).
    pub children: Vec<(u64, &'static str, NodeId)>,
    /// The children's [`print_bit`]s: most elements of a file are not in the plan, and a name whose bit is not here
    /// is not a child, without a scan of `children`.
    pub child_bits: u64,
    pub role: Option<Role>,
    pub actions: Vec<Action>,
}

#[derive(Debug)]
pub(crate) struct Plan {
    pub nodes: Vec<Node>,
    pub spec: &'static DialectSpec,
}

pub(crate) const ROOT: NodeId = 0;

/// A name's length and its first four and last three bytes in one word: names compared by it first are told apart
/// without a call to `memcmp` (most names that share a length differ there), and compared whole only when it matches.
#[inline]
pub(crate) fn name_print(name: &[u8]) -> u64 {
    // Byte by byte rather than `copy_from_slice` of 0-4 bytes: that is a call to `memcpy` for each, twice an element
    // (about 1.4% of an ingest's instructions).
    let head = match name {
        [a, b, c, d, ..] => u32::from_le_bytes([*a, *b, *c, *d]),
        [a, b, c] => u32::from_le_bytes([*a, *b, *c, 0]),
        [a, b] => u32::from_le_bytes([*a, *b, 0, 0]),
        [a] => u32::from(*a),
        [] => 0,
    };
    let tail = match name {
        [.., x, y, z] => u32::from_le_bytes([*x, *y, *z, 0]),
        [y, z] => u32::from_le_bytes([*y, *z, 0, 0]),
        [z] => u32::from(*z),
        [] => 0,
    };
    (u64::from(head) | (u64::from(tail) << 32)) ^ ((name.len() as u64) << 56)
}

/// One of 64 bits for a name's print (a multiplicative hash of it): sets of names as one word, for a test that
/// rules a name out without comparing it to any.
#[inline]
pub(crate) fn print_bit(print: u64) -> u64 {
    1 << (print.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 58)
}

impl Plan {
    pub fn for_dialect(dialect: Dialect) -> &'static Plan {
        static PLANS: [OnceLock<Plan>; 6] = [const { OnceLock::new() }; 6];
        let i = Dialect::ALL.iter().position(|d| *d == dialect).unwrap_or(0);
        PLANS[i].get_or_init(|| Plan::compile(dialect.spec()))
    }

    /// The child of `node` named `name`, whose [`name_print`] is `print`.
    #[inline]
    pub fn child(&self, node: NodeId, name: &[u8], print: u64) -> Option<NodeId> {
        let node = &self.nodes[node as usize];
        if node.child_bits & print_bit(print) == 0 {
            return None;
        }
        node.children.iter().find(|(p, n, _)| *p == print && n.as_bytes() == name).map(|&(_, _, id)| id)
    }

    fn compile(spec: &'static DialectSpec) -> Plan {
        let mut plan = Plan { nodes: vec![Node::default()], spec };
        plan.add_rules(&[ROOT], spec.file);
        let txs = plan.add_role(&[ROOT], spec.transaction, Role::Transaction);
        for rules in spec.header {
            plan.add_rules(&txs, rules);
        }
        let lines = plan.add_role(&txs, spec.line, Role::Line);
        plan.add_rules(&lines, spec.line_rules);
        let mut discounts = plan.add_role(&lines, spec.discount, Role::Discount);
        discounts.extend(plan.add_role(&txs, spec.transaction_discount, Role::Discount));
        plan.add_rules(&discounts, spec.discount_rules);
        plan
    }

    fn add_role(&mut self, bases: &[NodeId], path: &'static str, role: Role) -> Vec<NodeId> {
        if path.is_empty() {
            return Vec::new();
        }
        let nodes = self.walk(bases, path);
        for &n in &nodes {
            self.nodes[n as usize].role = Some(role);
        }
        nodes
    }

    fn add_rules(&mut self, bases: &[NodeId], rules: &'static [Rule]) {
        for rule in rules {
            for path in rule.path.split(',').map(str::trim) {
                let (elements, attr) = split_attribute(path);
                let (elements, pred) = split_predicate(elements);
                let targets =
                    if elements.is_empty() || elements == "." { bases.to_vec() } else { self.walk(bases, elements) };
                let action = match (attr, rule.constant) {
                    (Some(name), constant) => Action::Attr { name, field: rule.field, constant },
                    (None, Some(value)) => Action::Mark { field: rule.field, value, pred },
                    (None, None) => Action::Text { field: rule.field, pred },
                };
                for n in targets {
                    self.nodes[n as usize].actions.push(action);
                }
            }
        }
    }

    /// Follows (creating) `path` from each base; returns the nodes it ends at.
    fn walk(&mut self, bases: &[NodeId], paths: &'static str) -> Vec<NodeId> {
        paths.split(',').map(str::trim).flat_map(|path| self.walk_one(bases, path)).collect()
    }

    fn walk_one(&mut self, bases: &[NodeId], path: &'static str) -> Vec<NodeId> {
        let mut current = bases.to_vec();
        for step in path.split('/') {
            let mut next = Vec::new();
            for alt in step.split('|') {
                for &base in &current {
                    next.push(self.child_or_insert(base, alt));
                }
            }
            current = next;
        }
        current
    }

    fn child_or_insert(&mut self, node: NodeId, name: &'static str) -> NodeId {
        if let Some(id) = self.child(node, name.as_bytes(), name_print(name.as_bytes())) {
            return id;
        }
        let id = self.nodes.len() as NodeId;
        self.nodes.push(Node::default());
        let print = name_print(name.as_bytes());
        let parent = &mut self.nodes[node as usize];
        parent.children.push((print, name, id));
        parent.child_bits |= print_bit(print);
        id
    }
}

/// Splits `a/b/@name` into `a/b` and `name`; `@name` alone names an attribute of the scoping element. An `@`
/// inside a predicate is not an attribute step.
fn split_attribute(path: &'static str) -> (&'static str, Option<&'static str>) {
    let last = path.rsplit('/').next().unwrap_or(path);
    match last.strip_prefix('@') {
        Some(name) => (path[..path.len() - last.len()].trim_end_matches('/'), Some(name)),
        None => (path, None),
    }
}

/// Splits `a/b[@k=v]` into `a/b` and `(k, v)`.
fn split_predicate(path: &'static str) -> (&'static str, Predicate) {
    if let Some(open) = path.rfind('[')
        && let Some(inner) = path[open..].strip_prefix("[@").and_then(|s| s.strip_suffix(']'))
        && let Some((k, v)) = inner.split_once('=')
    {
        return (&path[..open], Some((k, v.trim_matches(|c| c == '"' || c == '\''))));
    }
    (path, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_split() {
        assert_eq!(split_attribute("a/b/@x"), ("a/b", Some("x")));
        assert_eq!(split_attribute("@x"), ("", Some("x")));
        assert_eq!(split_attribute("Total[@T=G]"), ("Total[@T=G]", None));
    }

    #[test]
    fn predicates_split() {
        assert_eq!(
            split_predicate("Total[@TotalType=TransactionGrandAmount]"),
            ("Total", Some(("TotalType", "TransactionGrandAmount")))
        );
        assert_eq!(split_predicate("a/b"), ("a/b", None));
    }

    #[test]
    fn every_dialect_compiles_with_transactions_and_lines() {
        for d in Dialect::ALL {
            let plan = Plan::for_dialect(d);
            let roles: Vec<_> = plan.nodes.iter().filter_map(|n| n.role).collect();
            assert!(roles.contains(&Role::Transaction), "{d}: no transaction element");
            assert!(roles.contains(&Role::Line), "{d}: no line element");
            assert!(
                plan.nodes.iter().any(|n| n.actions.iter().any(|a| matches!(
                    a,
                    Action::Text { field: Field::Sequence, .. } | Action::Attr { field: Field::Sequence, .. }
                ))),
                "{d}: no sequence rule"
            );
        }
    }

    /// A name's print is a prefilter: every name of every plan is found under its own print and no other name's,
    /// including names that share a length and their first and last bytes.
    #[test]
    fn children_are_found_by_print_and_name() {
        for d in Dialect::ALL {
            let plan = Plan::for_dialect(d);
            for (node, n) in plan.nodes.iter().enumerate() {
                for &(_, name, id) in &n.children {
                    assert_eq!(plan.child(node as NodeId, name.as_bytes(), name_print(name.as_bytes())), Some(id));
                }
            }
        }
        let mut plan = Plan { nodes: vec![Node::default()], spec: Dialect::ArtsPoslog.spec() };
        let a = plan.child_or_insert(ROOT, "TotalXAmount");
        let b = plan.child_or_insert(ROOT, "TotalYAmount");
        assert_ne!(a, b);
        assert_eq!(name_print(b"TotalXAmount"), name_print(b"TotalYAmount"));
        assert_eq!(plan.child(ROOT, b"TotalYAmount", name_print(b"TotalYAmount")), Some(b));
        assert_eq!(name_print(b""), 0);
    }

    /// The print is the name's first 4 bytes, its last 3 and its length, laid out in that order in a little-endian
    /// word, whatever the length.
    #[test]
    fn a_print_holds_the_first_and_last_bytes_and_the_length() {
        let name = b"RetailTransaction";
        for n in 0..=name.len() {
            let name = &name[..n];
            let mut w = [0u8; 8];
            w[..n.min(4)].copy_from_slice(&name[..n.min(4)]);
            w[4..4 + n.min(3)].copy_from_slice(&name[n - n.min(3)..]);
            w[7] = n as u8;
            assert_eq!(name_print(name), u64::from_le_bytes(w), "{n} bytes");
        }
    }
}
