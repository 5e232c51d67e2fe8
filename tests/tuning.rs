//! The host tuning scripts in `tuning/`: each runs with `--dry-run` against a real
//! interface, exits 0, prints its planned writes and changes nothing on the host;
//! `check.sh` prints one table row per knob; the scripts pass `bash -n` and
//! shellcheck (when installed).
//!
//! Nothing here runs a script without `--dry-run`: the tests may run as root.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const SCRIPTS: [&str; 5] = [
    "common.sh",
    "irq-affinity.sh",
    "rss-rps-xps.sh",
    "sysctl.sh",
    "check.sh",
];

/// The sysctls the tuning README promises.
const SYSCTLS: [&str; 10] = [
    "net.core.somaxconn",
    "net.ipv4.tcp_max_syn_backlog",
    "net.core.rmem_max",
    "net.core.wmem_max",
    "net.ipv4.tcp_rmem",
    "net.ipv4.tcp_wmem",
    "net.ipv4.ip_local_port_range",
    "fs.nr_open",
    "net.core.netdev_max_backlog",
    "fs.file-max",
];

fn tuning_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tuning")
}

fn run(script: &str, args: &[&str]) -> Output {
    let out = Command::new("bash")
        .arg(tuning_dir().join(script))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run bash {script}: {e}"));
    println!(
        "$ tuning/{script} {}\nexit: {}\n--- stdout\n{}--- stderr\n{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Worker cores that exist on this host: "0,1" when there are two CPUs, else "0".
fn cores() -> &'static str {
    if Path::new("/sys/devices/system/cpu/cpu1").exists() {
        "0,1"
    } else {
        "0"
    }
}

/// Interfaces to try: `lo`, plus the first device-backed NIC (it has queue IRQs).
fn ifaces() -> Vec<String> {
    let mut v = vec!["lo".to_owned()];
    if let Ok(rd) = std::fs::read_dir("/sys/class/net") {
        let mut nics: Vec<String> = rd
            .flatten()
            .filter(|e| e.path().join("device").exists())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        nics.sort();
        v.extend(nics.into_iter().take(1));
    }
    v
}

fn read(path: &Path) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

/// Everything a tuning script could change, so before/after can be compared.
fn host_state() -> BTreeMap<String, Option<String>> {
    let mut m = BTreeMap::new();
    let mut add = |p: PathBuf| {
        let v = read(&p);
        m.insert(p.display().to_string(), v);
    };
    for k in SYSCTLS {
        add(PathBuf::from("/proc/sys").join(k.replace('.', "/")));
    }
    for f in [
        "/etc/sysctl.d/90-lakegate.conf",
        "/etc/default/irqbalance",
        "/etc/sysconfig/irqbalance",
    ] {
        add(PathBuf::from(f));
    }
    if let Ok(rd) = std::fs::read_dir("/proc/irq") {
        for e in rd.flatten() {
            add(e.path().join("smp_affinity_list"));
        }
    }
    if let Ok(rd) = std::fs::read_dir("/sys/class/net") {
        for e in rd.flatten() {
            if let Ok(qs) = std::fs::read_dir(e.path().join("queues")) {
                for q in qs.flatten() {
                    add(q.path().join("rps_cpus"));
                    add(q.path().join("xps_cpus"));
                }
            }
        }
    }
    m
}

fn assert_unchanged(before: &BTreeMap<String, Option<String>>, what: &str) {
    let after = host_state();
    let changed: Vec<_> = before
        .iter()
        .filter(|(k, v)| after.get(*k) != Some(*v))
        .map(|(k, v)| format!("{k}: {v:?} -> {:?}", after.get(k)))
        .collect();
    assert!(
        changed.is_empty(),
        "{what} changed the host:\n{}",
        changed.join("\n")
    );
}

fn assert_dry_run_ok(o: &Output, what: &str) -> String {
    assert!(o.status.success(), "{what} failed: {o:?}");
    let s = stdout(o);
    // A missing interface skips before the banner; everything else announces it.
    assert!(
        s.contains("dry run: nothing will be changed") || s.starts_with("skipped:"),
        "{what}: no dry-run banner:\n{s}"
    );
    s
}

#[test]
fn sysctl_dry_run_plans_every_knob_and_changes_nothing() {
    let before = host_state();
    let o = run("sysctl.sh", &["--dry-run"]);
    let s = assert_dry_run_ok(&o, "sysctl.sh --dry-run");
    assert!(
        s.contains("would write /etc/sysctl.d/90-lakegate.conf")
            || s.contains("ok: /etc/sysctl.d/90-lakegate.conf is up to date"),
        "no plan for the sysctl.d file:\n{s}"
    );
    for k in SYSCTLS {
        let path = format!("/proc/sys/{}", k.replace('.', "/"));
        if !Path::new(&path).exists() {
            assert!(
                s.contains(&format!("skipped: {k}")),
                "{k} neither planned nor skipped"
            );
            continue;
        }
        assert!(
            s.contains(&format!("{k} = ")),
            "{k} missing from the planned file"
        );
        assert!(
            s.lines()
                .any(|l| l.contains(&path)
                    && (l.starts_with("would write '") || l.starts_with("ok: "))),
            "no planned write or ok line for {path}"
        );
    }
    assert!(s.contains("LimitNOFILE"), "no LimitNOFILE note");
    assert_unchanged(&before, "sysctl.sh --dry-run");
}

#[test]
fn irq_affinity_dry_run_changes_nothing() {
    for iface in ifaces() {
        let before = host_state();
        let o = run(
            "irq-affinity.sh",
            &["--iface", &iface, "--cores", cores(), "--dry-run"],
        );
        let s = assert_dry_run_ok(&o, &format!("irq-affinity.sh --iface {iface}"));
        if iface == "lo" {
            assert!(s.contains("skipped: lo has no queue IRQs"), "{s}");
        } else if s.contains("queue IRQ(s)") {
            // A real NIC: each IRQ gets a planned (or already correct) affinity.
            assert!(s.contains("smp_affinity_list"), "no affinity plan:\n{s}");
            assert!(
                s.contains("irqbalance"),
                "nothing said about irqbalance:\n{s}"
            );
        }
        assert_unchanged(
            &before,
            &format!("irq-affinity.sh --iface {iface} --dry-run"),
        );
    }
}

#[test]
fn rss_rps_xps_dry_run_changes_nothing() {
    for iface in ifaces() {
        let before = host_state();
        let o = run(
            "rss-rps-xps.sh",
            &["--iface", &iface, "--cores", cores(), "--dry-run"],
        );
        let s = assert_dry_run_ok(&o, &format!("rss-rps-xps.sh --iface {iface}"));
        // Channels: planned, already right, or skipped with the reason.
        assert!(
            s.contains("would run: ethtool -L")
                || s.contains("combined channels =")
                || s.contains("skipped: channels:"),
            "nothing said about channels:\n{s}"
        );
        assert!(s.contains("RPS:"), "nothing said about RPS:\n{s}");
        assert!(s.contains("rps_cpus"), "no RPS plan for any queue:\n{s}");
        assert!(
            s.contains("xps_cpus") || s.contains("skipped: XPS"),
            "nothing said about XPS:\n{s}"
        );
        assert_unchanged(
            &before,
            &format!("rss-rps-xps.sh --iface {iface} --dry-run"),
        );
    }
}

#[test]
fn missing_interface_is_skipped_not_fatal() {
    for script in ["irq-affinity.sh", "rss-rps-xps.sh"] {
        let o = run(
            script,
            &["--iface", "lgnope0", "--cores", cores(), "--dry-run"],
        );
        assert!(o.status.success(), "{script} failed on a missing NIC");
        assert!(
            stdout(&o).contains("skipped: interface lgnope0 does not exist"),
            "{script}: no skip message"
        );
    }
}

#[test]
fn bad_arguments_exit_1() {
    for args in [
        &["--iface", "lo", "--cores", "zero", "--dry-run"][..],
        &["--iface", "lo", "--cores", "99999", "--dry-run"][..],
        &["--iface", "lo", "--dry-run"][..],
        &["--bogus"][..],
    ] {
        for script in ["irq-affinity.sh", "rss-rps-xps.sh"] {
            let o = run(script, args);
            assert_eq!(o.status.code(), Some(1), "{script} {args:?}");
            assert!(!o.stderr.is_empty(), "{script} {args:?}: no error message");
        }
    }
}

#[test]
fn check_prints_a_row_per_knob() {
    let before = host_state();
    let o = run("check.sh", &["--iface", "lo", "--cores", cores()]);
    assert!(o.status.success(), "check.sh failed");
    let s = stdout(&o);
    let rows: Vec<Vec<&str>> = s.lines().map(|l| l.split_whitespace().collect()).collect();
    assert!(
        rows.iter()
            .any(|r| r == &["KNOB", "CURRENT", "RECOMMENDED", "STATUS"]),
        "no table header:\n{s}"
    );
    let status_of = |knob: &str| -> Option<&str> {
        s.lines()
            .find(|l| l.starts_with(&format!("{knob} ")))
            .and_then(|l| l.split_whitespace().last())
    };
    let mut knobs: Vec<&str> = SYSCTLS.to_vec();
    knobs.extend([
        "kernel.io_uring_disabled",
        "lakegate.service LimitNOFILE",
        "lakegate.service LimitMEMLOCK",
        "lo combined channels",
        "lo rx-0 rps_cpus",
        "irqbalance",
        "cmdline isolcpus",
        "cmdline nohz_full",
    ]);
    let mut diffs = 0;
    for knob in knobs {
        let st = status_of(knob).unwrap_or_else(|| panic!("no row for {knob}:\n{s}"));
        assert!(
            ["OK", "DIFF", "SKIP", "INFO"].contains(&st),
            "row {knob} has status {st}"
        );
        if st == "DIFF" {
            diffs += 1;
        }
    }
    for k in SYSCTLS {
        assert_ne!(
            status_of(k),
            Some("INFO"),
            "{k} must be checked, not advised"
        );
    }
    // --strict fails exactly when something differs.
    let strict = run(
        "check.sh",
        &["--iface", "lo", "--cores", cores(), "--strict"],
    );
    let any_diff = stdout(&strict)
        .lines()
        .any(|l| l.split_whitespace().last() == Some("DIFF"));
    assert_eq!(
        strict.status.code(),
        Some(if any_diff { 1 } else { 0 }),
        "--strict exit code vs DIFF rows (sysctl DIFFs seen: {diffs})"
    );
    assert_unchanged(&before, "check.sh");
}

#[test]
fn scripts_pass_bash_n_and_shellcheck() {
    for script in SCRIPTS {
        let path = tuning_dir().join(script);
        let o = Command::new("bash")
            .arg("-n")
            .arg(&path)
            .output()
            .expect("bash -n");
        assert!(
            o.status.success(),
            "bash -n {script}:\n{}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    let Ok(o) = Command::new("shellcheck").arg("--version").output() else {
        println!("skipped: shellcheck not installed");
        return;
    };
    assert!(o.status.success());
    let o = Command::new("shellcheck")
        .arg("-x")
        .args(SCRIPTS.iter().map(|s| tuning_dir().join(s)))
        .output()
        .expect("run shellcheck");
    assert!(
        o.status.success(),
        "shellcheck:\n{}",
        String::from_utf8_lossy(&o.stdout)
    );
}
