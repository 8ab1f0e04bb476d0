//! Memory maps as TOML files, for `ember mtree --map FILE` and for tests.
//!
//! ```toml
//! [[region]]
//! id = "system"
//! kind = "container"      # container | ram | rom | romd | io | alias
//! size = "2^64"           # integer, or "0x1000", "4096", "2^64", "64K", "128M"
//!
//! [[region]]
//! id = "pam-rom-3"
//! name = "pam-rom"        # display name, defaults to id
//! kind = "alias"
//! target = "pc.ram"       # alias only
//! offset = "0xcc000"      # alias only
//! size = "0x4000"
//! parent = "system"       # omit to leave it unmapped
//! addr = "0xcc000"
//! priority = 1            # default 0
//! enabled = true          # default true
//! readonly = true         # default false (true for rom)
//! romd = true             # romd only, default true
//!
//! [[address_space]]
//! name = "memory"
//! root = "system"
//! unassigned = "zero"     # zero | ones; default ones for "I/O", else zero
//! ```
//!
//! Regions are created and added in file order, so among equal priorities a
//! later sibling is newer and wins overlaps. Every mistake gives one message
//! naming the region.

use std::collections::HashMap;
use std::path::Path;

use serde::Deserialize;

use super::{AddressSpace, MemoryError, MemoryTree, RegionId, RegionKind, Unassigned, SIZE_2_64};

/// A mistake in a map file.
#[derive(Debug, thiserror::Error)]
pub enum MapError {
    #[error("cannot read {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("{0}")]
    Syntax(String),
    #[error(
        "region '{id}': unknown kind '{kind}' (expected container, ram, rom, romd, io or alias)"
    )]
    UnknownKind { id: String, kind: String },
    #[error("region '{id}' is defined more than once (a region has one parent; use an alias to show it in a second place)")]
    DuplicateId { id: String },
    #[error("region '{id}': an empty id is not allowed")]
    EmptyId { id: String },
    #[error("region '{id}': parent '{parent}' is not defined")]
    MissingParent { id: String, parent: String },
    #[error("region '{id}': alias target '{target}' is not defined")]
    MissingTarget { id: String, target: String },
    #[error("region '{id}': an alias needs a target")]
    NoTarget { id: String },
    #[error("region '{id}': '{field}' is only allowed on {allowed} regions")]
    FieldNotAllowed {
        id: String,
        field: &'static str,
        allowed: &'static str,
    },
    #[error("region '{id}': {field} is missing")]
    Missing { id: String, field: &'static str },
    #[error("region '{id}': {field} '{value}' {reason}")]
    BadNumber {
        id: String,
        field: &'static str,
        value: String,
        reason: String,
    },
    #[error("region '{id}': aliases form a cycle ({chain})")]
    AliasCycle { id: String, chain: String },
    #[error("region '{id}': {source}")]
    Tree {
        id: String,
        #[source]
        source: MemoryError,
    },
    #[error("address space '{name}': root '{root}' is not defined")]
    MissingRoot { name: String, root: String },
    #[error("address space '{name}' is defined more than once")]
    DuplicateSpace { name: String },
    #[error("address space '{name}': unassigned must be \"zero\" or \"ones\", not '{value}'")]
    BadUnassigned { name: String, value: String },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MapSpec {
    #[serde(default)]
    region: Vec<RegionSpec>,
    #[serde(default)]
    address_space: Vec<SpaceSpec>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Number {
    Int(i64),
    Text(String),
}

impl std::fmt::Display for Number {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Number::Int(i) => write!(f, "{i}"),
            Number::Text(s) => write!(f, "{s}"),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RegionSpec {
    id: String,
    name: Option<String>,
    kind: String,
    size: Option<Number>,
    target: Option<String>,
    offset: Option<Number>,
    parent: Option<String>,
    addr: Option<Number>,
    priority: Option<i64>,
    enabled: Option<bool>,
    readonly: Option<bool>,
    romd: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SpaceSpec {
    name: String,
    root: String,
    unassigned: Option<String>,
}

/// Parses a size or address: a TOML integer, or a string in decimal, hex
/// (`0x`), binary (`0b`), a power of two (`2^N`), or with a binary suffix
/// (`K`, `M`, `G`, `T`). Underscores are ignored.
pub fn parse_number(text: &str) -> Result<u128, String> {
    let t: String = text.trim().chars().filter(|c| *c != '_').collect();
    if t.is_empty() {
        return Err("is empty".into());
    }
    let bad = || "is not a number (use 4096, \"0x1000\", \"2^64\" or \"64K\")".to_string();
    if let Some(exp) = t.strip_prefix("2^") {
        let exp: u32 = exp.parse().map_err(|_| bad())?;
        if exp > 64 {
            return Err("is larger than 2^64".into());
        }
        return Ok(1u128 << exp);
    }
    let (digits, radix) = if let Some(h) = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        (h.to_string(), 16)
    } else if let Some(b) = t.strip_prefix("0b") {
        (b.to_string(), 2)
    } else {
        (t.clone(), 10)
    };
    let (digits, scale) = if radix == 10 {
        match digits.chars().last().map(|c| c.to_ascii_uppercase()) {
            Some('K') => (&digits[..digits.len() - 1], 1u128 << 10),
            Some('M') => (&digits[..digits.len() - 1], 1u128 << 20),
            Some('G') => (&digits[..digits.len() - 1], 1u128 << 30),
            Some('T') => (&digits[..digits.len() - 1], 1u128 << 40),
            _ => (digits.as_str(), 1),
        }
    } else {
        (digits.as_str(), 1)
    };
    if digits.is_empty() || digits.starts_with('+') || digits.starts_with('-') {
        return Err(bad());
    }
    let value = u128::from_str_radix(digits, radix).map_err(|_| bad())?;
    value
        .checked_mul(scale)
        .filter(|v| *v <= SIZE_2_64)
        .ok_or_else(|| "is larger than 2^64".into())
}

fn number(id: &str, field: &'static str, n: &Number) -> Result<u128, MapError> {
    let bad = |reason: String| MapError::BadNumber {
        id: id.to_string(),
        field,
        value: n.to_string(),
        reason,
    };
    match n {
        Number::Int(i) => u128::try_from(*i).map_err(|_| bad("is negative".into())),
        Number::Text(s) => parse_number(s).map_err(bad),
    }
}

/// A number that must fit 64 bits (addresses, offsets, RAM sizes).
fn number64(id: &str, field: &'static str, n: &Number) -> Result<u64, MapError> {
    let v = number(id, field, n)?;
    u64::try_from(v).map_err(|_| MapError::BadNumber {
        id: id.to_string(),
        field,
        value: n.to_string(),
        reason: "must be below 2^64".into(),
    })
}

fn kind_of(spec: &RegionSpec) -> Result<RegionKind, MapError> {
    Ok(match spec.kind.as_str() {
        "container" => RegionKind::Container,
        "ram" => RegionKind::Ram,
        "rom" => RegionKind::Rom,
        "romd" => RegionKind::Romd,
        "io" => RegionKind::Io,
        "alias" => RegionKind::Alias,
        other => {
            return Err(MapError::UnknownKind {
                id: spec.id.clone(),
                kind: other.to_string(),
            })
        }
    })
}

/// A tree built from a map file with its address spaces.
pub struct LoadedMap {
    pub tree: MemoryTree,
    /// Region ids by the `id` used in the file.
    pub ids: HashMap<String, RegionId>,
    /// The address spaces, in file order.
    pub spaces: Vec<AddressSpace>,
}

/// The largest map file read: thousands of regions fit in far less; a
/// larger file is not a map file.
pub const MAP_FILE_MAX_SIZE: u64 = 4 << 20;

/// Reads and builds a map file (a regular file of at most
/// [`MAP_FILE_MAX_SIZE`] bytes).
pub fn load_file(path: &Path) -> Result<LoadedMap, MapError> {
    let text = crate::vmm::host_file::read_regular_to_string(
        path,
        MAP_FILE_MAX_SIZE,
        crate::vmm::host_file::Symlinks::Follow,
    )
    .map_err(|e| MapError::Read {
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    load_str(&text)
}

/// Builds a map from TOML text.
pub fn load_str(text: &str) -> Result<LoadedMap, MapError> {
    let spec: MapSpec = toml::from_str(text).map_err(|e| MapError::Syntax(e.to_string()))?;
    build(&spec)
}

fn build(spec: &MapSpec) -> Result<LoadedMap, MapError> {
    // Check every region on its own, and the references between them,
    // before creating anything.
    let mut by_id: HashMap<&str, usize> = HashMap::new();
    let mut kinds = Vec::with_capacity(spec.region.len());
    for (i, r) in spec.region.iter().enumerate() {
        if r.id.is_empty() {
            return Err(MapError::EmptyId { id: r.id.clone() });
        }
        if by_id.insert(r.id.as_str(), i).is_some() {
            return Err(MapError::DuplicateId { id: r.id.clone() });
        }
        let kind = kind_of(r)?;
        check_fields(r, kind)?;
        kinds.push(kind);
    }
    for r in &spec.region {
        if let Some(parent) = &r.parent {
            if !by_id.contains_key(parent.as_str()) {
                return Err(MapError::MissingParent {
                    id: r.id.clone(),
                    parent: parent.clone(),
                });
            }
        }
        if let Some(target) = &r.target {
            if !by_id.contains_key(target.as_str()) {
                return Err(MapError::MissingTarget {
                    id: r.id.clone(),
                    target: target.clone(),
                });
            }
        }
    }

    let mut tree = MemoryTree::new();
    let mut ids: HashMap<String, RegionId> = HashMap::new();
    let built = tree.transaction(|tree| -> Result<(), MapError> {
        for i in 0..spec.region.len() {
            create(tree, spec, &by_id, &kinds, i, &mut ids, &mut Vec::new())?;
        }
        for r in &spec.region {
            let id = ids[&r.id];
            let wrap = |source| MapError::Tree {
                id: r.id.clone(),
                source,
            };
            if let Some(v) = r.enabled {
                tree.set_enabled(id, v).map_err(wrap)?;
            }
            if let Some(v) = r.readonly {
                tree.set_readonly(id, v).map_err(wrap)?;
            }
            if let Some(v) = r.romd {
                tree.set_romd_mode(id, v).map_err(wrap)?;
            }
            if let Some(parent) = &r.parent {
                let addr = match &r.addr {
                    Some(a) => number64(&r.id, "addr", a)?,
                    None => 0,
                };
                let priority = r.priority.unwrap_or(0);
                let priority = i32::try_from(priority).map_err(|_| MapError::BadNumber {
                    id: r.id.clone(),
                    field: "priority",
                    value: priority.to_string(),
                    reason: "does not fit 32 bits".into(),
                })?;
                tree.add_subregion_overlap(ids[parent], addr, id, priority)
                    .map_err(wrap)?;
            }
        }
        Ok(())
    });
    built?;

    let mut spaces: Vec<AddressSpace> = Vec::new();
    for s in &spec.address_space {
        if spaces.iter().any(|x| x.name() == s.name) {
            return Err(MapError::DuplicateSpace {
                name: s.name.clone(),
            });
        }
        let root = *ids.get(&s.root).ok_or_else(|| MapError::MissingRoot {
            name: s.name.clone(),
            root: s.root.clone(),
        })?;
        let unassigned = match s.unassigned.as_deref() {
            None if s.name == "I/O" => Unassigned::AllOnes,
            None | Some("zero") => Unassigned::Zero,
            Some("ones") => Unassigned::AllOnes,
            Some(other) => {
                return Err(MapError::BadUnassigned {
                    name: s.name.clone(),
                    value: other.to_string(),
                })
            }
        };
        let space = tree
            .add_address_space(&s.name, root, unassigned)
            .map_err(|source| MapError::Tree {
                id: s.root.clone(),
                source,
            })?;
        spaces.push(space);
    }
    Ok(LoadedMap { tree, ids, spaces })
}

/// Fields that only some kinds take, and the ones every kind needs.
fn check_fields(r: &RegionSpec, kind: RegionKind) -> Result<(), MapError> {
    let not_allowed = |field, allowed| MapError::FieldNotAllowed {
        id: r.id.clone(),
        field,
        allowed,
    };
    if kind != RegionKind::Alias {
        if r.target.is_some() {
            return Err(not_allowed("target", "alias"));
        }
        if r.offset.is_some() {
            return Err(not_allowed("offset", "alias"));
        }
    } else if r.target.is_none() {
        return Err(MapError::NoTarget { id: r.id.clone() });
    }
    if kind != RegionKind::Romd && r.romd.is_some() {
        return Err(not_allowed("romd", "romd"));
    }
    if r.parent.is_none() && (r.addr.is_some() || r.priority.is_some()) {
        return Err(not_allowed(
            if r.addr.is_some() { "addr" } else { "priority" },
            "added (with a parent)",
        ));
    }
    if r.size.is_none() {
        return Err(MapError::Missing {
            id: r.id.clone(),
            field: "size",
        });
    }
    Ok(())
}

/// Creates region `i`, creating its alias target first when it comes later
/// in the file. `chain` holds the aliases being created, to report cycles.
fn create(
    tree: &mut MemoryTree,
    spec: &MapSpec,
    by_id: &HashMap<&str, usize>,
    kinds: &[RegionKind],
    i: usize,
    ids: &mut HashMap<String, RegionId>,
    chain: &mut Vec<usize>,
) -> Result<RegionId, MapError> {
    let r = &spec.region[i];
    if let Some(id) = ids.get(&r.id) {
        return Ok(*id);
    }
    let name = r.name.as_deref().unwrap_or(&r.id);
    let size_spec = r.size.as_ref().ok_or_else(|| MapError::Missing {
        id: r.id.clone(),
        field: "size",
    })?;
    let size = number(&r.id, "size", size_spec)?;
    let wrap = |source| MapError::Tree {
        id: r.id.clone(),
        source,
    };
    let ram_size = || {
        u64::try_from(size).map_err(|_| MapError::BadNumber {
            id: r.id.clone(),
            field: "size",
            value: size_spec.to_string(),
            reason: "is too large for memory-backed regions (must be below 2^64)".into(),
        })
    };
    let id = match kinds[i] {
        RegionKind::Container => tree.new_container(name, size).map_err(wrap)?,
        RegionKind::Ram => tree.new_ram(name, ram_size()?).map_err(wrap)?,
        RegionKind::Rom => tree.new_rom(name, ram_size()?).map_err(wrap)?,
        RegionKind::Romd => tree.new_romd(name, ram_size()?, None).map_err(wrap)?,
        RegionKind::Io => tree.new_io(name, size, None).map_err(wrap)?,
        RegionKind::Alias => {
            let target_id = r.target.as_deref().unwrap_or_default();
            let t = by_id[target_id];
            if chain.contains(&t) || t == i {
                let mut names: Vec<&str> =
                    chain.iter().map(|c| spec.region[*c].id.as_str()).collect();
                names.push(&r.id);
                names.push(target_id);
                return Err(MapError::AliasCycle {
                    id: r.id.clone(),
                    chain: names.join(" -> "),
                });
            }
            chain.push(i);
            let target = create(tree, spec, by_id, kinds, t, ids, chain)?;
            chain.pop();
            let offset = match &r.offset {
                Some(o) => number64(&r.id, "offset", o)?,
                None => 0,
            };
            tree.new_alias(name, target, offset, size).map_err(wrap)?
        }
    };
    ids.insert(r.id.clone(), id);
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_in_every_spelling() {
        assert_eq!(parse_number("4096"), Ok(4096));
        assert_eq!(parse_number("0x1000"), Ok(4096));
        assert_eq!(parse_number("0X1_000"), Ok(4096));
        assert_eq!(parse_number("0b1000"), Ok(8));
        assert_eq!(parse_number("2^64"), Ok(SIZE_2_64));
        assert_eq!(parse_number("2^0"), Ok(1));
        assert_eq!(parse_number("64K"), Ok(65536));
        assert_eq!(parse_number("128M"), Ok(128 << 20));
        assert_eq!(parse_number("0x10000000000000000"), Ok(SIZE_2_64));
        assert!(parse_number("0x10000000000000001").is_err());
        assert!(parse_number("2^65").is_err());
        assert!(parse_number("-1").is_err());
        assert!(parse_number("").is_err());
        assert!(parse_number("12Q").is_err());
        assert!(parse_number("K").is_err());
        assert!(parse_number("99999999999999999999999999999999999999999").is_err());
    }

    fn err(text: &str) -> String {
        match load_str(text) {
            Ok(_) => panic!("map loaded but should not have"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn each_mistake_names_the_region() {
        let e = err("[[region]]\nid = \"a\"\nkind = \"flash\"\nsize = 1\n");
        assert!(
            e.contains("'a'") && e.contains("unknown kind 'flash'"),
            "{e}"
        );

        let e = err("[[region]]\nid = \"a\"\nkind = \"ram\"\nsize = 1\n[[region]]\nid = \"a\"\nkind = \"ram\"\nsize = 1\n");
        assert!(e.contains("'a' is defined more than once"), "{e}");

        let e = err("[[region]]\nid = \"a\"\nkind = \"ram\"\nsize = 1\nparent = \"nope\"\n");
        assert!(e.contains("'a'") && e.contains("parent 'nope'"), "{e}");

        let e = err("[[region]]\nid = \"a\"\nkind = \"alias\"\nsize = 1\ntarget = \"nope\"\n");
        assert!(e.contains("'a'") && e.contains("target 'nope'"), "{e}");

        let e = err("[[region]]\nid = \"a\"\nkind = \"ram\"\nsize = \"lots\"\n");
        assert!(e.contains("'a'") && e.contains("size 'lots'"), "{e}");

        let e = err("[[region]]\nid = \"a\"\nkind = \"ram\"\nsize = \"2^64\"\n");
        assert!(e.contains("'a'") && e.contains("too large"), "{e}");

        let e = err("[[region]]\nid = \"a\"\nkind = \"container\"\nsize = 16\nparent = \"b\"\n[[region]]\nid = \"b\"\nkind = \"container\"\nsize = 16\nparent = \"a\"\n");
        assert!(e.contains("cycle"), "{e}");

        let e = err("[[region]]\nid = \"a\"\nkind = \"alias\"\nsize = 16\ntarget = \"b\"\n[[region]]\nid = \"b\"\nkind = \"alias\"\nsize = 16\ntarget = \"a\"\n");
        assert!(e.contains("cycle") && e.contains("a -> b -> a"), "{e}");

        let e = err("[[region]]\nid = \"a\"\nkind = \"ram\"\nsize = 16\ntarget = \"a\"\n");
        assert!(e.contains("'target' is only allowed on alias"), "{e}");

        let e = err("[[region]]\nid = \"a\"\nkind = \"ram\"\nsize = 16\ncolour = \"red\"\n");
        assert!(e.contains("colour"), "{e}");

        let e = err("[[region]]\nid = \"a\"\nkind = \"ram\"\n");
        assert!(e.contains("'a': size is missing"), "{e}");

        let e = err("[[address_space]]\nname = \"memory\"\nroot = \"x\"\n");
        assert!(e.contains("root 'x'"), "{e}");
    }

    #[test]
    fn later_sibling_is_newer_and_alias_targets_may_come_later() {
        let map = load_str(
            r#"
            [[region]]
            id = "sys"
            kind = "container"
            size = "2^64"
            [[region]]
            id = "win"
            kind = "alias"
            target = "ram"
            offset = 16
            size = 16
            parent = "sys"
            [[region]]
            id = "ram"
            kind = "ram"
            size = 64
            parent = "sys"
            [[address_space]]
            name = "memory"
            root = "sys"
            "#,
        )
        .unwrap();
        let view = map.spaces[0].view();
        // "ram" is added after "win" with the same priority, so it wins.
        let r = view.lookup(0).unwrap();
        assert_eq!(r.region, map.ids["ram"]);
        assert_eq!(r.size, 64);
    }
}
