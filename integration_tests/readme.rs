//! The README's walkthrough runs as written: the shell block under "A guest
//! to try the control API, snapshots and restore on" is run with bash from
//! the repository's directory, with the `ember` just built first on PATH.

use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The first ```sh block after `heading` in README.md.
fn block_after(heading: &str) -> String {
    let readme = include_str!("../README.md");
    let start = readme.find(heading).expect("the heading is in README.md");
    let rest = &readme[start..];
    let open = rest.find("```sh\n").expect("a shell block follows") + "```sh\n".len();
    let len = rest[open..].find("```").expect("the block ends");
    rest[open..open + len].to_string()
}

#[test]
fn the_control_api_walkthrough_runs_as_written() {
    let script = block_after("### A guest to try the control API, snapshots and restore on");
    let bin_dir = std::path::Path::new(env!("CARGO_BIN_EXE_ember"))
        .parent()
        .expect("the binary's directory")
        .to_path_buf();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let tmp = std::env::temp_dir().join(format!("ember-readme-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).expect("scratch dir");
    let mut child = Command::new("bash")
        .args(["-euo", "pipefail", "-c", &script])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("PATH", path)
        .env("TMPDIR", &tmp)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group, so a hung run can be ended whole.
        .process_group(0)
        .spawn()
        .expect("run bash");
    // A deadline on a hung walkthrough, not a synchronisation.
    let deadline = Instant::now() + Duration::from_secs(600);
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            // SAFETY: signals the process group we created above.
            unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
            let _ = child.wait();
            panic!("the README walkthrough did not finish");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().expect("output");
    let _ = std::fs::remove_dir_all(&tmp);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert_eq!(stdout.matches("EMBER-TEST: count=").count(), 2, "{stdout}");
    assert!(
        stdout.contains("paused") && stdout.contains("snap1"),
        "{stdout}"
    );
}
