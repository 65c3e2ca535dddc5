//! Unit tests of the host check's arithmetic and rules, on fixed snapshots.

use super::*;

fn v(major: u32, minor: u32) -> KernelVersion {
    KernelVersion { major, minor, patch: 0 }
}

/// A host tuned with tuning/1m.conf and the systemd drop-in, on kernel 6.18.
fn tuned_host() -> HostSnapshot {
    HostSnapshot {
        kernel_release: "6.18.0".to_string(),
        kernel: Some(v(6, 18)),
        nofile: Some(Rlimit { soft: 1 << 20, hard: 1 << 20 }),
        memlock: Some(Rlimit { soft: 64 << 20, hard: 64 << 20 }),
        cap_ipc_lock: false,
        io_uring_disabled: Some(0),
        nr_open: Some(1 << 20),
        file_max: Some(4_194_304),
        files_allocated: Some(2_000),
        somaxconn: Some(65_536),
        tcp_max_syn_backlog: Some(65_536),
        port_range: Some((1024, 65_535)),
        tcp_tw_reuse: Some(1),
        pipe_user_pages_soft: Some(4_194_304),
        tcp_mem_max: Some(4_194_304),
        conntrack_max: None,
        uring: UringFacts::all_supported(),
    }
}

fn find<'a>(report: &'a HostReport, setting: &str) -> &'a Row {
    report.rows.iter().find(|r| r.setting == setting).unwrap_or_else(|| panic!("no row {setting}"))
}

#[test]
fn slots_per_ring_counts_two_sockets_per_connection_pipes_and_spares() {
    let load = HostLoad::new(10_000, 1);
    assert_eq!(load.connections_per_worker(), 10_000);
    assert_eq!(load.pipes_per_worker, 2_500);
    assert_eq!(load.slots_per_ring(), 20_000 + 5_000 + 64);
    let load = HostLoad::new(10_000, 3);
    assert_eq!(load.connections_per_worker(), 3_334);
    assert_eq!(load.slots_per_ring(), 6_668 + 2 * 834 + 64);
}

#[test]
fn zero_workers_is_treated_as_one() {
    assert_eq!(HostLoad::new(100, 0).connections_per_worker(), 100);
}

#[test]
fn a_million_connections_need_at_least_two_rings() {
    let load = HostLoad::new(1_000_000, 1);
    assert!(load.slots_per_ring() > IORING_MAX_FIXED_FILES);
    assert_eq!(load.min_workers_for_table(), 3);
    let report = evaluate(&load, &tuned_host());
    let table = find(&report, "registered slots per ring");
    assert!(!table.ok);
    assert!(table.advice.contains("at least 3 workers"), "{}", table.advice);
    assert!(report.fatal());
    let report = evaluate(&HostLoad::new(1_000_000, 4), &tuned_host());
    assert!(!report.fatal(), "{}", report.render_table());
}

#[test]
fn backlog_scales_with_connections_per_worker_above_the_kernel_default() {
    assert_eq!(HostLoad::new(10_000, 2).backlog_needed(), 4096);
    assert_eq!(HostLoad::new(100_000, 2).backlog_needed(), 8192);
    assert_eq!(HostLoad::new(1_000_000, 4).backlog_needed(), 32_768);
}

#[test]
fn ring_memory_matches_the_measured_memlock_fit() {
    // Measured on 6.18 as an unprivileged user: 20 rings of 4096 entries fit in 8 MiB.
    let ring = ring_memory_bytes(4096);
    assert!(20 * ring <= 8 << 20 && 21 * ring > 8 << 20, "{ring}");
    // 32768 entries: the SQE array alone exceeds 1 MiB, the ring fits in 8 MiB.
    let big = ring_memory_bytes(32_768);
    assert!(big > 1 << 20 && big <= 8 << 20, "{big}");
}

#[test]
fn port_range_without_known_backends_asks_for_enough_pairs() {
    let mut host = tuned_host();
    host.port_range = Some((32_768, 60_999));
    let report = evaluate(&HostLoad::new(100_000, 2), &host);
    let ports = find(&report, "net.ipv4.ip_local_port_range");
    assert_eq!(ports.now, "32768-60999 (28232 ports)");
    assert_eq!(ports.needed, "4 (source, backend) pair(s)");
    assert!(!ports.ok);
    assert_eq!(ports.severity, Severity::Soft);
    assert!(!report.fatal());

    host.port_range = Some((1024, 65_535));
    let report = evaluate(&HostLoad::new(1_000_000, 16), &host);
    assert_eq!(find(&report, "net.ipv4.ip_local_port_range").needed, "16 (source, backend) pair(s)");
}

#[test]
fn port_range_with_known_backends_checks_ports_per_pair() {
    let load = HostLoad { backend_pairs: Some(4), ..HostLoad::new(100_000, 2) };
    let mut host = tuned_host();
    host.port_range = Some((32_768, 60_999));
    let ports = evaluate(&load, &host).rows.into_iter().find(|r| r.setting.contains("port_range"));
    let ports = ports.expect("port row");
    assert_eq!(ports.needed, ">= 25000 ports (4 backend pairs)");
    assert!(ports.ok);
}

#[test]
fn a_low_descriptor_limit_is_a_hard_gap() {
    let mut host = tuned_host();
    host.nofile = Some(Rlimit { soft: 1024, hard: 1024 });
    let report = evaluate(&HostLoad::new(10_000, 1), &host);
    let nofile = find(&report, "RLIMIT_NOFILE (soft)");
    assert!(!nofile.ok);
    assert_eq!(nofile.needed, ">= 25064");
    assert_eq!(nofile.now, "1024 (hard 1024)");
    assert!(report.fatal());
    let warnings = report.warnings();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].starts_with("host error: RLIMIT_NOFILE (soft) is 1024 (hard 1024), needs >= 25064"));
}

#[test]
fn a_tuned_host_has_no_gaps() {
    let report = evaluate(&HostLoad::new(1_000_000, 16), &tuned_host());
    let gaps: Vec<_> = report.gaps().map(|r| r.setting.as_str()).collect();
    // Only the port range: 1M backend connections need 16 pairs, which only the config knows.
    assert_eq!(gaps, ["net.ipv4.ip_local_port_range"], "{}", report.render_table());
    assert!(!report.fatal());
}

#[test]
fn soft_gaps_warn_without_failing() {
    let mut host = tuned_host();
    host.somaxconn = Some(128);
    host.tcp_tw_reuse = Some(2);
    // The Debian default: 16384 pages, less than 2500 pipes x 16 pages.
    host.pipe_user_pages_soft = Some(16_384);
    let load = HostLoad::new(10_000, 2);
    let report = evaluate(&load, &host);
    assert!(!report.fatal());
    let gaps: Vec<_> = report.gaps().map(|r| r.setting.as_str()).collect();
    assert_eq!(gaps, ["net.core.somaxconn", "net.ipv4.tcp_tw_reuse", "fs.pipe-user-pages-soft"]);
    let mut pipe_gap = |pages| {
        host.pipe_user_pages_soft = Some(pages);
        evaluate(&load, &host).gaps().any(|r| r.setting == "fs.pipe-user-pages-soft")
    };
    assert!(pipe_gap(39_999));
    assert!(!pipe_gap(40_000));
    assert!(!pipe_gap(0), "0 means no limit");
}

#[test]
fn file_max_counts_files_open_elsewhere_on_the_host() {
    let mut host = tuned_host();
    host.file_max = Some(3_000_000);
    host.files_allocated = Some(100);
    // 1.8M sockets + 450k pipe descriptors + 256 ordinary ones.
    let load = HostLoad::new(900_000, 8);
    assert_eq!(load.files_needed(), 2_250_256);
    let report = evaluate(&load, &host);
    assert!(find(&report, "fs.file-max").ok);
    host.files_allocated = Some(800_000);
    let report = evaluate(&load, &host);
    assert!(!find(&report, "fs.file-max").ok);
    assert!(report.fatal());
}

#[test]
fn io_uring_unavailable_is_fatal_and_hides_feature_rows() {
    let mut host = tuned_host();
    host.io_uring_disabled = Some(2);
    host.uring = UringFacts::unavailable("Operation not permitted (os error 1)");
    let report = evaluate(&HostLoad::new(10, 1), &host);
    assert!(report.fatal());
    assert!(!report.rows.iter().any(|r| r.setting.starts_with("io_uring IORING")));
    assert_eq!(find(&report, "io_uring ring").now, "failed: Operation not permitted (os error 1)");
    assert_eq!(find(&report, "kernel.io_uring_disabled").severity, Severity::Hard);
}

#[test]
fn a_missing_feature_is_fatal() {
    let mut host = tuned_host();
    host.kernel = Some(v(6, 6));
    host.kernel_release = "6.6.0".to_string();
    for f in &mut host.uring.features {
        if f.since > v(6, 6) {
            f.supported = Ok(false);
        }
    }
    let report = evaluate(&HostLoad::new(10, 1), &host);
    assert!(report.fatal());
    let missing: Vec<_> = report.gaps().map(|r| r.setting.as_str()).collect();
    assert_eq!(missing, ["kernel", "io_uring uring_cmd setsockopt"]);
}

#[test]
fn memlock_is_not_limited_with_cap_ipc_lock() {
    let mut host = tuned_host();
    host.memlock = Some(Rlimit { soft: 65_536, hard: 65_536 });
    let load = HostLoad::new(10_000, 4);
    assert!(!find(&evaluate(&load, &host), "RLIMIT_MEMLOCK (soft)").ok);
    host.cap_ipc_lock = true;
    assert!(find(&evaluate(&load, &host), "RLIMIT_MEMLOCK (soft)").ok);
}

#[test]
fn conntrack_row_only_when_loaded() {
    let mut host = tuned_host();
    let load = HostLoad::new(100_000, 2);
    assert!(!evaluate(&load, &host).rows.iter().any(|r| r.setting.contains("conntrack")));
    host.conntrack_max = Some(262_144);
    let row = evaluate(&load, &host).rows.into_iter().find(|r| r.setting.contains("conntrack"));
    let row = row.expect("conntrack row");
    assert_eq!(row.needed, ">= 250000");
    assert!(row.ok);
}

#[test]
fn tcp_mem_must_hold_every_socket_at_its_minimum() {
    let mut host = tuned_host();
    // 1M connections: 2M sockets x 8 KiB = 4M pages (16 GiB).
    let load = HostLoad::new(1_000_000, 4);
    assert_eq!(load.tcp_mem_pages_needed(), 4_000_000);
    assert!(find(&evaluate(&load, &host), "net.ipv4.tcp_mem (max pages)").ok);
    // The kernel's default on a 24 GiB host.
    host.tcp_mem_max = Some(575_802);
    let report = evaluate(&load, &host);
    let row = find(&report, "net.ipv4.tcp_mem (max pages)");
    assert!(!row.ok);
    assert_eq!(row.severity, Severity::Soft);
    assert!(find(&evaluate(&HostLoad::new(100_000, 2), &host), "net.ipv4.tcp_mem (max pages)").ok);
}
