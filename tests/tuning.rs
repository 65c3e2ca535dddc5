//! The files in tuning/ and conf/ringlb.service, checked against this kernel and systemd.
//!
//! Nothing here changes the host: sysctls are only loaded inside a network namespace the test
//! creates (and only keys that belong to that namespace), host values are compared before and
//! after, `make tune-apply` runs with DESTDIR only, and the systemd unit is only verified.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::have;
use ringlb::control::hostcheck::{evaluate, parse_port_range, HostLoad, HostSnapshot, Rlimit, IORING_MAX_FIXED_FILES};

/// Profiles, their target N, and the fewest workers each one is written for.
const PROFILES: [(&str, u64, usize); 3] = [("10k", 10_000, 1), ("100k", 100_000, 1), ("1m", 1_000_000, 3)];

/// Keys every profile must set.
const REQUIRED: [&str; 16] = [
    "net.core.somaxconn",
    "net.ipv4.tcp_max_syn_backlog",
    "net.core.netdev_max_backlog",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.tcp_tw_reuse",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_syncookies",
    "fs.file-max",
    "fs.nr_open",
    "fs.pipe-user-pages-soft",
    "net.core.rmem_max",
    "net.core.wmem_max",
    "net.ipv4.tcp_rmem",
    "net.ipv4.tcp_wmem",
    "net.ipv4.ip_nonlocal_bind",
    "net.ipv6.ip_nonlocal_bind",
];

/// Capacities that must not shrink from a smaller profile to a larger one.
const GROWING: [&str; 6] = [
    "net.core.somaxconn",
    "net.ipv4.tcp_max_syn_backlog",
    "net.core.netdev_max_backlog",
    "fs.file-max",
    "fs.nr_open",
    "fs.pipe-user-pages-soft",
];

const CONNTRACK_MAX: &str = "net.netfilter.nf_conntrack_max";

/// One `key = value` line of a sysctl.d file.
#[derive(Debug, Clone)]
struct Setting {
    key: String,
    value: String,
    /// Written with a leading `-`: failures to set it are ignored.
    ignore_failure: bool,
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn profile_path(name: &str) -> PathBuf {
    repo().join("tuning").join(format!("{name}.conf"))
}

fn conntrack_path(name: &str) -> PathBuf {
    repo().join("tuning/conntrack").join(format!("{name}.conf"))
}

/// Parses a sysctl.d file; every setting must come right after a comment explaining it.
fn parse_sysctl_file(path: &Path) -> Vec<Setting> {
    let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut settings = Vec::new();
    let mut previous = "";
    for (number, line) in text.lines().enumerate() {
        let at = format!("{}:{}", path.display(), number + 1);
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') || trimmed.starts_with(';') {
            previous = trimmed;
            continue;
        }
        let is_comment = previous.starts_with('#') || previous.starts_with(';');
        let follows_setting = settings.last().is_some_and(|s: &Setting| previous.contains(&s.key));
        assert!(is_comment || follows_setting, "{at}: setting without a comment above it");
        let (ignore_failure, assignment) = match trimmed.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, trimmed),
        };
        let (key, value) = assignment.split_once('=').unwrap_or_else(|| panic!("{at}: no '='"));
        let key = key.trim();
        assert!(
            !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)),
            "{at}: bad key {key:?}"
        );
        let value = value.split_whitespace().collect::<Vec<_>>().join(" ");
        assert!(!value.is_empty(), "{at}: empty value");
        settings.push(Setting { key: key.to_string(), value, ignore_failure });
        previous = trimmed;
    }
    settings
}

fn profile(name: &str) -> BTreeMap<String, Setting> {
    let mut map = BTreeMap::new();
    for s in parse_sysctl_file(&profile_path(name)) {
        let key = s.key.clone();
        assert!(map.insert(key.clone(), s).is_none(), "{name}: {key} set twice");
    }
    map
}

fn number(settings: &BTreeMap<String, Setting>, key: &str) -> u64 {
    let setting = settings.get(key).unwrap_or_else(|| panic!("{key} missing"));
    setting.value.parse().unwrap_or_else(|_| panic!("{key} = {} is not a number", setting.value))
}

fn proc_path(key: &str) -> PathBuf {
    Path::new("/proc/sys").join(key.replace('.', "/"))
}

fn conntrack_loaded() -> bool {
    proc_path(CONNTRACK_MAX).exists()
}

#[test]
fn profiles_set_the_required_keys_and_the_same_keys() {
    let mut key_sets = Vec::new();
    for (name, _, _) in PROFILES {
        let settings = profile(name);
        for key in REQUIRED {
            assert!(settings.contains_key(key), "{name}.conf lacks {key}");
        }
        for (key, setting) in &settings {
            assert!(!key.starts_with("net.netfilter."), "{name}.conf: {key} belongs in conntrack/");
            assert!(!setting.ignore_failure, "{name}.conf: {key} must not hide failures");
        }
        key_sets.push(settings.into_keys().collect::<BTreeSet<_>>());
    }
    assert!(key_sets.windows(2).all(|w| w[0] == w[1]), "profiles set different keys");

    for (name, _, _) in PROFILES {
        let settings = parse_sysctl_file(&conntrack_path(name));
        assert!(settings.iter().any(|s| s.key == CONNTRACK_MAX), "conntrack/{name}.conf");
        for s in &settings {
            assert!(s.key.starts_with("net.netfilter."), "conntrack/{name}.conf: {}", s.key);
            assert!(s.ignore_failure, "conntrack/{name}.conf: {} needs the '-' prefix", s.key);
        }
    }
}

#[test]
fn every_key_is_a_sysctl_of_this_kernel() {
    for (name, _, _) in PROFILES {
        for key in profile(name).keys() {
            assert!(proc_path(key).exists(), "{name}.conf: {key} is not under /proc/sys");
        }
    }
    if !conntrack_loaded() {
        common::skip("conntrack/*.conf: nf_conntrack is not loaded on this host");
        return;
    }
    for (name, _, _) in PROFILES {
        for s in parse_sysctl_file(&conntrack_path(name)) {
            assert!(proc_path(&s.key).exists(), "conntrack/{name}.conf: {} not found", s.key);
        }
    }
}

#[test]
fn capacities_never_shrink_from_a_smaller_target_to_a_larger_one() {
    let profiles: Vec<_> = PROFILES.iter().map(|(name, _, _)| profile(name)).collect();
    for key in GROWING {
        let values: Vec<u64> = profiles.iter().map(|p| number(p, key)).collect();
        assert!(values.windows(2).all(|w| w[0] <= w[1]), "{key}: {values:?}");
    }
    let ports: Vec<u64> = profiles
        .iter()
        .map(|p| {
            let (low, high) = parse_port_range(&p["net.ipv4.ip_local_port_range"].value).expect("port range");
            high - low + 1
        })
        .collect();
    assert!(ports.windows(2).all(|w| w[0] <= w[1]), "port ranges {ports:?}");
}

/// `LimitNOFILE=` and `LimitMEMLOCK=` (bytes) of the systemd drop-in.
fn drop_in_limits() -> (u64, u64) {
    let path = repo().join("tuning/systemd/ringlb.service.d/limits.conf");
    let text = fs::read_to_string(&path).expect("drop-in");
    let value = |key: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(key))
            .unwrap_or_else(|| panic!("{key} missing in {}", path.display()))
            .trim()
            .to_string()
    };
    let nofile: u64 = value("LimitNOFILE=").parse().expect("LimitNOFILE");
    let memlock = value("LimitMEMLOCK=");
    let memlock: u64 = match memlock.strip_suffix('M') {
        Some(mib) => mib.parse::<u64>().expect("LimitMEMLOCK") << 20,
        None => memlock.parse().expect("LimitMEMLOCK"),
    };
    (nofile, memlock)
}

#[test]
fn limits_agree_between_systemd_limits_d_and_the_profiles() {
    let (nofile, memlock) = drop_in_limits();
    assert_eq!(nofile, IORING_MAX_FIXED_FILES, "a larger limit buys nothing");
    let limits = fs::read_to_string(repo().join("tuning/limits.d/ringlb.conf")).expect("limits.d");
    let items: Vec<Vec<&str>> = limits
        .lines()
        .map(str::split_whitespace)
        .map(Iterator::collect)
        .filter(|f: &Vec<&str>| !f.is_empty() && !f[0].starts_with('#'))
        .collect();
    for kind in ["soft", "hard"] {
        assert!(items.contains(&vec!["ringlb", kind, "nofile", &nofile.to_string()]), "{items:?}");
        let kib = (memlock >> 10).to_string();
        assert!(items.contains(&vec!["ringlb", kind, "memlock", &kib]), "{items:?}");
    }
    let unit = fs::read_to_string(repo().join("conf/ringlb.service")).expect("unit");
    assert!(unit.contains(&format!("\nLimitNOFILE={nofile}\n")), "unit LimitNOFILE");
    assert!(unit.contains("\nLimitMEMLOCK=64M\n") && memlock == 64 << 20, "unit LimitMEMLOCK");
    for (name, _, _) in PROFILES {
        // systemd cannot set a limit above fs.nr_open: the service would not start.
        assert!(number(&profile(name), "fs.nr_open") >= nofile, "{name}.conf: fs.nr_open");
    }
}

/// A host tuned with `name`'s profile, conntrack file and the systemd limits.
fn tuned_snapshot(name: &str) -> HostSnapshot {
    let settings = profile(name);
    let conntrack = parse_sysctl_file(&conntrack_path(name));
    let (nofile, memlock) = drop_in_limits();
    HostSnapshot {
        nofile: Some(Rlimit { soft: nofile, hard: nofile }),
        memlock: Some(Rlimit { soft: memlock, hard: memlock }),
        nr_open: Some(number(&settings, "fs.nr_open")),
        file_max: Some(number(&settings, "fs.file-max")),
        // Files the rest of a busy host keeps open.
        files_allocated: Some(10_000),
        somaxconn: Some(number(&settings, "net.core.somaxconn")),
        tcp_max_syn_backlog: Some(number(&settings, "net.ipv4.tcp_max_syn_backlog")),
        port_range: parse_port_range(&settings["net.ipv4.ip_local_port_range"].value),
        tcp_tw_reuse: Some(number(&settings, "net.ipv4.tcp_tw_reuse")),
        pipe_user_pages_soft: Some(number(&settings, "fs.pipe-user-pages-soft")),
        conntrack_max: conntrack
            .iter()
            .find(|s| s.key == CONNTRACK_MAX)
            .map(|s| s.value.parse().expect("conntrack max")),
        ..HostSnapshot::default()
    }
}

#[test]
fn each_profile_meets_what_the_host_check_asks_for_its_target() {
    // What the profiles decide; io_uring rows and tcp_mem (sized from RAM) are not theirs.
    let covered = [
        "registered slots per ring",
        "RLIMIT_NOFILE (soft)",
        "fs.nr_open",
        "fs.file-max",
        "net.core.somaxconn",
        "net.ipv4.tcp_max_syn_backlog",
        "net.ipv4.tcp_tw_reuse",
        "net.netfilter.nf_conntrack_max",
        "fs.pipe-user-pages-soft",
        "RLIMIT_MEMLOCK (soft)",
    ];
    // Backend (source address, server) pairs each profile's port range needs (README).
    let pairs = ["1 (source, backend) pair(s)", "2 (source, backend) pair(s)", "16 (source, backend) pair(s)"];
    for ((name, target, min_workers), pairs) in PROFILES.into_iter().zip(pairs) {
        let snapshot = tuned_snapshot(name);
        for workers in [min_workers, min_workers + 1, 16] {
            let report = evaluate(&HostLoad::new(target, workers), &snapshot);
            for setting in covered {
                let row = report.rows.iter().find(|r| r.setting == setting);
                let row = row.unwrap_or_else(|| panic!("{name}: no row {setting}"));
                assert!(row.ok, "{name}.conf, {workers} workers: {row:?}");
            }
            let ports = report.rows.iter().find(|r| r.setting == "net.ipv4.ip_local_port_range");
            assert_eq!(ports.map(|r| r.needed.as_str()), Some(pairs), "{name}");
        }
        // The profile's stated minimum worker count is the real one for the ring table.
        if min_workers > 1 {
            let fewer = evaluate(&HostLoad::new(target, min_workers - 1), &snapshot);
            let table = fewer.rows.iter().find(|r| r.setting == "registered slots per ring");
            assert!(table.is_some_and(|r| !r.ok), "{name}: {} workers would fit", min_workers - 1);
        }
    }
    assert_eq!(HostLoad::new(1_000_000, 1).min_workers_for_table(), 3);
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn run(cmd: &mut Command) -> Output {
    cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"))
}

/// A directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("ringlb-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("temp dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A network namespace created for this test, deleted on drop (also when the test fails).
struct NetNs(String);

impl NetNs {
    fn new() -> NetNs {
        let name = format!("ringlb-test-{}", std::process::id());
        let out = run(Command::new("ip").args(["netns", "add", &name]));
        assert!(out.status.success(), "ip netns add: {}", String::from_utf8_lossy(&out.stderr));
        NetNs(name)
    }

    fn exec(&self, args: &[&str]) -> Output {
        run(Command::new("ip").args(["netns", "exec", &self.0]).args(args))
    }

    /// `key -> value` for each key readable inside the namespace (whitespace normalised).
    fn read(&self, keys: &[String]) -> BTreeMap<String, String> {
        let mut values = BTreeMap::new();
        for key in keys {
            let path = proc_path(key);
            let out = self.exec(&["cat", &path.to_string_lossy()]);
            if out.status.success() {
                let text = String::from_utf8_lossy(&out.stdout);
                values.insert(key.clone(), text.split_whitespace().collect::<Vec<_>>().join(" "));
            }
        }
        values
    }

    /// Keys that exist inside the namespace and are writable there (mode has the owner's w).
    fn writable(&self, keys: &[String]) -> BTreeSet<String> {
        let paths: Vec<String> = keys.iter().map(|k| proc_path(k).to_string_lossy().into_owned()).collect();
        let mut args = vec!["stat", "-c", "%a %n"];
        args.extend(paths.iter().map(String::as_str));
        let out = self.exec(&args);
        let listing = String::from_utf8_lossy(&out.stdout);
        keys.iter()
            .zip(&paths)
            .filter(|(_, path)| {
                listing.lines().any(|l| {
                    l.split_once(' ')
                        .is_some_and(|(mode, p)| p == path.as_str() && mode.starts_with(['6', '7', '2', '3']))
                })
            })
            .map(|(key, _)| key.clone())
            .collect()
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

fn host_values(keys: &[String]) -> BTreeMap<String, Option<String>> {
    keys.iter()
        .map(|k| {
            let value = fs::read_to_string(proc_path(k)).ok();
            (k.clone(), value.map(|v| v.split_whitespace().collect::<Vec<_>>().join(" ")))
        })
        .collect()
}

#[test]
fn per_namespace_keys_load_with_sysctl_p_in_a_fresh_network_namespace() {
    if !is_root() {
        common::skip("creating a network namespace needs root");
        return;
    }
    if !have("ip") || !have("sysctl") {
        common::skip("needs ip (iproute2) and sysctl (procps)");
        return;
    }
    let mut all_keys: Vec<String> = Vec::new();
    for (name, _, _) in PROFILES {
        all_keys.extend(profile(name).into_keys());
        all_keys.extend(parse_sysctl_file(&conntrack_path(name)).into_iter().map(|s| s.key));
    }
    all_keys.sort();
    all_keys.dedup();
    let host_before = host_values(&all_keys);

    let netns = NetNs::new();
    let tmp = TempDir::new("netns-sysctl");
    for (name, _, _) in PROFILES {
        let settings = profile(name);
        let keys: Vec<String> = settings.keys().cloned().collect();
        // Only net.* keys can belong to a network namespace; fs.* are host-wide.
        let net_keys: Vec<String> = keys.iter().filter(|k| k.starts_with("net.")).cloned().collect();
        let writable = netns.writable(&net_keys);
        for key in
            ["net.core.somaxconn", "net.ipv4.ip_local_port_range", "net.ipv4.tcp_rmem", "net.ipv4.ip_nonlocal_bind"]
        {
            assert!(writable.contains(key), "{key} is not per-namespace here: {writable:?}");
        }
        let file = tmp.0.join(format!("{name}.conf"));
        let body: String = writable.iter().map(|k| format!("{k} = {}\n", settings[k].value)).collect();
        fs::write(&file, body).expect("write filtered profile");

        let out = netns.exec(&["sysctl", "-p", &file.to_string_lossy()]);
        assert!(out.status.success(), "{name}: sysctl -p: {}", String::from_utf8_lossy(&out.stderr));
        let loaded = netns.read(&writable.iter().cloned().collect::<Vec<_>>());
        for key in &writable {
            assert_eq!(loaded.get(key), Some(&settings[key].value), "{name}: {key} in the namespace");
        }

        // The conntrack file loads without error thanks to '-', but only where its keys cannot
        // be written inside the namespace (then they cannot reach the host either).
        let conntrack: Vec<String> = parse_sysctl_file(&conntrack_path(name)).into_iter().map(|s| s.key).collect();
        let present = netns.read(&conntrack);
        if present.len() < conntrack.len() {
            // The keys exist in a namespace only while nf_conntrack is loaded: a host feature.
            common::skip(&format!("sysctl -p conntrack/{name}.conf: its keys are absent in a namespace"));
        } else if !netns.writable(&conntrack).is_empty() {
            // Not a skip: on such a kernel what this checks does not hold and does not matter.
            eprintln!("not applicable: sysctl -p conntrack/{name}.conf: this kernel lets a namespace write its keys");
        } else {
            let path = conntrack_path(name);
            let out = netns.exec(&["sysctl", "-p", &path.to_string_lossy()]);
            assert!(out.status.success(), "conntrack/{name}.conf: {}", String::from_utf8_lossy(&out.stderr));
        }
    }
    drop(netns);
    assert_eq!(host_values(&all_keys), host_before, "the host's values changed");
}

#[test]
fn systemd_unit_and_drop_in_verify_clean() {
    if !have("systemd-analyze") {
        common::skip("systemd-analyze (package systemd) not installed");
        return;
    }
    // The unit names /usr/local/bin/ringlb, which does not exist here and which verify
    // checks: verify a copy that runs the binary built for this test instead.
    let unit = fs::read_to_string(repo().join("conf/ringlb.service")).expect("unit");
    assert_eq!(unit.matches("/usr/local/bin/ringlb ").count(), 3, "ExecStartPre, ExecStart, ExecReload");
    let tmp = TempDir::new("unit");
    let copy = tmp.0.join("ringlb.service");
    fs::write(&copy, unit.replace("/usr/local/bin/ringlb", env!("CARGO_BIN_EXE_ringlb"))).expect("copy");
    // verify also reads drop-ins from ringlb.service.d/ next to the unit.
    let drop_in = tmp.0.join("ringlb.service.d");
    fs::create_dir_all(&drop_in).expect("drop-in dir");
    fs::copy(repo().join("tuning/systemd/ringlb.service.d/limits.conf"), drop_in.join("limits.conf"))
        .expect("copy drop-in");

    let out = run(Command::new("systemd-analyze").arg("verify").arg(&copy));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let ours: Vec<&str> =
        stderr.lines().filter(|l| l.contains("ringlb") || l.contains(&*tmp.0.to_string_lossy())).collect();
    assert!(ours.is_empty(), "systemd-analyze verify complained:\n{stderr}");
}

#[test]
fn tune_apply_with_destdir_stages_every_file_and_loads_nothing() {
    if !have("make") {
        common::skip("make not installed");
        return;
    }
    let installed = [
        ("tuning/{p}.conf", "etc/sysctl.d/60-ringlb.conf"),
        ("tuning/conntrack/{p}.conf", "etc/sysctl.d/61-ringlb-conntrack.conf"),
        ("tuning/conntrack/90-ringlb-conntrack.rules", "etc/udev/rules.d/90-ringlb-conntrack.rules"),
        ("tuning/limits.d/ringlb.conf", "etc/security/limits.d/ringlb.conf"),
        ("tuning/systemd/ringlb.service.d/limits.conf", "etc/systemd/system/ringlb.service.d/limits.conf"),
    ];
    for (name, _, _) in PROFILES {
        let stage = TempDir::new(&format!("stage-{name}"));
        let destdir = stage.0.to_string_lossy().into_owned();
        assert!(destdir.starts_with('/') && destdir.len() > 1, "DESTDIR must be a real directory");
        let out = run(Command::new("make")
            .current_dir(repo())
            .args(["--no-print-directory", "-f", "tuning/tuning.mk", "tune-apply"])
            .arg(format!("PROFILE={name}"))
            .arg(format!("DESTDIR={destdir}")));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
        assert!(stdout.contains("nothing loaded"), "{stdout}");
        for (source, target) in installed {
            let source = repo().join(source.replace("{p}", name));
            let staged = fs::read(stage.0.join(target)).unwrap_or_else(|e| panic!("{target}: {e}"));
            assert_eq!(staged, fs::read(&source).expect("source"), "{target} differs from {}", source.display());
        }
    }
    let stage = TempDir::new("stage-bad");
    let out = run(Command::new("make")
        .current_dir(repo())
        .args(["-f", "tuning/tuning.mk", "tune-apply", "PROFILE=2m"])
        .arg(format!("DESTDIR={}", stage.0.display())));
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("PROFILE must be one of: 10k 100k 1m"));
    assert!(fs::read_dir(&stage.0).expect("stage").next().is_none(), "nothing staged for a bad profile");
}
