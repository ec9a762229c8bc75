//! The daemons under faults of their sinks, sources and service manager (issue 19).
//! Every lost and duplicated figure comes from this test's own ledger: it decodes the
//! file sink's output (or what a datagram sink sent it) and checks the sequence numbers
//! itself, never from the daemons' counters.
//!
//! - `file_sink_enospc_*`: the file sink's filesystem (a 2 MiB tmpfs) fills up mid-stream
//!   and is freed again: the retry writes each record once, with intact framing.
//! - `file_sink_failed_fsync_*`: an fsync fails (`SHMRING_TEST_FAIL_FSYNC`, the
//!   documented test hook): consumerd stops with exit 74 and acknowledges nothing of the
//!   batch; a restart delivers the rest exactly once.
//! - `file_sink_start_truncates_*`: junk after the acknowledged length (a torn tail) is
//!   dropped at start even when `.progress` names an earlier segment.
//! - `udp_sink_oversized_record_*`: a 70000-byte record (EMSGSIZE) stops the daemon under
//!   `on_undeliverable = "stop"` and is skipped and counted under `skip_and_count`; the
//!   records behind it arrive.
//! - `unix_sink_refused_for_ever_*`: a destination that refuses every send (`ENOENT`,
//!   `ECONNREFUSED`, a full receiver's `EAGAIN`) is retried for `undeliverable_after`,
//!   then its records are skipped and counted (or the daemon stops, exit 74) until a send
//!   goes through again; everything published after that arrives.
//! - `watchdog_*`: no `WATCHDOG=1` while the sink refuses every record (and is still
//!   allowed to retry); pings while
//!   waiting for a segment and between runs (`on_unlinked = "recreate"`), and `SIGTERM`
//!   ends those waits at once.
//! - `generator_resume_*`: producerd killed with `SIGKILL` mid-batch on tiny rings (4 KiB
//!   with 64 B records, 1 MiB with 64 KiB records) resumes without reusing or skipping a
//!   sequence number; under `on_full = "drop"` it never reuses one. And the worst case,
//!   made on purpose (`SHMRING_TEST_KILL_AFTER_BATCH_WRITE`): producerd dies with a batch
//!   written over a ring its consumer had emptied, unpublished; the restart resumes right
//!   after the last number it had published.
//! - `stdin_*`: a partial line survives a segment switch; a line longer than the ring's
//!   maximum record is skipped, counted, and does not grow the buffer without bound; a
//!   stop with a full ring logs and counts exactly the records it drops.
//! - `sighup_*`: SIGHUP re-opens the file even when the reload is refused; `READY=1`
//!   follows only once the ring thread re-opened it; every changed key is applied or named.
//! - `metrics_*`: with `nofile = 64` and 190 idle connections the endpoint does not spin;
//!   a request longer than 1024 bytes is answered; an address already taken stops the
//!   daemon cleanly (`STOPPING=1`, non-zero exit).
//! - `verify_state_*`: a loss an earlier run found and persisted does not fail later runs;
//!   a failed write of the state (`SHMRING_TEST_FAIL_STATE_WRITE`) leaves the batch
//!   unacknowledged and the counts as they were, so the retry counts it once.

use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::json;
use shm_core::{Location, Segment};
use shmring_tests::daemons::{
    self, Daemon, Kind, binary_file_sink, generator_record, generator_seq, observe, observe_when_created,
    segment_section, toml_string, wait_drained,
};
use shmring_tests::ledger::{Evidence, Figures, GENERATOR_LEDGER_VAR, read_ledger};
use shmring_tests::records::splitmix64;
use shmring_tests::reliability::report;
use shmring_tests::{Backend, Fixture, seed, wait_until};

/// A consumer config on `location` with the `[sink]` lines `sink` and more sections.
fn consumer(location: &Location, sink: &str) -> String {
    format!("{}[sink]\n{sink}\n", segment_section(location, &["wait_for_segment = \"10s\""]))
}

/// A generator of `count` records of `size` bytes (0: for ever) at `rate` per second.
fn generator(location: &Location, segment: &[&str], count: u64, size: &str, rate: u64) -> String {
    format!(
        "{}[source]\nkind = \"generator\"\ncount = {count}\nrate = {rate}\nmin_size = \"{size}\"\nmax_size = \"{size}\"\n",
        segment_section(location, segment)
    )
}

/// What kept the ledger of a generator run with a fixed `count`: it exits 0 only once it
/// has published every number below it.
const COUNT_LEDGER: &str = "the generator's count (it exited 0 after publishing 0..count)";
/// What read the file sink's output.
const FILE_READER: &str = "the file sink's output, decoded by the test";

/// The sequence numbers `seqs` the test read from a file sink, against `0..count`.
fn counted_stream(seqs: &[u64], count: u64) -> Evidence {
    Evidence::compare(COUNT_LEDGER, (0..count).collect(), FILE_READER, seqs.to_vec())
}

/// The sequence numbers of a binary file sink's output, and whether its framing broke
/// (a torn or corrupt record: the rest is not read).
fn file_seqs(bytes: &[u8]) -> (Vec<u64>, Option<String>) {
    let mut seqs = Vec::new();
    let mut at = 0usize;
    while at < bytes.len() {
        let Some(prefix) = bytes.get(at..at + 4) else {
            return (seqs, Some(format!("a length prefix torn at byte {at}")));
        };
        let len = u32::from_le_bytes(prefix.try_into().expect("4 bytes")) as usize;
        let Some(record) = bytes.get(at + 4..at + 4 + len) else {
            return (seqs, Some(format!("a record of {len} bytes torn at byte {at}")));
        };
        match generator_seq(record) {
            Some(seq) => seqs.push(seq),
            None => return (seqs, Some(format!("a corrupt record at byte {at}"))),
        }
        at += 4 + len;
    }
    (seqs, None)
}

/// Whether this test may mount: root (the tests' CI runs as root); prints why not.
fn may_mount(test: &str) -> bool {
    shmring_tests::skip::root_or_skip(test, "to mount a small tmpfs")
}

/// A small tmpfs mounted on a directory of the fixture, unmounted on drop.
struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    fn mount(fx: &Fixture, size: &str) -> Self {
        let dir = fx.path("tmpfs");
        fs::create_dir(&dir).expect("make the mount point");
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0755"), "tmpfs"])
            .arg(&dir)
            .status()
            .expect("run mount");
        assert!(status.success(), "mount a tmpfs on {}: {status}", dir.display());
        Tmpfs { dir }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}

// ---- File sink: I/O errors and torn tails -----------------------------------------

#[test]
fn file_sink_enospc_rolls_back_and_writes_each_record_once() {
    const RECORDS: u64 = 3000;
    let test = "file_sink_enospc_rolls_back_and_writes_each_record_once";
    if !may_mount(test) {
        return;
    }
    let fx = Fixture::new("enospc");
    let tmpfs = Tmpfs::mount(&fx, "2m");
    // Leave about 300 KiB free: the 3000 records of 256 bytes (780 KB framed) do not fit.
    let filler = tmpfs.dir.join("filler");
    fs::write(&filler, vec![0u8; 1748 * 1024]).expect("fill the tmpfs");
    let location = fx.location(Backend::Posix);
    Daemon::launch(&fx, Kind::Producer, &generator(&location, &["capacity = \"2MiB\""], RECORDS, "256", 0))
        .start(&fx)
        .wait(&fx)
        .assert_success();
    let ring = observe(&location);
    let out = tmpfs.dir.join("records.bin");
    let sink = format!("{}\nfsync = \"batch\"", binary_file_sink(&out));
    let consumer = Daemon::ready(&fx, Kind::Consumer, &consumer(&location, &sink));
    consumer.wait_log(&fx, "sink refused records");
    // Let it retry against the full filesystem a few times, then free the space.
    std::thread::sleep(Duration::from_millis(300));
    let retried = ring.stats().total_consumed;
    fs::remove_file(&filler).expect("free the tmpfs");
    wait_drained(&ring);
    consumer.stop(&fx).assert_success();

    let bytes = fs::read(&out).expect("read the output");
    let (seqs, broken) = file_seqs(&bytes);
    let found = counted_stream(&seqs, RECORDS);
    report(
        test,
        "file sink on a full 2 MiB tmpfs (ENOSPC mid-batch, fsync = batch), then space freed",
        1,
        if found.exact() && found.delivered == RECORDS && broken.is_none() { "pass" } else { "FAIL" },
        &Figures::Counted(found.clone()),
        json!({ "records": RECORDS, "released_before_space_was_freed": retried, "framing": broken }),
    );
    assert_eq!(broken, None, "{found:?}");
    found.assert_exact();
    assert_eq!(found.delivered, RECORDS, "{found:?}");
}

#[test]
fn file_sink_failed_fsync_stops_and_acknowledges_nothing() {
    const RECORDS: u64 = 2000;
    let test = "file_sink_failed_fsync_stops_and_acknowledges_nothing";
    let fx = Fixture::new("eio");
    let location = fx.location(Backend::Posix);
    // 2000 records at 4000/s: the consumer's batches are small, so the third fsync
    // comes long before the end.
    let producer =
        Daemon::ready(&fx, Kind::Producer, &generator(&location, &["capacity = \"1MiB\""], RECORDS, "128", 4000));
    let ring = observe(&location);
    let out = fx.path("records.bin");
    let sink = format!("{}\nfsync = \"batch\"", binary_file_sink(&out));
    let launch = Daemon::launch(&fx, Kind::Consumer, &consumer(&location, &sink));
    let failing = launch.clone().env("SHMRING_TEST_FAIL_FSYNC", "3").start(&fx);
    let failed = failing.wait(&fx);
    failed.assert_code(74);
    assert!(failed.stderr.contains("fsync of") && failed.stderr.contains("nothing of this batch"), "{}", failed.stderr);
    // What the file holds is exactly what was released.
    let released = ring.stats().total_consumed;
    let (seqs, broken) = file_seqs(&fs::read(&out).expect("read the output"));
    assert_eq!((seqs.len() as u64, broken), (released, None), "the file holds more or less than was released");

    let last = launch.start(&fx);
    producer.wait(&fx).assert_success();
    wait_drained(&ring);
    last.stop(&fx).assert_success();
    let (seqs, broken) = file_seqs(&fs::read(&out).expect("read the output"));
    let found = counted_stream(&seqs, RECORDS);
    report(
        test,
        "file sink fsync fails with EIO (test hook): exit 74, then restart",
        1,
        if found.exact() && found.delivered == RECORDS && broken.is_none() { "pass" } else { "FAIL" },
        &Figures::Counted(found.clone()),
        json!({ "records": RECORDS, "released_before_the_failure": released }),
    );
    assert_eq!(broken, None);
    found.assert_exact();
    assert_eq!(found.delivered, RECORDS, "{found:?}");
}

#[test]
fn file_sink_start_truncates_a_torn_tail_whatever_segment_progress_names() {
    const RECORDS: u64 = 500;
    let test = "file_sink_start_truncates_a_torn_tail_whatever_segment_progress_names";
    let fx = Fixture::new("torn-tail");
    let out = fx.path("records.bin");
    let mut streams = Vec::new();
    for round in 0..2 {
        let location = fx.location(Backend::Posix);
        Daemon::launch(&fx, Kind::Producer, &generator(&location, &["capacity = \"1MiB\""], RECORDS, "64", 0))
            .start(&fx)
            .wait(&fx)
            .assert_success();
        let ring = observe(&location);
        let consumer = Daemon::ready(&fx, Kind::Consumer, &consumer(&location, &binary_file_sink(&out)));
        wait_drained(&ring);
        consumer.stop(&fx).assert_success();
        streams.push(location);
        if round == 0 {
            // What a kill -9 mid-write leaves: half a frame beyond the acknowledged length.
            let mut file = fs::OpenOptions::new().append(true).open(&out).expect("open the output");
            file.write_all(&[200, 0, 0, 0, 1, 2, 3]).expect("append a torn frame");
        }
    }
    let (seqs, broken) = file_seqs(&fs::read(&out).expect("read the output"));
    // Two streams of 0..RECORDS, one after the other.
    let (first, second) = seqs.split_at(seqs.len().min(RECORDS as usize));
    let both = Evidence::sum(&[counted_stream(first, RECORDS), counted_stream(second, RECORDS)]);
    report(
        test,
        "torn tail after the acknowledged length, .progress of an earlier segment",
        1,
        if broken.is_none() && both.exact() && both.delivered == 2 * RECORDS { "pass" } else { "FAIL" },
        &Figures::Counted(both.clone()),
        json!({ "framing": broken }),
    );
    assert_eq!(broken, None, "the torn tail was kept: {both:?}");
    both.assert_exact();
    assert_eq!(both.delivered, 2 * RECORDS, "{both:?}");
}

// ---- Datagram sinks: a record they can never deliver --------------------------------

/// Every `OVERSIZED`th record of the stream is 70000 bytes, more than a UDP datagram holds.
const OVERSIZED: u64 = 10;

fn oversized(seq: u64) -> bool {
    seq % OVERSIZED == OVERSIZED - 1
}

#[test]
fn udp_sink_oversized_record_is_skipped_and_counted_or_stops_never_retried_for_ever() {
    const RECORDS: u64 = 100;
    let test = "udp_sink_oversized_record_is_skipped_and_counted_or_stops_never_retried_for_ever";
    let fx = Fixture::new("oversized");
    let location = fx.location(Backend::Posix);
    let segment = Segment::builder(location.clone()).capacity(4 << 20).create().expect("create the segment");
    let mut producer = segment.producer().expect("attach as the producer");
    let mut publish = |seqs: std::ops::Range<u64>| {
        for seq in seqs {
            let len = if oversized(seq) { 70_000 } else { 64 };
            producer.publish(&generator_record(seq, len), Some(daemons::PATIENCE)).expect("publish");
        }
    };
    publish(0..RECORDS);
    let receiver = UdpSocket::bind("127.0.0.1:0").expect("bind a receiver");
    receiver.set_read_timeout(Some(Duration::from_millis(100))).expect("a timeout");
    let target = receiver.local_addr().expect("its address");
    let udp = format!("kind = \"udp\"\ntarget = \"{target}\"");
    let ring = observe(&location);
    let received = |receiver: &UdpSocket, done: &dyn Fn() -> bool| {
        let mut seqs = Vec::new();
        let mut buf = vec![0u8; 1 << 17];
        let deadline = Instant::now() + daemons::PATIENCE;
        // Until `done`, then until a read finds nothing more.
        loop {
            match receiver.recv(&mut buf) {
                Ok(n) => seqs.push(generator_seq(&buf[..n]).expect("a generator record")),
                Err(_) if done() || Instant::now() > deadline => return seqs,
                Err(_) => {}
            }
        }
    };

    // The default, `skip_and_count`: everything else arrives, each oversized record is
    // counted; nothing waits behind one.
    let skipping = Daemon::ready(&fx, Kind::Consumer, &consumer(&location, &udp));
    let all = received(&receiver, &|| ring.stats().read_cursor == ring.stats().write_cursor);
    skipping.stop(&fx).assert_success();
    let summary = skipping.summary();
    let deliverable: Vec<u64> = (0..RECORDS).filter(|&s| !oversized(s)).collect();
    let found = Evidence::compare(
        "the test's list of the records a datagram can carry (published by a generator with count)",
        deliverable.clone(),
        "the test's UDP receiver",
        all.clone(),
    );
    report(
        test,
        "70000-byte records to a UDP sink (EMSGSIZE), on_undeliverable = skip_and_count (default), then stop",
        1,
        if all == deliverable { "pass" } else { "FAIL" },
        &Figures::Counted(found),
        json!({ "records": RECORDS, "oversized": RECORDS / OVERSIZED, "skipped_counted": summary.u64("undeliverable_skipped") }),
    );
    assert_eq!(all, deliverable, "the records the receiver got, in order");
    assert_eq!(summary.u64("undeliverable_skipped"), RECORDS / OVERSIZED, "{}", summary.0);

    // `stop`: the daemon stops at the next oversized record with exit 74; it stays in the ring.
    publish(RECORDS..2 * RECORDS);
    let config = consumer(&location, &format!("{udp}\non_undeliverable = \"stop\""));
    let stopped = Daemon::launch(&fx, Kind::Consumer, &config).start(&fx).wait(&fx);
    stopped.assert_code(74);
    assert!(stopped.stderr.contains("too large for one datagram"), "{}", stopped.stderr);
    let before_stop = received(&receiver, &|| true);
    assert_eq!(before_stop, (RECORDS..RECORDS + OVERSIZED - 1).collect::<Vec<_>>(), "what `stop` let through");
    assert!(ring.stats().read_cursor < ring.stats().write_cursor, "the oversized record was released");
}

// ---- The watchdog, and SIGTERM in every wait ------------------------------------------

fn pings_since(daemon: &Daemon, since: Instant) -> usize {
    daemon.notifications().iter().filter(|(t, m)| *t >= since && m.lines().any(|l| l == "WATCHDOG=1")).count()
}

#[test]
fn watchdog_is_withheld_while_the_sink_refuses_every_record() {
    let fx = Fixture::new("wd-refused");
    let location = fx.location(Backend::Posix);
    let _producer = Daemon::ready(&fx, Kind::Producer, &generator(&location, &["capacity = \"1MiB\""], 0, "64", 1000));
    // Nobody is bound at the target: every send fails (ENOENT) for ever, and the retries
    // are allowed an hour before `on_undeliverable` applies (the default is 5 s; see
    // `unix_sink_refused_for_ever_*` for what happens then).
    let nowhere = fx.path("nobody.sock");
    let sink = format!(
        "kind = \"unix\"\ntarget = {}\nundeliverable_after = \"1h\"",
        toml_string(&nowhere.display().to_string())
    );
    let mut c =
        Daemon::launch(&fx, Kind::Consumer, &consumer(&location, &sink)).env("WATCHDOG_USEC", "200000").start(&fx);
    c.wait_for(&fx, "READY=1");
    c.wait_log(&fx, "sink refused records");
    // Past the 1 s the service loop allows a silent ring thread, no ping for a second.
    std::thread::sleep(Duration::from_millis(1500));
    let since = Instant::now();
    std::thread::sleep(Duration::from_secs(1));
    let pings = pings_since(&c, since);
    fx.assert_running(c.proc());
    report(
        "watchdog_is_withheld_while_the_sink_refuses_every_record",
        "a Unix sink whose target never exists: WATCHDOG=1 pings in one second, 1.5 s after the first refusal",
        1,
        if pings == 0 { "pass" } else { "FAIL" },
        &Figures::NoRecords,
        json!({ "watchdog_pings": pings, "watchdog_usec": 200_000 }),
    );
    assert_eq!(pings, 0, "WATCHDOG=1 while no record moved; log:\n{}", c.log());
    c.stop(&fx);
}

/// Why every send of a Unix datagram sink fails, until the test makes its target work.
#[derive(Clone, Copy, Debug)]
enum Refusal {
    /// No socket at the path: `ENOENT`.
    Absent,
    /// A socket file nobody is bound to any more: `ECONNREFUSED`.
    Stale,
    /// A receiver bound and never reading: its queue fills, sends time out (`EAGAIN`).
    Full,
}

/// The sequence numbers waiting at `receiver`, until a read finds nothing for 200 ms.
fn drain_receiver(receiver: &std::os::unix::net::UnixDatagram) -> Vec<u64> {
    receiver.set_read_timeout(Some(Duration::from_millis(200))).expect("a timeout");
    let mut buf = vec![0u8; 1 << 16];
    let mut seqs = Vec::new();
    while let Ok(n) = receiver.recv(&mut buf) {
        seqs.push(generator_seq(&buf[..n]).expect("a generator record"));
    }
    seqs
}

/// A destination that refuses for ever (for each class of refusal a retry could cure)
/// is retried only for `undeliverable_after`; then `on_undeliverable` applies: every
/// record is skipped and counted (the ring drains, the watchdog sees records move) until
/// a send succeeds again, or the daemon stops with exit 74 and the record in the ring.
#[test]
fn unix_sink_refused_for_ever_applies_on_undeliverable_after_its_bound_then_recovers() {
    const RECORDS: u64 = 30;
    let test = "unix_sink_refused_for_ever_applies_on_undeliverable_after_its_bound_then_recovers";
    for refusal in [Refusal::Absent, Refusal::Stale, Refusal::Full] {
        let fx = Fixture::new("refused");
        let location = fx.location(Backend::Posix);
        let segment = Segment::builder(location.clone()).capacity(1 << 20).create().expect("create the segment");
        let mut producer = segment.producer().expect("attach as the producer");
        let mut publish = |seqs: std::ops::Range<u64>| {
            for seq in seqs {
                producer.publish(&generator_record(seq, 64), Some(daemons::PATIENCE)).expect("publish");
            }
        };
        let target = fx.path("sink.sock");
        let bind = || std::os::unix::net::UnixDatagram::bind(&target).expect("bind the receiver");
        let mut receiver = match refusal {
            Refusal::Absent => None,
            Refusal::Stale => {
                drop(bind());
                None
            }
            Refusal::Full => Some(bind()),
        };
        let sink = format!(
            "kind = \"unix\"\ntarget = {}\nundeliverable_after = \"1s\"",
            toml_string(&target.display().to_string())
        );
        let ring = observe(&location);
        publish(0..RECORDS);
        let c = Daemon::ready(&fx, Kind::Consumer, &consumer(&location, &sink));
        // Retried for 1 s, then each record that still fails is skipped: the ring drains.
        wait_drained(&ring);
        let before = match refusal {
            Refusal::Absent => Vec::new(),
            Refusal::Stale => {
                fs::remove_file(&target).expect("remove the stale socket");
                Vec::new()
            }
            Refusal::Full => drain_receiver(receiver.as_ref().expect("bound")),
        };
        let receiver = receiver.get_or_insert_with(bind);
        // The destination works again: the first send that succeeds ends the skipping.
        // One record at a time, each read before the next (a Unix datagram queue holds
        // only `net.unix.max_dgram_qlen` of them).
        receiver.set_read_timeout(Some(daemons::PATIENCE)).expect("a timeout");
        let mut after = Vec::new();
        let mut buf = vec![0u8; 1 << 16];
        for seq in RECORDS..2 * RECORDS {
            publish(seq..seq + 1);
            match receiver.recv(&mut buf) {
                Ok(n) => after.push(generator_seq(&buf[..n]).expect("a generator record")),
                Err(e) => panic!("{refusal:?}: record {seq} never arrived ({e}); log:\n{}", c.log()),
            }
        }
        wait_drained(&ring);
        after.extend(drain_receiver(receiver));
        let finished = c.stop(&fx);
        let skipped = c.summary().u64("undeliverable_skipped");
        let found = Evidence::compare(
            "this test's producer, once the destination worked again (each publish that returned Ok)",
            (RECORDS..2 * RECORDS).collect(),
            "the test's Unix datagram receiver",
            after.clone(),
        );
        let early_prefix = before == (0..before.len() as u64).collect::<Vec<_>>();
        let pass = found.exact()
            && found.unacknowledged == 0
            && early_prefix
            && skipped == RECORDS - before.len() as u64
            && finished.status.success();
        report(
            &format!("{test}[{refusal:?}]"),
            "a Unix datagram sink refused for ever (undeliverable_after = 1s, skip_and_count), then the receiver comes",
            1,
            if pass { "pass" } else { "FAIL" },
            &Figures::Counted(found.clone()),
            json!({ "refused_records": RECORDS, "delivered_before_refusing": before.len(), "skipped_counted": skipped }),
        );
        finished.assert_success();
        found.assert_exact();
        assert_eq!(found.unacknowledged, 0, "{found:?}");
        assert!(early_prefix, "{refusal:?}: what arrived before the queue filled: {before:?}");
        assert_eq!(skipped, RECORDS - before.len() as u64, "{refusal:?}: {}", c.log());
        assert!(c.log().contains("undeliverable_after"), "{refusal:?}: {}", c.log());
    }

    // Under `stop`, the daemon stops with exit 74 once the bound has passed; the record
    // stays in the ring.
    let fx = Fixture::new("refused-stop");
    let location = fx.location(Backend::Posix);
    let segment = Segment::builder(location.clone()).capacity(1 << 20).create().expect("create the segment");
    segment.producer().expect("attach").publish(&generator_record(0, 64), None).expect("publish");
    let sink = format!(
        "kind = \"unix\"\ntarget = {}\nundeliverable_after = \"1s\"\non_undeliverable = \"stop\"",
        toml_string(&fx.path("nobody.sock").display().to_string())
    );
    let started = Instant::now();
    let stopped = Daemon::launch(&fx, Kind::Consumer, &consumer(&location, &sink)).start(&fx).wait(&fx);
    stopped.assert_code(74);
    assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
    assert!(stopped.stderr.contains("undeliverable_after"), "{}", stopped.stderr);
    let ring = observe(&location).stats();
    assert!(ring.read_cursor < ring.write_cursor, "the refused record was released");
}

#[test]
fn watchdog_is_fed_while_waiting_for_the_segment_and_sigterm_ends_the_wait() {
    let fx = Fixture::new("wd-waiting");
    let location = fx.location(Backend::Posix);
    let config = format!("{}[sink]\nkind = \"discard\"\n", segment_section(&location, &["wait_for_segment = \"60s\""]));
    let c = Daemon::launch(&fx, Kind::Consumer, &config).env("WATCHDOG_USEC", "200000").start(&fx);
    c.wait_log(&fx, "waiting for the segment to appear");
    let since = Instant::now();
    wait_until(daemons::PATIENCE, "five watchdog pings while waiting", || pings_since(&c, since) >= 5);
    let asked = Instant::now();
    c.signal(&fx, Signal::SIGTERM);
    let finished = fx.wait(c.proc(), Duration::from_secs(3));
    let took = asked.elapsed();
    report(
        "watchdog_is_fed_while_waiting_for_the_segment_and_sigterm_ends_the_wait",
        "consumerd waiting for a missing segment (wait_for_segment = 60s), WatchdogSec 0.2 s, then SIGTERM",
        1,
        if finished.status.success() && took < Duration::from_secs(2) { "pass" } else { "FAIL" },
        &Figures::NoRecords,
        json!({ "sigterm_to_exit_ms": took.as_millis() as u64 }),
    );
    finished.assert_success();
    assert!(took < Duration::from_secs(2), "SIGTERM took {took:?}");
    assert!(!c.has_been_ready(), "it never attached");
}

// ---- The generator's resume point ------------------------------------------------------

/// Kills producerd with SIGKILL `kills` times at random moments while a consumer writes
/// the stream to a file, restarting it each time; returns the generator's test ledger
/// (each number whose publish returned) against what the test read back.
fn kill_producers(fx: &Fixture, test: &str, segment: &[&str], size: &str, on_full: &str, kills: u64) -> Evidence {
    let mut rng = seed(test);
    let location = fx.location(Backend::Posix);
    // As fast as the ring takes them: every batch runs until the ring is full, which on
    // these rings is more than a lap of the ring. (A rate, as `drop` needs, of a million
    // a second has the same effect.)
    let rate = if on_full == "drop" { 1_000_000 } else { 0 };
    let config = format!("{}on_full = \"{on_full}\"\n", generator(&location, segment, 0, size, rate));
    let ledger = fx.path(&format!("ledger-{size}-{on_full}"));
    let launch = Daemon::launch(fx, Kind::Producer, &config).env(GENERATOR_LEDGER_VAR, &ledger.display().to_string());
    let mut p = launch.start(fx);
    p.wait_for(fx, "READY=1");
    let ring = observe(&location);
    let out = fx.path("records.bin");
    let c = Daemon::ready(fx, Kind::Consumer, &consumer(&location, &binary_file_sink(&out)));
    for _ in 0..kills {
        let from = ring.stats().total_produced;
        wait_until(daemons::PATIENCE, "the generator moves", || ring.stats().total_produced > from + 50);
        rng = splitmix64(rng);
        std::thread::sleep(Duration::from_micros(rng % 5_000));
        p.kill(fx);
        p = launch.start(fx);
        p.wait_for(fx, "READY=1");
    }
    let from = ring.stats().total_produced;
    wait_until(daemons::PATIENCE, "the generator moves", || ring.stats().total_produced > from + 50);
    p.stop(fx).assert_success();
    wait_drained(&ring);
    c.stop(fx).assert_success();
    let (seqs, broken) = file_seqs(&fs::read(&out).expect("read the output"));
    assert_eq!(broken, None);
    Evidence::compare(
        "producerd's test ledger (SHMRING_TEST_LEDGER, appended after each publish)",
        read_ledger(&ledger),
        FILE_READER,
        seqs,
    )
}

#[test]
fn generator_resume_after_kill9_on_tiny_rings_never_reuses_or_skips() {
    let test = "generator_resume_after_kill9_on_tiny_rings_never_reuses_or_skips";
    let fx = Fixture::new("resume-tiny");
    for (segment, size) in [(["capacity = \"4KiB\""], "64"), (["capacity = \"1MiB\""], "64KiB")] {
        let found = kill_producers(&fx, test, &segment, size, "block", 8);
        report(
            &format!("{test}[{}, {size}-byte records]", segment[0]),
            "producerd SIGKILLed 8 times mid-batch, ring smaller than a batch",
            8,
            if found.exact() && found.unacknowledged <= 8 * 256 { "pass" } else { "FAIL" },
            &Figures::Counted(found.clone()),
            json!({ "reordered": found.reordered, "published_not_in_ledger": found.unacknowledged }),
        );
        // Every number the generator was told was published arrived once, in order; a
        // skipped lap would be lost records, a reused number a duplicate or a reorder.
        found.assert_exact();
        // At most the batch each kill cut short between its publish and its ledger line
        // can be delivered but not acknowledged.
        assert!(found.unacknowledged <= 8 * 256, "{segment:?} {size}: {found:?}");
    }
}

#[test]
fn generator_resume_with_on_full_drop_never_reuses_a_sequence_number() {
    let test = "generator_resume_with_on_full_drop_never_reuses_a_sequence_number";
    let fx = Fixture::new("resume-drop");
    let found = kill_producers(&fx, test, &["capacity = \"4KiB\""], "64", "drop", 8);
    report(
        test,
        "producerd SIGKILLed 8 times, on_full = drop, 4 KiB ring",
        8,
        if found.exact() { "pass" } else { "FAIL" },
        // Records dropped while the ring was full were never acknowledged, so they are
        // not in the ledger: only a published record that never arrived is lost, and a
        // reused number shows as a duplicate or a reorder.
        &Figures::Counted(found.clone()),
        json!({ "reordered": found.reordered }),
    );
    found.assert_exact();
}

/// Runs producerd with `SHMRING_TEST_KILL_AFTER_BATCH_WRITE=20`, so that it writes its
/// 20th batch into a ring the consumer has read empty (a batch that may run a whole lap)
/// and dies by SIGKILL before publishing it; restarts it, lets it run, stops everything.
/// Returns the ledgers of both runs against the file sink's output, the last number the
/// first run published and the first the second run published.
fn crash_mid_batch(fx: &Fixture, segment: &[&str], size: &str, on_full: &str) -> (Evidence, u64, u64) {
    let location = fx.location(Backend::Posix);
    let rate = if on_full == "drop" { 1_000_000 } else { 0 };
    let config = format!("{}on_full = \"{on_full}\"\n", generator(&location, segment, 0, size, rate));
    let ledgers =
        [fx.path(&format!("ledger-{size}-{on_full}-crashed")), fx.path(&format!("ledger-{size}-{on_full}-restarted"))];
    let launch = |ledger: &Path| {
        Daemon::launch(fx, Kind::Producer, &config).env(GENERATOR_LEDGER_VAR, &ledger.display().to_string())
    };
    let crashing = launch(&ledgers[0]).env("SHMRING_TEST_KILL_AFTER_BATCH_WRITE", "20").start(fx);
    let out = fx.path(&format!("records-{size}-{on_full}.bin"));
    let c = Daemon::ready(fx, Kind::Consumer, &consumer(&location, &binary_file_sink(&out)));
    let crashed = crashing.wait(fx);
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&crashed.status),
        Some(9),
        "the hook killed it: {crashed:?}"
    );
    let ring = observe(&location);
    let p = launch(&ledgers[1]).start(fx);
    let from = ring.stats().total_produced;
    wait_until(daemons::PATIENCE, "the restarted generator moves", || ring.stats().total_produced > from + 200);
    p.stop(fx).assert_success();
    wait_drained(&ring);
    c.stop(fx).assert_success();
    let (seqs, broken) = file_seqs(&fs::read(&out).expect("read the output"));
    assert_eq!(broken, None);
    let [before, after] = ledgers.map(|l| read_ledger(&l));
    let last_published = *before.iter().max().expect("the first run published before its 20th batch");
    let first_resumed = *after.iter().min().expect("the restarted run published");
    let found = Evidence::compare(
        "producerd's test ledgers of both runs (SHMRING_TEST_LEDGER, appended after each publish)",
        [before, after].concat(),
        FILE_READER,
        seqs,
    );
    (found, last_published, first_resumed)
}

#[test]
fn generator_killed_with_a_whole_lap_written_unpublished_resumes_after_its_last_published_record() {
    let test = "generator_killed_with_a_whole_lap_written_unpublished_resumes_after_its_last_published_record";
    let fx = Fixture::new("resume-lap");
    let cases = [
        (["capacity = \"4KiB\""], "64", "block"),
        (["capacity = \"4KiB\""], "64", "drop"),
        (["capacity = \"1MiB\""], "64KiB", "block"),
    ];
    let mut failures = Vec::new();
    for (segment, size, on_full) in cases {
        let (found, last_published, first_resumed) = crash_mid_batch(&fx, &segment, size, on_full);
        let resumed_right = first_resumed == last_published + 1;
        report(
            &format!("{test}[{}, {size}-byte records, on_full = {on_full}]", segment[0]),
            "producerd SIGKILLed (test hook) after writing a batch as large as the ring over a read-empty ring, before publishing it",
            1,
            if found.exact() && resumed_right { "pass" } else { "FAIL" },
            &Figures::Counted(found.clone()),
            json!({ "reordered": found.reordered, "last_published": last_published, "first_resumed": first_resumed }),
        );
        // A batch that overwrote the last published record makes the restart resume a lap
        // ahead (numbers skipped) or from a counter (numbers reused): both show here.
        if !resumed_right || !found.exact() || found.acknowledged == 0 {
            failures.push(format!(
                "{segment:?} {size} on_full = {on_full}: published up to {last_published}, resumed at {first_resumed}; {found:?}"
            ));
        }
    }
    assert!(failures.is_empty(), "not resumed right after the last published record:\n{}", failures.join("\n"));
}

// ---- stdin --------------------------------------------------------------------------

/// Reads the next record from `consumer` (the test is the segment's consumer).
fn next_record(consumer: &mut shm_core::Consumer) -> Vec<u8> {
    let record = consumer.read(Some(daemons::PATIENCE)).expect("a record");
    record.to_vec()
}

#[test]
fn stdin_keeps_a_partial_line_across_a_segment_switch_and_skips_overlong_lines() {
    let test = "stdin_keeps_a_partial_line_across_a_segment_switch_and_skips_overlong_lines";
    let fx = Fixture::new("stdin-switch");
    let location = fx.location(Backend::Posix);
    let input = daemons::fifo(&fx, "stdin");
    let config = format!(
        "{}[source]\nkind = \"stdin\"\n",
        segment_section(&location, &["capacity = \"64KiB\"", "max_record = \"1KiB\"", "on_unlinked = \"recreate\""])
    );
    let mut p = Daemon::launch(&fx, Kind::Producer, &config).stdin_from(&input).start(&fx);
    let mut writer = daemons::open_fifo_writer(&input);
    p.wait_for(&fx, "READY=1");
    let segment = Segment::builder(location.clone()).open().expect("open the segment");
    let mut consumer = segment.consumer().expect("attach as the consumer");
    writer.write_all(b"first\nhello wor").expect("write");
    assert_eq!(next_record(&mut consumer), b"first");
    // The partial line is in producerd's buffer when its segment goes.
    std::thread::sleep(Duration::from_millis(100));
    drop(consumer);
    drop(segment);
    Segment::unlink(&location).expect("unlink the segment");
    p.wait_log(&fx, "re-creating it");
    p.wait_for(&fx, "READY=1");
    let segment = Segment::builder(location.clone()).open().expect("open the new segment");
    let mut consumer = segment.consumer().expect("attach as the consumer");
    // A line longer than the ring's maximum record, in pieces, then a normal one.
    writer.write_all(b"ld\n").expect("write");
    for _ in 0..4 {
        writer.write_all(&[b'x'; 1000]).expect("write");
    }
    writer.write_all(b"\nlast\n").expect("write");
    let got = [next_record(&mut consumer), next_record(&mut consumer)];
    drop(writer);
    p.wait(&fx).assert_success();
    let expected = [b"hello world".to_vec(), b"last".to_vec()];
    // Each line as its index among the lines the test wrote that fit a record (a line
    // nobody wrote, such as a torn "ld", as an index past them).
    let index = |line: &Vec<u8>| expected.iter().position(|e| e == line).unwrap_or(expected.len()) as u64;
    let found = Evidence::compare(
        "the complete lines that fit, as this test wrote them to stdin",
        (0..expected.len() as u64).collect(),
        "this test's consumer",
        got.iter().map(index).collect(),
    );
    report(
        test,
        "stdin: segment unlinked and re-created with half a line buffered; a 4000-byte line (max 1 KiB)",
        1,
        if got == expected { "pass" } else { "FAIL" },
        &Figures::Counted(found),
        json!({}),
    );
    assert_eq!(got, expected, "{:?}", got.iter().map(|g| String::from_utf8_lossy(g).into_owned()).collect::<Vec<_>>());
    assert!(p.log().contains("a line longer than the ring's maximum record"), "{}", p.log());
}

/// Bytes waiting in the pipe behind `fifo` (`FIONREAD` works on either end on Linux).
fn bytes_in_pipe(fifo: &fs::File) -> usize {
    let mut queued: libc::c_int = 0;
    // SAFETY: FIONREAD writes one c_int through the pointer, which points at `queued`.
    let rc = unsafe { libc::ioctl(std::os::fd::AsRawFd::as_raw_fd(fifo), libc::FIONREAD, &mut queued) };
    assert_eq!(rc, 0, "FIONREAD: {}", std::io::Error::last_os_error());
    queued as usize
}

/// The value of `key=N` in a human log line.
fn log_field(line: &str, key: &str) -> Option<u64> {
    let at = line.find(&format!("{key}="))? + key.len() + 1;
    line[at..].split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}

/// A stdin source stopped with a full ring and lines in its buffer says how many
/// records it drops and counts them (`source_errors`): exactly the lines it read minus
/// the records the ring holds.
#[test]
fn stdin_stopped_with_a_full_ring_counts_exactly_what_it_drops() {
    const LINES: u64 = 1000;
    let test = "stdin_stopped_with_a_full_ring_counts_exactly_what_it_drops";
    let fx = Fixture::new("stdin-drop");
    let location = fx.location(Backend::Posix);
    let input = daemons::fifo(&fx, "stdin");
    let config = format!("{}[source]\nkind = \"stdin\"\n", segment_section(&location, &["capacity = \"4KiB\""]));
    let mut p = Daemon::launch(&fx, Kind::Producer, &config).stdin_from(&input).start(&fx);
    let mut writer = daemons::open_fifo_writer(&input);
    p.wait_for(&fx, "READY=1");
    // 20 000 bytes: one read of producerd's (64 KiB) takes all of them; the 4 KiB ring,
    // with no consumer, takes the first ~100.
    let text: String = (0..LINES).map(|i| format!("line {i:014}\n")).collect();
    writer.write_all(text.as_bytes()).expect("write");
    let ring = observe(&location);
    wait_until(daemons::PATIENCE, "producerd has read every byte and filled the ring", || {
        let before = ring.stats().total_produced;
        std::thread::sleep(Duration::from_millis(200));
        bytes_in_pipe(&writer) == 0 && before > 0 && ring.stats().total_produced == before
    });
    p.signal(&fx, Signal::SIGTERM);
    p.wait(&fx).assert_success();
    drop(writer);
    let segment = Segment::builder(location.clone()).open().expect("open the segment");
    let mut consumer = segment.consumer().expect("attach as the consumer");
    let mut in_ring = Vec::new();
    while let Ok(record) = consumer.read(Some(Duration::from_millis(100))) {
        in_ring.push(String::from_utf8_lossy(&record).into_owned());
    }
    let expected_in_ring: Vec<String> = (0..in_ring.len()).map(|i| format!("line {i:014}")).collect();
    let dropped = LINES - in_ring.len() as u64;
    let log = p.log();
    let drop_line = log.lines().find(|l| l.contains("input taken in and not committed"));
    let stopped_line = log.lines().rev().find(|l| l.contains("stopped"));
    let logged = drop_line.and_then(|l| log_field(l, "records"));
    let counted = stopped_line.and_then(|l| log_field(l, "source_errors"));
    let pass = in_ring == expected_in_ring && logged == Some(dropped) && counted == Some(dropped);
    report(
        test,
        "stdin source, 1000 lines read, 4 KiB ring with no consumer, SIGTERM",
        1,
        if pass { "pass" } else { "FAIL" },
        &Figures::NotCounted("the drop count (lines written minus the records the test read from the ring)"),
        json!({ "lines_written": LINES, "records_in_ring": in_ring.len(), "dropped_logged": logged, "source_errors": counted }),
    );
    assert_eq!(in_ring, expected_in_ring, "the ring holds the first lines, in order");
    assert_eq!(logged, Some(dropped), "the drop is logged with its count; log:\n{log}");
    assert_eq!(counted, Some(dropped), "the drop is counted in source_errors; log:\n{log}");
}

// ---- Reload -------------------------------------------------------------------------

#[test]
fn sighup_reopens_the_file_even_when_the_reload_is_refused_and_names_every_changed_key() {
    let fx = Fixture::new("hup-refused");
    let location = fx.location(Backend::Posix);
    // The ring stays idle: the ring thread sits in its 100 ms waits, so a READY=1 that
    // does not wait for it comes before the re-open.
    Daemon::launch(&fx, Kind::Producer, &generator(&location, &["capacity = \"1MiB\""], 10, "64", 0))
        .start(&fx)
        .wait(&fx)
        .assert_success();
    let out = fx.path("records.bin");
    let good = consumer(&location, &binary_file_sink(&out));
    let mut c = Daemon::ready(&fx, Kind::Consumer, &good);
    wait_drained(&observe(&location));
    let rotate_and_reload = |c: &mut Daemon, config: &str, rotated: &Path| {
        fs::rename(&out, rotated).expect("rotate the file");
        fs::write(c.config_path(), config).expect("write the config");
        c.signal(&fx, Signal::SIGHUP);
        c.wait_for(&fx, "RELOADING=1");
        c.wait_for(&fx, "READY=1");
        assert!(out.exists(), "READY=1 before the file was re-opened; log:\n{}", c.log());
    };
    rotate_and_reload(&mut c, "[sink\nbroken", &fx.path("records.bin.1"));
    assert!(c.log().contains("reload failed"), "{}", c.log());

    let port = daemons::free_tcp_port();
    let changed = format!(
        "{}\nfsync = \"batch\"\n[shutdown]\ndrain_timeout = \"2s\"\n[log]\nformat = \"json\"\n[metrics]\nlisten = \"127.0.0.1:{port}\"\n",
        good.trim_end()
    );
    rotate_and_reload(&mut c, &changed, &fx.path("records.bin.2"));
    c.wait_log(&fx, "config reloaded");
    let log = c.log();
    let refusal = log.lines().find(|l| l.contains("kept as running")).unwrap_or_else(|| panic!("no refusal:\n{log}"));
    for key in ["sink.fsync", "log.format", "metrics.listen"] {
        assert!(refusal.contains(key), "{key} not named: {refusal}");
    }
    assert!(!refusal.contains("drain_timeout"), "drain_timeout is applied, not refused: {refusal}");
    assert!(log.contains("drain_timeout=2s"), "{log}");
    c.stop(&fx).assert_success();
}

// ---- Metrics endpoint -------------------------------------------------------------------

/// CPU time (user + system, in clock ticks) a process has used.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc/PID/stat");
    // Fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat[stat.rfind(')').expect("a command name") + 2..].split(' ').collect();
    fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime")
}

#[test]
fn metrics_endpoint_does_not_spin_on_emfile_and_answers_long_requests() {
    let test = "metrics_endpoint_does_not_spin_on_emfile_and_answers_long_requests";
    let fx = Fixture::new("metrics-emfile");
    let location = fx.location(Backend::Posix);
    let addr = SocketAddr::from(([127, 0, 0, 1], daemons::free_tcp_port()));
    let config =
        format!("{}[metrics]\nlisten = \"{addr}\"\n", generator(&location, &["capacity = \"1MiB\""], 0, "64", 10));
    let p = Daemon::launch(&fx, Kind::Producer, &config).nofile(64);
    let mut p = p.start(&fx);
    p.wait_for(&fx, "READY=1");
    let idle: Vec<TcpStream> = (0..190).map(|_| TcpStream::connect(addr).expect("connect")).collect();
    std::thread::sleep(Duration::from_millis(300));
    let before = cpu_ticks(p.pid());
    std::thread::sleep(Duration::from_secs(1));
    let used = cpu_ticks(p.pid()) - before;
    drop(idle);
    report(
        test,
        "metrics endpoint, nofile = 64, 190 idle connections: CPU ticks (1/100 s) over one second",
        1,
        if used < 20 { "pass" } else { "FAIL" },
        &Figures::NoRecords,
        json!({ "cpu_ticks_in_one_second": used }),
    );
    assert!(used < 20, "the daemon used {used} ticks of CPU in one second with idle connections");

    // A request head of 4 KiB is read whole and answered, not reset.
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(daemons::PATIENCE)).expect("a timeout");
    let long = format!("GET /metrics HTTP/1.0\r\nX-Padding: {}\r\n\r\n", "a".repeat(4096));
    stream.write_all(long.as_bytes()).expect("send");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read the whole response");
    assert!(response.starts_with("HTTP/1.0 200"), "{response}");
    assert!(response.contains("producerd_records_committed_total"), "{response}");
    p.stop(&fx).assert_success();
}

// ---- The verify sink's persisted loss ---------------------------------------------------

#[test]
fn verify_state_a_loss_found_once_does_not_fail_every_later_run() {
    let fx = Fixture::new("verify-once");
    let location = fx.location(Backend::Posix);
    let segment = Segment::builder(location.clone()).capacity(1 << 20).create().expect("create the segment");
    let mut producer = segment.producer().expect("attach as the producer");
    let state = fx.path("verify.state");
    let sink = format!("kind = \"verify\"\nstate = {}", toml_string(&state.display().to_string()));
    let launch = Daemon::launch(&fx, Kind::Consumer, &consumer(&location, &sink));
    // Run 1: sequence 5 is missing.
    for seq in (0..10).filter(|&s| s != 5) {
        producer.publish(&generator_record(seq, 64), None).expect("publish");
    }
    let first = launch.start(&fx);
    wait_drained(&observe(&location));
    first.stop(&fx).assert_code(1);
    // Run 2: nothing new is wrong.
    for seq in 10..20 {
        producer.publish(&generator_record(seq, 64), None).expect("publish");
    }
    let second = launch.start(&fx);
    wait_drained(&observe(&location));
    let finished = second.stop(&fx);
    assert_eq!(second.summary().u64("lost"), 1, "{}", second.summary().0);
    finished.assert_success();
}

/// A failed write of the verify sink's state leaves the batch unacknowledged and the
/// verification as it was before it: the batch, delivered again, is counted once.
#[test]
fn verify_state_write_failure_rolls_back_the_batch() {
    const RECORDS: u64 = 2000;
    let test = "verify_state_write_failure_rolls_back_the_batch";
    let fx = Fixture::new("verify-rollback");
    let location = fx.location(Backend::Posix);
    let ledger = fx.path("ledger");
    let segment = &["capacity = \"1MiB\""];
    // 2000 records at 4000/s: many small batches, so the third state write comes early.
    let producer = Daemon::launch(&fx, Kind::Producer, &generator(&location, segment, RECORDS, "64", 4000))
        .env(GENERATOR_LEDGER_VAR, &ledger.display().to_string())
        .start(&fx);
    let ring = observe_when_created(&location);
    let state = fx.path("verify.state");
    let sink = format!("kind = \"verify\"\nstate = {}", toml_string(&state.display().to_string()));
    let c = Daemon::launch(&fx, Kind::Consumer, &consumer(&location, &sink))
        .env("SHMRING_TEST_FAIL_STATE_WRITE", "3")
        .start(&fx);
    c.wait_log(&fx, "sink refused records");
    producer.wait(&fx).assert_success();
    wait_drained(&ring);
    let finished = c.stop(&fx);
    let summary = c.summary();
    let acknowledged = read_ledger(&ledger);
    // The verify sink's own counts are what is under test here; the ledger says what it
    // should have counted.
    let pass = finished.status.success()
        && summary.u64("received") == acknowledged.len() as u64
        && summary.u64("duplicated") == 0
        && summary.u64("lost") == 0;
    report(
        test,
        "the verify sink's state write fails once with EIO (test hook): the batch is retried",
        1,
        if pass { "pass" } else { "FAIL" },
        &Figures::NotCounted("the verify sink's counts against the generator's ledger (no records leave consumerd)"),
        json!({ "ledger_records": acknowledged.len(), "verify_received": summary.u64("received"), "verify_duplicated": summary.u64("duplicated") }),
    );
    assert_eq!(acknowledged.len() as u64, RECORDS, "the generator published every record");
    assert_eq!(
        (summary.u64("received"), summary.u64("duplicated"), summary.u64("lost")),
        (RECORDS, 0, 0),
        "{}",
        summary.0
    );
    finished.assert_success();
}

/// A metrics address that cannot be bound stops the whole daemon, the ring thread
/// first, with the error and `STOPPING=1`, rather than ending the process under it.
#[test]
fn metrics_bind_error_stops_the_daemon_cleanly() {
    let fx = Fixture::new("metrics-bind");
    let location = fx.location(Backend::Posix);
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("take a port");
    let addr = taken.local_addr().expect("its address");
    let config =
        format!("{}[metrics]\nlisten = \"{addr}\"\n", generator(&location, &["capacity = \"1MiB\""], 0, "64", 100));
    let mut p = Daemon::launch(&fx, Kind::Producer, &config).start(&fx);
    p.wait_for(&fx, "STOPPING=1");
    let finished = p.wait(&fx);
    assert_ne!(finished.status.code(), Some(0), "{finished:?}");
    assert!(finished.stderr.contains("binding the metrics endpoint"), "{}", finished.stderr);
}

/// Between two runs (`on_unlinked = "recreate"`, waiting for the segment to come back)
/// the watchdog is still fed, and SIGTERM ends the wait.
#[test]
fn watchdog_is_fed_between_runs_while_the_segment_is_re_created() {
    let fx = Fixture::new("wd-between");
    let location = fx.location(Backend::Posix);
    let segment = Segment::builder(location.clone()).capacity(1 << 20).create().expect("create the segment");
    let config = format!(
        "{}[sink]\nkind = \"discard\"\n",
        segment_section(&location, &["wait_for_segment = \"60s\"", "on_unlinked = \"recreate\""])
    );
    let mut c = Daemon::launch(&fx, Kind::Consumer, &config).env("WATCHDOG_USEC", "200000").start(&fx);
    c.wait_for(&fx, "READY=1");
    drop(segment);
    Segment::unlink(&location).expect("unlink the segment");
    c.wait_log(&fx, "waiting for it to be re-created");
    let since = Instant::now();
    // A condition, not a fixed second: on a loaded machine the pings may come late, and
    // what matters is that they keep coming while the daemon waits.
    wait_until(daemons::PATIENCE, "four watchdog pings while waiting for re-creation", || pings_since(&c, since) >= 4);
    let waited = since.elapsed();
    let pings = pings_since(&c, since);
    fx.assert_running(c.proc());
    let asked = Instant::now();
    c.signal(&fx, Signal::SIGTERM);
    let finished = fx.wait(c.proc(), Duration::from_secs(3));
    let took = asked.elapsed();
    report(
        "watchdog_is_fed_between_runs_while_the_segment_is_re_created",
        "on_unlinked = recreate, segment gone: WATCHDOG=1 pings while waiting (WatchdogSec 0.2 s), then SIGTERM",
        1,
        if finished.status.success() { "pass" } else { "FAIL" },
        &Figures::NoRecords,
        json!({ "watchdog_pings": pings, "waited_ms": waited.as_millis() as u64, "sigterm_to_exit_ms": took.as_millis() as u64 }),
    );
    finished.assert_success();
}
