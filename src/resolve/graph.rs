//! The dependency graph's algorithms: strongly connected components in dependency
//! order, and a readable path around a cycle.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use std::fmt::Write;

use super::Resolver;
use crate::model::Key;

/// Strongly connected components of the graph restricted to `nodes`, each listed after
/// every component it depends on. `deps` gives a node's outgoing edges; edges leaving
/// `nodes` are ignored. Iterative (Tarjan), so a long chain cannot overflow the stack.
pub fn components<'a>(nodes: &'a BTreeSet<Key>, deps: impl Fn(&Key) -> Vec<&'a Key>) -> Vec<Vec<Key>> {
    let mut tarjan = Tarjan {
        nodes,
        deps,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        on_stack: BTreeSet::new(),
        stack: Vec::new(),
        out: Vec::new(),
    };
    for root in nodes {
        if !tarjan.index.contains_key(root) {
            tarjan.run(root);
        }
    }
    tarjan.out
}

struct Tarjan<'a, F> {
    nodes: &'a BTreeSet<Key>,
    deps: F,
    index: BTreeMap<&'a Key, usize>,
    low: BTreeMap<&'a Key, usize>,
    on_stack: BTreeSet<&'a Key>,
    stack: Vec<&'a Key>,
    out: Vec<Vec<Key>>,
}

/// A node being visited and how far through its edges the visit is.
struct Frame<'a> {
    node: &'a Key,
    edges: Vec<&'a Key>,
    next: usize,
}

impl<'a, F: Fn(&Key) -> Vec<&'a Key>> Tarjan<'a, F> {
    fn enter(&mut self, node: &'a Key) -> Frame<'a> {
        let n = self.index.len();
        self.index.insert(node, n);
        self.low.insert(node, n);
        self.stack.push(node);
        self.on_stack.insert(node);
        let edges = (self.deps)(node).into_iter().filter(|dep| self.nodes.contains(*dep)).collect();
        Frame { node, edges, next: 0 }
    }

    fn lower(&mut self, node: &'a Key, to: usize) {
        if let Some(low) = self.low.get_mut(node) {
            *low = (*low).min(to);
        }
    }

    fn run(&mut self, root: &'a Key) {
        let first = self.enter(root);
        let mut frames = vec![first];
        while let Some(frame) = frames.last_mut() {
            let node = frame.node;
            if let Some(&dep) = frame.edges.get(frame.next) {
                frame.next += 1;
                match self.index.get(dep) {
                    None => {
                        let frame = self.enter(dep);
                        frames.push(frame);
                    }
                    Some(&dep_index) if self.on_stack.contains(dep) => self.lower(node, dep_index),
                    Some(_) => {}
                }
                continue;
            }
            frames.pop();
            let node_low = self.low[node];
            if let Some(parent) = frames.last() {
                self.lower(parent.node, node_low);
            }
            if node_low == self.index[node] {
                let mut component = Vec::new();
                while let Some(member) = self.stack.pop() {
                    self.on_stack.remove(member);
                    component.push(member.clone());
                    if member == node {
                        break;
                    }
                }
                component.sort();
                self.out.push(component);
            }
        }
    }
}

/// The shortest cycle through the smallest member of a cyclic component, written
/// `a → b → a`; the same component always gives the same text.
pub fn cycle_path<'a>(component: &'a [Key], deps: impl Fn(&Key) -> Vec<&'a Key>) -> String {
    let members: BTreeSet<&Key> = component.iter().collect();
    let Some(start) = component.iter().min() else { return String::new() };
    let mut came_from: BTreeMap<&Key, &Key> = BTreeMap::new();
    let mut queue = VecDeque::from([start]);
    while let Some(node) = queue.pop_front() {
        let mut next: Vec<&Key> = deps(node).into_iter().filter(|dep| members.contains(dep)).collect();
        next.sort();
        for dep in next {
            if dep == start {
                let mut path = vec![start.as_str()];
                let mut at = node;
                while at != start {
                    path.push(at.as_str());
                    at = came_from[at];
                }
                path.push(start.as_str());
                let last = path.len() - 1;
                path[1..last].reverse();
                return path.join(" → ");
            }
            if !came_from.contains_key(dep) && dep != start {
                came_from.insert(dep, node);
                queue.push_back(dep);
            }
        }
    }
    start.to_string()
}

/// The dependency graph as Graphviz DOT: edges labelled `extends`, `reference` or
/// `schema`; modules in `rejected` (key → reason) in red, missing targets dashed.
pub fn dot(resolver: &Resolver, rejected: &BTreeMap<String, String>) -> String {
    let mut out = String::from("digraph config {\n  rankdir=LR;\n  node [shape=box, fontname=\"monospace\"];\n");
    let mut missing = BTreeSet::new();
    for (key, edges) in resolver.edges() {
        match rejected.get(key.as_str()) {
            Some(reason) => {
                let _ =
                    writeln!(out, "  {} [color=red, fontcolor=red, tooltip={}];", quote(key.as_str()), quote(reason));
            }
            None => {
                let _ = writeln!(out, "  {};", quote(key.as_str()));
            }
        }
        for (dep, kind) in edges {
            if resolver.outcome(dep).is_none() {
                missing.insert(dep.clone());
            }
            let _ = writeln!(out, "  {} -> {} [label={}];", quote(key.as_str()), quote(dep.as_str()), quote(kind));
        }
    }
    for key in missing {
        let _ = writeln!(out, "  {} [style=dashed, color=red, tooltip=\"no such module\"];", quote(key.as_str()));
    }
    out.push_str("}\n");
    out
}

fn quote(text: &str) -> String {
    format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\""))
}
