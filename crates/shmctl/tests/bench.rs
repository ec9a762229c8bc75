//! `shmctl bench`, run for real: a quick run covers every transport without a sequence
//! error and writes its JSON and SVG; small and large records work; bad input exits 64;
//! nothing is left in /dev/shm or $TMPDIR, after a normal run and after Ctrl-C.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The runs compete for the same CPUs and are timed: one at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

const TRANSPORTS: [&str; 16] = [
    "shmring-spin",
    "shmring-hybrid",
    "shmring-futex",
    "shmring-batch-spin",
    "shmring-batch-hybrid",
    "shmring-batch-futex",
    "shmring-file",
    "minimal-ring",
    "pipe",
    "pipe-batch",
    "unix-stream",
    "unix-stream-batch",
    "unix-seqpacket",
    "unix-seqpacket-batch",
    "tcp",
    "tcp-batch",
];

/// A private `$TMPDIR` for one run, removed when dropped.
struct TmpDir(PathBuf);

impl TmpDir {
    fn new() -> TmpDir {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "shmctl-bench-test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("creates the test directory");
        TmpDir(dir)
    }

    fn file(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TmpDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn command(tmp: &TmpDir, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_shmctl"));
    c.arg("bench").args(args).env("TMPDIR", &tmp.0);
    c
}

/// Runs `shmctl bench ARGS` and checks that it left nothing behind.
fn bench(tmp: &TmpDir, args: &[&str]) -> Output {
    let child = command(tmp, args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("runs");
    let pid = child.id();
    let out = child.wait_with_output().expect("runs");
    assert_nothing_left(pid, tmp);
    out
}

/// No shared-memory object of run `pid`, no file in its `$TMPDIR` but what the test made.
fn assert_nothing_left(pid: u32, tmp: &TmpDir) {
    let prefix = format!("shmctl-bench-{pid}-");
    let left: Vec<String> = std::fs::read_dir("/dev/shm")
        .expect("/dev/shm")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with(&prefix))
        .collect();
    assert!(left.is_empty(), "left in /dev/shm: {left:?}");
    let scratch = tmp.0.join(format!("shmctl-bench-{pid}"));
    assert!(!scratch.exists(), "left behind: {}", scratch.display());
}

fn text(out: &Output) -> String {
    format!("stdout:\n{}\nstderr:\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

fn json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).expect("JSON written")).expect("JSON parses")
}

/// The throughput row of `transport` at `size`.
fn row<'a>(report: &'a Value, transport: &str, size: u64) -> &'a Value {
    report["throughput"]
        .as_array()
        .expect("throughput rows")
        .iter()
        .find(|r| r["transport"] == transport && r["size"] == size)
        .unwrap_or_else(|| panic!("no throughput row for {transport} at {size} B"))
}

#[test]
fn quick_run_covers_every_transport_and_writes_json_and_svg() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = TmpDir::new();
    let (report_path, plot_path) = (tmp.file("bench.json"), tmp.file("bench.svg"));
    let out = bench(
        &tmp,
        &["--quick", "--json", report_path.to_str().expect("utf-8"), "--plot", plot_path.to_str().expect("utf-8")],
    );
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("pinning:") && stdout.contains("## Throughput"), "{stdout}");

    let report = json(&report_path);
    assert_eq!(report["schema"], 1);
    assert_eq!(report["failures"].as_array().map(Vec::len), Some(0), "{:#}", report["failures"]);
    for transport in TRANSPORTS {
        let r = row(&report, transport, 64);
        assert!(r["median_records_per_s"].as_f64().unwrap_or(0.0) > 0.0, "{transport}: {r:#}");
        assert_eq!(r["sequence_errors"], 0, "{transport}");
        assert_eq!(r["failed"], false, "{transport}");
    }
    let spin = row(&report, "shmring-spin", 64);
    assert_eq!(spin["median_ring_syscalls"], 0.0, "a spinning ring makes no futex call: {spin:#}");
    let latency = report["latency"].as_array().expect("latency rows");
    assert!(
        latency.iter().any(|l| l["transport"] == "shmring-hybrid" && l["median"]["p50_ns"].as_f64() > Some(0.0)),
        "{latency:#?}"
    );
    assert!(report["idle"].as_array().is_some_and(|i| !i.is_empty()));
    assert!(report["memcpy"][0]["median_mb_per_s"].as_f64() > Some(0.0));
    // No transport: each busy window lasts at least its 250 ns, and the table says what it is.
    let busy = &report["busy_windows"];
    assert_eq!(busy["transport"], "busy-250ns", "{busy:#}");
    assert!(busy["median"]["p50_ns"].as_f64() >= Some(250.0), "{busy:#}");
    assert!(busy["median"]["round_trips"].as_u64() > Some(0), "{busy:#}");
    assert!(stdout.contains("busy-250ns is no transport"), "{stdout}");
    assert_eq!(report["settings"]["cold"], false);
    assert!(stdout.contains("every page mapped in both processes first"), "{stdout}");

    let svg = std::fs::read_to_string(&plot_path).expect("SVG written");
    assert!(svg.contains("<svg"), "{svg}");

    assert_kind_rows(&report, &stdout);
}

/// The ring kinds' rows, in the same run as spsc's: each with its producers and consumers,
/// a hybrid wait that says why, a rate, records published by every producer and read by
/// every consumer, and the same-run ratio to spsc-1to1.
fn assert_kind_rows(report: &Value, stdout: &str) {
    assert!(stdout.contains("## Ring kinds") && stdout.contains("mpmc-2to2"), "{stdout}");
    let rows = report["kinds"].as_array().expect("kind rows");
    for (name, producers, consumers) in
        [("spsc-1to1", 1, 1), ("mpsc-2to1", 2, 1), ("broadcast-1to2", 1, 2), ("mpmc-2to2", 2, 2)]
    {
        let r = rows.iter().find(|r| r["row"] == name).unwrap_or_else(|| panic!("no kind row {name}: {rows:#?}"));
        assert_eq!((r["producers"].as_u64(), r["consumers"].as_u64()), (Some(producers), Some(consumers)), "{r:#}");
        assert_eq!(r["failed"], false, "{name}: {r:#}");
        assert_eq!(r["sequence_errors"], 0, "{name}");
        let wait = r["wait"].as_str().unwrap_or("");
        let processes = format!("{} processes", producers + consumers);
        assert!(wait.starts_with("hybrid: ") && wait.contains(&processes), "{name}: {wait}");
        let rate = r["median_records_per_s"].as_f64().unwrap_or(0.0);
        let deliveries = r["median_deliveries_per_s"].as_f64().unwrap_or(0.0);
        assert!(rate > 0.0, "{name}: {r:#}");
        // Broadcast hands each record to both consumers; the others once.
        let per_record = if name.starts_with("broadcast") { 2.0 } else { 1.0 };
        assert!((deliveries / rate - per_record).abs() < 1e-9, "{name}: {rate} records/s, {deliveries} deliveries/s");
        let ratio = r["ratio_spsc"].as_f64().unwrap_or(0.0);
        if name == "spsc-1to1" {
            assert_eq!(ratio, 1.0, "{r:#}");
        } else {
            assert!(ratio > 0.0 && ratio.is_finite(), "{name}: {r:#}");
        }
        let run = &r["reps"][0]["run"];
        let published = run["published"].as_array().expect("published per producer");
        assert_eq!(published.len() as u64, producers, "{run:#}");
        assert!(published.iter().all(|p| p.as_u64() > Some(0)), "every producer published: {run:#}");
        let read = run["consumer_records"].as_array().expect("records per consumer");
        assert_eq!(read.len() as u64, consumers, "{run:#}");
        if name != "mpmc-2to2" {
            // Competing workers may leave one idle; every other consumer reads records.
            assert!(read.iter().all(|c| c.as_u64() > Some(0)), "every consumer read: {run:#}");
        }
    }
}

#[test]
fn small_and_large_records_work_and_cold_rings_too() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = TmpDir::new();
    let report_path = tmp.file("bench.json");
    let out = bench(
        &tmp,
        &["--quick", "--cold", "--sizes", "8,64KiB", "--idle", "0", "--json", report_path.to_str().expect("utf-8")],
    );
    assert!(out.status.success(), "{}", text(&out));
    let report = json(&report_path);
    assert_eq!(report["settings"]["cold"], true, "--cold reaches the report");
    for transport in TRANSPORTS {
        for size in [8, 65536] {
            let r = row(&report, transport, size);
            assert!(r["median_records_per_s"].as_f64().unwrap_or(0.0) > 0.0, "{transport} {size}: {r:#}");
            assert_eq!(r["sequence_errors"], 0);
        }
    }
    assert!(row(&report, "shmring-hybrid", 65536)["ratio_memcpy"].as_f64().is_some());
    assert_eq!(report["idle"].as_array().map(Vec::len), Some(0), "--idle 0 skips the idle cases");
}

#[test]
fn bad_input_exits_64() {
    let tmp = TmpDir::new();
    let out = bench(&tmp, &["--transports", "pipe,carrier-pigeon"]);
    assert_eq!(out.status.code(), Some(64), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("carrier-pigeon"), "{stderr}");
    for valid in TRANSPORTS {
        assert!(stderr.contains(valid), "{valid} not listed: {stderr}");
    }
    for args in [
        &["--sizes", "4"][..],
        &["--sizes", "lots"],
        &["--capacity", "3000"],
        &["--reps", "0"],
        &["--kinds", "spmc-1to9"],
    ] {
        let out = bench(&tmp, args);
        assert_eq!(out.status.code(), Some(64), "{args:?}: {}", text(&out));
    }
}

#[test]
fn ctrl_c_removes_segments_and_files_and_exits_130() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = TmpDir::new();
    let mut child = command(&tmp, &["--transports", "shmring-file,shmring-hybrid", "--duration", "1s", "--idle", "0"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("runs");
    let pid = child.id();
    // Wait until the run holds both a file segment's directory and a POSIX segment.
    let prefix = format!("shmctl-bench-{pid}-");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let shm = std::fs::read_dir("/dev/shm")
            .expect("/dev/shm")
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .any(|n| n.starts_with(&prefix));
        if shm && tmp.0.join(format!("shmctl-bench-{pid}")).exists() {
            break;
        }
        assert!(Instant::now() < deadline, "the run never held a segment");
        assert!(child.try_wait().expect("try_wait").is_none(), "the run ended early");
        std::thread::sleep(Duration::from_millis(10));
    }
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGINT).expect("SIGINT");
    let status = child.wait().expect("wait");
    assert_eq!(status.code(), Some(130));
    assert_nothing_left(pid, &tmp);
}
