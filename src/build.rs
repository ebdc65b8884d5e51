//! Records the commit the binary is built from, for `slo-probe --version`: `SLO_PROBE_COMMIT`
//! when set (a build from a source archive, a container build without `.git`), else `git`,
//! else `unknown`. (Uncommitted changes are not marked: telling would mean re-running this
//! script on every change of the index, and rebuilding the crate with it.)

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn main() {
    println!("cargo::rerun-if-env-changed=SLO_PROBE_COMMIT");
    let commit = std::env::var("SLO_PROBE_COMMIT").ok().or_else(|| {
        // Run again when HEAD moves: a checkout, or a commit on the current branch (its ref
        // file, when it is a file: a path that does not exist would make cargo run this script
        // on every build).
        let mut watch = vec![git(&["rev-parse", "--git-path", "HEAD"])];
        if let Some(head) = git(&["symbolic-ref", "-q", "HEAD"]) {
            watch.push(git(&["rev-parse", "--git-path", &head]));
        }
        for p in watch.into_iter().flatten() {
            if std::path::Path::new(&p).is_file() {
                println!("cargo::rerun-if-changed={p}");
            }
        }
        git(&["rev-parse", "--short=12", "HEAD"])
    });
    println!(
        "cargo::rustc-env=SLO_PROBE_COMMIT={}",
        commit.unwrap_or_else(|| "unknown".into())
    );
}
