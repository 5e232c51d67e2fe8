//! The systemd unit in `systemd/` is valid and hardened.
//!
//! - `systemd-analyze verify` on the unit (ExecStart rewritten to the binary cargo
//!   built, in a temporary copy, since verify insists the executable exists) must
//!   print nothing on stderr. verify exits 0 even on unknown keys, so stderr is the
//!   judge.
//! - `systemd-analyze security --offline=true` must rate the unit 2.0 or below.
//!
//! Two more tests feed deliberately broken units through the same checks, so a check
//! that can no longer fail is caught. Without `systemd-analyze` every test prints
//! "skipped: systemd-analyze not installed" and passes.

use std::path::{Path, PathBuf};
use std::process::Command;

const MAX_EXPOSURE: f64 = 2.0;

fn unit_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd/lakegate.service")
}

fn have_systemd_analyze() -> bool {
    match Command::new("systemd-analyze").arg("--version").output() {
        Ok(o) => o.status.success(),
        Err(_) => {
            // .ci/run installs it: under CI its absence is a failure, not a skip.
            assert!(
                std::env::var_os("CI").is_none(),
                "systemd-analyze is missing under CI"
            );
            println!("skipped: systemd-analyze not installed");
            false
        }
    }
}

/// The unit text with every `/usr/bin/lakegate` replaced by the binary cargo built.
fn unit_for_this_build(text: &str) -> String {
    let bin = env!("CARGO_BIN_EXE_lakegate");
    // `%` starts a specifier in unit files; whitespace would split the command line.
    let mut escaped = bin.replace('%', "%%");
    if escaped.chars().any(char::is_whitespace) {
        escaped = format!("\"{escaped}\"");
    }
    assert!(
        text.contains("/usr/bin/lakegate"),
        "unit has no /usr/bin/lakegate"
    );
    text.replace("/usr/bin/lakegate", &escaped)
}

/// Writes `text` as `lakegate.service` in a fresh temporary directory.
fn write_unit(text: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("lakegate.service");
    std::fs::write(&path, text).expect("write unit copy");
    (dir, path)
}

/// Runs `systemd-analyze verify` and returns its non-empty stderr lines.
fn verify_complaints(unit: &Path) -> Vec<String> {
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(unit)
        .env("SYSTEMD_LOG_COLOR", "0")
        .output()
        .expect("run systemd-analyze verify");
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!(
        "$ systemd-analyze verify {}\nexit: {}\nstderr:\n{stderr}",
        unit.display(),
        out.status
    );
    stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_owned)
        .collect()
}

/// Runs `systemd-analyze security --offline=true` and returns the overall exposure.
fn exposure(unit: &Path) -> f64 {
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--no-pager"])
        .arg(unit)
        .env("SYSTEMD_LOG_COLOR", "0")
        .output()
        .expect("run systemd-analyze security");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let all = format!("{stdout}{stderr}");
    let score = parse_exposure(&all).unwrap_or_else(|| {
        panic!(
            "no \"Overall exposure level\" line in the output of \
             systemd-analyze security (exit {}):\n{all}",
            out.status
        )
    });
    println!(
        "$ systemd-analyze security --offline=true {}\n{}",
        unit.display(),
        all.lines()
            .find(|l| l.contains("Overall exposure level"))
            .unwrap_or_default()
    );
    score
}

/// `→ Overall exposure level for lakegate.service: 1.5 OK 🙂` → 1.5
fn parse_exposure(output: &str) -> Option<f64> {
    let line = output
        .lines()
        .find(|l| l.contains("Overall exposure level"))?;
    let (_, rest) = line.rsplit_once(".service:")?;
    rest.split_whitespace().next()?.parse().ok()
}

#[test]
fn parse_exposure_reads_the_summary_line() {
    let out = "✗ UMask=   Files created by service are group-readable by default   0.1\n\n\
               → Overall exposure level for lakegate.service: 1.5 OK 🙂\n";
    assert_eq!(parse_exposure(out), Some(1.5));
    assert_eq!(
        parse_exposure("→ Overall exposure level for x.service: 9.6 UNSAFE 😨"),
        Some(9.6)
    );
    assert_eq!(parse_exposure("nothing here"), None);
}

#[test]
fn unit_verifies_without_complaints() {
    if !have_systemd_analyze() {
        return;
    }
    let text = std::fs::read_to_string(unit_path()).expect("read systemd/lakegate.service");
    let (_dir, copy) = write_unit(&unit_for_this_build(&text));
    let complaints = verify_complaints(&copy);
    assert!(
        complaints.is_empty(),
        "systemd-analyze verify complained about systemd/lakegate.service:\n{}",
        complaints.join("\n")
    );
}

#[test]
fn unit_exposure_is_at_most_two() {
    if !have_systemd_analyze() {
        return;
    }
    let score = exposure(&unit_path());
    assert!(
        score <= MAX_EXPOSURE,
        "systemd-analyze security rates systemd/lakegate.service {score}, \
         above {MAX_EXPOSURE}: tighten the sandbox"
    );
}

#[test]
fn unit_keeps_what_the_app_needs() {
    let text = std::fs::read_to_string(unit_path()).expect("read systemd/lakegate.service");
    let settings: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .collect();
    for want in [
        "Type=notify",
        "ExecStart=/usr/bin/lakegate serve --config /etc/lakegate/lakegate.toml",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "Restart=on-failure",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ReadWritePaths=/var/lib/lakegate",
        "CapabilityBoundingSet=CAP_NET_BIND_SERVICE",
        "AmbientCapabilities=CAP_NET_BIND_SERVICE",
        "LimitMEMLOCK=infinity",
        "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
    ] {
        assert!(settings.contains(&want), "unit lacks {want:?}");
    }
    assert!(settings.iter().any(|l| l.starts_with("WatchdogSec=")));
    assert!(settings.iter().any(|l| l.starts_with("LimitNOFILE=")));
    let filters: String = settings
        .iter()
        .filter(|l| l.starts_with("SystemCallFilter="))
        .map(|l| format!("{l}\n"))
        .collect();
    for call in ["io_uring_setup", "io_uring_enter", "io_uring_register"] {
        assert!(
            filters.contains(call),
            "SystemCallFilter does not allow {call}"
        );
    }
    // Core pinning needs sched_setaffinity, which lives in @resources.
    assert!(!filters.contains("~@resources") && !filters.contains(" @resources"));
}

#[test]
fn verify_check_catches_an_unknown_key() {
    if !have_systemd_analyze() {
        return;
    }
    let text = std::fs::read_to_string(unit_path()).expect("read systemd/lakegate.service");
    let broken = unit_for_this_build(&text).replace(
        "[Service]\n",
        "[Service]\nNoNewPrivilege=yes\n", // misspelt: a real mistake verify must catch
    );
    let (_dir, copy) = write_unit(&broken);
    let complaints = verify_complaints(&copy);
    assert!(
        complaints.iter().any(|l| l.contains("NoNewPrivilege")),
        "systemd-analyze verify said nothing about an unknown key: {complaints:?}"
    );
}

#[test]
fn security_check_catches_a_bare_unit() {
    if !have_systemd_analyze() {
        return;
    }
    let (_dir, copy) = write_unit(
        "[Unit]\nDescription=bare\n[Service]\nType=notify\nExecStart=/usr/bin/lakegate serve\n",
    );
    let score = exposure(&copy);
    assert!(
        score > MAX_EXPOSURE,
        "a unit without sandboxing rated {score}: the exposure parse is wrong"
    );
}
