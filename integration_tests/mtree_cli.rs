//! `ember mtree` on the shipped maps, compared as whole texts, and its error
//! paths: one clear message naming the region, a non-zero exit, no panic.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn ember(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ember"))
        .args(args)
        .current_dir(root())
        .output()
        .expect("run ember")
}

fn expected(name: &str) -> String {
    let path = root().join("integration_tests/expected").join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn check_map(map: &str, flags: &[&str], golden: &str) {
    let path = format!("resources/maps/{map}.toml");
    let mut args = vec!["mtree", "--map", path.as_str()];
    args.extend_from_slice(flags);
    let out = ember(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let want = expected(golden);
    if text != want {
        panic!("ember {args:?} printed:\n{text}\nexpected ({golden}):\n{want}");
    }
}

#[test]
fn x86_pc_tree() {
    check_map("x86-pc", &[], "x86-pc.mtree");
}

#[test]
fn x86_pc_flat() {
    check_map("x86-pc", &["-f"], "x86-pc.mtree-f");
}

#[test]
fn x86_pc_tree_with_disabled() {
    check_map("x86-pc", &["-D"], "x86-pc.mtree-D");
}

#[test]
fn riscv_virt_tree() {
    check_map("riscv-virt", &[], "riscv-virt.mtree");
}

#[test]
fn riscv_virt_flat() {
    check_map("riscv-virt", &["--flatview"], "riscv-virt.mtree-f");
}

/// Writes `text` to a temporary map file and runs `ember mtree` on it.
fn run_map(name: &str, text: &str) -> Output {
    let dir = std::env::temp_dir().join(format!("ember-mtree-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text).unwrap();
    ember(&["mtree", "--map", path.to_str().unwrap()])
}

fn assert_fails(name: &str, text: &str, needles: &[&str]) {
    let out = run_map(name, text);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{name}: ember accepted the map");
    assert!(!stderr.contains("panicked"), "{name}: {stderr}");
    // Syntax errors quote the offending line; everything else is one line.
    if name != "syntax" {
        assert_eq!(
            stderr.trim_end().lines().count(),
            1,
            "{name}: one line expected: {stderr}"
        );
    }
    for needle in needles {
        assert!(
            stderr.contains(needle),
            "{name}: {needle:?} not in {stderr}"
        );
    }
    assert!(
        out.stdout.is_empty(),
        "{name}: printed a map despite the error"
    );
}

const RAM_A: &str = "[[region]]\nid = \"a\"\nkind = \"ram\"\nsize = 4096\n";

#[test]
fn errors_name_the_region() {
    assert_fails(
        "unknown-kind",
        "[[region]]\nid = \"dev\"\nkind = \"flash\"\nsize = 1\n",
        &["'dev'", "unknown kind 'flash'"],
    );
    assert_fails(
        "duplicate",
        &format!("{RAM_A}{RAM_A}"),
        &["'a'", "more than once"],
    );
    assert_fails(
        "two-parents",
        &format!("[[region]]\nid = \"p\"\nkind = \"container\"\nsize = 8192\n[[region]]\nid = \"q\"\nkind = \"container\"\nsize = 8192\n{RAM_A}parent = \"p\"\n{RAM_A}parent = \"q\"\n"),
        &["'a'", "one parent"],
    );
    assert_fails(
        "missing-parent",
        &format!("{RAM_A}parent = \"sys\"\n"),
        &["'a'", "parent 'sys'"],
    );
    assert_fails(
        "missing-target",
        "[[region]]\nid = \"w\"\nkind = \"alias\"\ntarget = \"x\"\nsize = 4\n",
        &["'w'", "target 'x'"],
    );
    assert_fails(
        "cycle",
        "[[region]]\nid = \"c1\"\nkind = \"container\"\nsize = 16\nparent = \"c2\"\n[[region]]\nid = \"c2\"\nkind = \"container\"\nsize = 16\nparent = \"c1\"\n",
        &["'c2'", "cycle"],
    );
    assert_fails(
        "alias-cycle",
        "[[region]]\nid = \"c\"\nkind = \"container\"\nsize = 16\n[[region]]\nid = \"w\"\nkind = \"alias\"\ntarget = \"c\"\nsize = 16\nparent = \"c\"\n",
        &["'w'", "cycle"],
    );
    assert_fails(
        "bad-size",
        "[[region]]\nid = \"r\"\nkind = \"ram\"\nsize = \"12 MB\"\n",
        &["'r'", "size '12 MB'"],
    );
    assert_fails(
        "huge-size",
        "[[region]]\nid = \"r\"\nkind = \"io\"\nsize = \"2^65\"\n",
        &["'r'", "larger than 2^64"],
    );
    assert_fails(
        "negative-size",
        "[[region]]\nid = \"r\"\nkind = \"io\"\nsize = -4\n",
        &["'r'", "negative"],
    );
    assert_fails("syntax", "[[region]\nid = 1\n", &["TOML"]);
}

#[test]
fn missing_file_is_a_clear_error() {
    let out = ember(&["mtree", "--map", "/nonexistent/map.toml"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("/nonexistent/map.toml"), "{stderr}");
    assert!(Path::new(env!("CARGO_BIN_EXE_ember")).exists());
}
