//! `producerd` feeding `consumerd`, both real processes, end to end.
//!
//! - `generator_to_verify_*`: the generator into the verify sink on every named backend:
//!   both become ready, stream for a second, stop on `SIGTERM` with exit 0, and the
//!   verify summary counts every record the segment says was produced, none lost,
//!   duplicated, reordered or corrupt.
//! - `stdin_*`, `udp_*`, `unix_*`: the other sources into the file sink (a UDP datagram
//!   larger than the ring's maximum record is dropped and counted in `source_errors`): the file holds
//!   exactly what was sent, in order (the `lines` format, and the `binary` format, which
//!   carries any bytes).
//! - `consumer_started_first_waits_for_the_segment`: `create = "never"` with
//!   `wait_for_segment`: the consumer waits (and says so, and is not ready) until the
//!   producer creates the segment.
//! - `sigterm_*`: a stopping consumer drains what is in the ring: records a producer left
//!   there before the consumer started, and records behind a sink that is not taking
//!   them yet.

use std::io::Write;
use std::net::UdpSocket;
use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use shm_core::Location;
use shmring_tests::daemons::{
    self, Daemon, Kind, binary_frames, generator, observe, observe_when_created, segment_section, split_binary,
    toml_string, wait_drained, wait_produced,
};
use shmring_tests::{Backend, Fixture, wait_until};

/// A consumer config: the verify sink on `location`.
fn verify(location: &Location) -> String {
    format!("{}[sink]\nkind = \"verify\"\n", segment_section(location, &["wait_for_segment = \"10s\""]))
}

/// A consumer config: the file sink into `path` on `location`.
fn file_sink(location: &Location, path: &std::path::Path, format: &str) -> String {
    format!(
        "{}[sink]\nkind = \"file\"\npath = {}\nformat = \"{format}\"\n",
        segment_section(location, &["wait_for_segment = \"10s\""]),
        toml_string(&path.display().to_string())
    )
}

/// A number a daemon logged as `key=<n>` on the line with `message`.
#[track_caller]
fn logged(log: &str, message: &str, key: &str) -> u64 {
    let line = log.lines().find(|l| l.contains(message)).unwrap_or_else(|| panic!("no {message:?} in the log:\n{log}"));
    let value = line.split_whitespace().find_map(|w| w.strip_prefix(&format!("{key}=")));
    value.and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("no {key}=<number> in {line:?}"))
}

fn generator_to_verify(backend: Backend) {
    let fx = Fixture::new(&format!("gen-{}", backend.name()));
    let location = fx.location(backend);
    let mut producer = Daemon::launch(&fx, Kind::Producer, &generator(&location, 50_000)).start(&fx);
    let mut consumer = Daemon::launch(&fx, Kind::Consumer, &verify(&location)).start(&fx);
    producer.wait_for(&fx, "READY=1");
    consumer.wait_for(&fx, "READY=1");
    // The point is a stream that has run for a while: 10 000 records at least.
    wait_produced(&observe(&location), 10_000);

    let p = producer.stop(&fx);
    p.assert_success();
    let c = consumer.stop(&fx);
    c.assert_success();

    let stats = observe(&location).stats();
    let summary = consumer.summary();
    summary.assert_verified(stats.total_produced);
    assert_eq!(stats.total_consumed, stats.total_produced, "{stats:#?}");
    assert_eq!(logged(&p.stderr, "stopped", "committed"), stats.total_produced, "producer's count vs the segment's");
    assert!(stats.total_produced > 5_000, "the stream hardly ran: {stats:#?}");
}

#[test]
fn generator_to_verify_posix() {
    generator_to_verify(Backend::Posix);
}

#[test]
fn generator_to_verify_sysv() {
    generator_to_verify(Backend::Sysv);
}

#[test]
fn generator_to_verify_file() {
    generator_to_verify(Backend::File);
}

#[test]
fn stdin_lines_to_file() {
    let fx = Fixture::new("stdin-lines");
    let location = fx.location(Backend::Posix);
    let out = fx.path("records.log");
    let input = daemons::fifo(&fx, "stdin");
    let producer_config = format!("{}[source]\nkind = \"stdin\"\n", segment_section(&location, &[]));
    let mut producer = Daemon::launch(&fx, Kind::Producer, &producer_config).stdin_from(&input).start(&fx);
    let mut stdin = daemons::open_fifo_writer(&input);
    producer.wait_for(&fx, "READY=1");
    let consumer = Daemon::ready(&fx, Kind::Consumer, &file_sink(&location, &out, "lines"));

    let long = "x".repeat(10_000);
    let first: Vec<String> = (0..500).map(|i| format!("line {i}: spaces  and\ttabs, ünïcödé")).collect();
    let second: Vec<String> = ["".to_owned(), long, "after an empty line".to_owned()]
        .into_iter()
        .chain((500..1000).map(|i| format!("line {i}")))
        .collect();
    // Half now, and the file has it while the producer still waits for more...
    stdin.write_all(first.iter().map(|l| format!("{l}\n")).collect::<String>().as_bytes()).expect("write stdin");
    let expected_first: String = first.iter().map(|l| format!("{l}\n")).collect();
    wait_until(daemons::PATIENCE, "the first half is in the file", || {
        std::fs::read_to_string(&out).is_ok_and(|t| t == expected_first)
    });
    assert!(fx.is_running(producer.proc()), "the producer ended before its stdin did");
    // ...then the rest, the last line without its newline, and EOF: the producer ends by itself.
    let rest: String = second.join("\n");
    stdin.write_all(rest.as_bytes()).expect("write stdin");
    drop(stdin);
    let p = producer.wait(&fx);
    p.assert_success();
    assert!(p.stderr.contains("stdin ended"), "{}", p.stderr);

    let expected: String = first.iter().chain(&second).map(|l| format!("{l}\n")).collect();
    wait_until(daemons::PATIENCE, "every line is in the file", || {
        std::fs::read(&out).is_ok_and(|t| t.len() >= expected.len())
    });
    consumer.stop(&fx).assert_success();
    let written = std::fs::read_to_string(&out).expect("read the file");
    assert!(
        written == expected,
        "the file differs from the input: {} bytes, {} expected",
        written.len(),
        expected.len()
    );
    assert_eq!(consumer.summary().u64("records"), 1003);
}

#[test]
fn stdin_binary_to_file() {
    let fx = Fixture::new("stdin-binary");
    let location = fx.location(Backend::Posix);
    let out = fx.path("records.bin");
    let input = daemons::fifo(&fx, "stdin");
    let producer_config =
        format!("{}[source]\nkind = \"stdin\"\nformat = \"binary\"\n", segment_section(&location, &[]));
    let mut producer = Daemon::launch(&fx, Kind::Producer, &producer_config).stdin_from(&input).start(&fx);
    let mut stdin = daemons::open_fifo_writer(&input);
    producer.wait_for(&fx, "READY=1");
    let consumer = Daemon::ready(&fx, Kind::Consumer, &file_sink(&location, &out, "binary"));

    // Every byte value, newlines inside records, an empty record, a large one.
    let mut records: Vec<Vec<u8>> = vec![(0..=255u8).collect(), b"two\nlines\n".to_vec(), Vec::new(), vec![b'\n'; 3]];
    records.push((0..20_000u32).map(|i| (i * 7) as u8).collect());
    records.extend((0..2000u32).map(|i| i.to_le_bytes().repeat((i % 17) as usize)));
    let framed = binary_frames(records.iter().map(Vec::as_slice));
    // Written in odd-sized pieces, so frames can reach the producer split across its reads.
    for piece in framed.chunks(777) {
        stdin.write_all(piece).expect("write stdin");
    }
    // A record cut short by EOF is dropped (and said so), not committed half.
    stdin.write_all(&100u32.to_le_bytes()).and_then(|()| stdin.write_all(b"cut short")).expect("write stdin");
    drop(stdin);
    let p = producer.wait(&fx);
    p.assert_success();
    assert!(p.stderr.contains("partial record was dropped"), "{}", p.stderr);

    wait_until(daemons::PATIENCE, "every record is in the file", || {
        std::fs::metadata(&out).is_ok_and(|m| m.len() >= framed.len() as u64)
    });
    consumer.stop(&fx).assert_success();
    let written = std::fs::read(&out).expect("read the file");
    // The binary sink frames records exactly as the binary source reads them.
    assert_eq!(split_binary(&written).len(), records.len());
    assert!(written == framed, "the file differs from the input: {} bytes, {} expected", written.len(), framed.len());
}

#[test]
fn udp_to_file() {
    const DATAGRAMS: u64 = 3000;
    const CHUNK: u64 = 100;
    const OVERSIZED_AFTER_CHUNK: u64 = 10;
    let fx = Fixture::new("udp");
    let location = fx.location(Backend::Posix);
    let out = fx.path("records.log");
    let port = daemons::free_udp_port();
    // A 1 KiB maximum record, so that one datagram can be too large for the ring.
    let producer_config = format!(
        "{}[source]\nkind = \"udp\"\nbind = \"127.0.0.1:{port}\"\n",
        segment_section(&location, &["max_record = \"1KiB\""])
    );
    let producer = Daemon::ready(&fx, Kind::Producer, &producer_config);
    let consumer = Daemon::ready(&fx, Kind::Consumer, &file_sink(&location, &out, "lines"));
    // producerd binds its source before it says READY=1.
    assert!(daemons::udp_port_bound(port), "producerd is ready but UDP port {port} is not bound");

    let sender = UdpSocket::bind("127.0.0.1:0").expect("bind a sender");
    sender.connect(("127.0.0.1", port)).expect("connect");
    let ring = observe(&location);
    // Loopback UDP drops only when the receive buffer overflows: sending in chunks of 100
    // small datagrams and waiting until each chunk is in the ring keeps it far from that.
    for chunk in 0..DATAGRAMS / CHUNK {
        for i in chunk * CHUNK..(chunk + 1) * CHUNK {
            sender.send(format!("datagram {i} {}", "u".repeat((i % 50) as usize)).as_bytes()).expect("send");
        }
        if chunk == OVERSIZED_AFTER_CHUNK {
            // Truncated by the ring's maximum: dropped and counted, the stream goes on.
            sender.send(&[b'x'; 2048]).expect("send the oversized datagram");
        }
        wait_produced(&ring, (chunk + 1) * CHUNK);
    }
    wait_drained(&ring);
    let stopped = producer.stop(&fx);
    stopped.assert_success();
    consumer.stop(&fx).assert_success();

    assert_eq!(logged(&stopped.stderr, "stopped", "source_errors"), 1, "the oversized datagram is counted once");
    assert_eq!(ring.stats().total_produced, DATAGRAMS, "one datagram, one record, and none for the oversized one");
    let expected: String =
        (0..DATAGRAMS).map(|i| format!("datagram {i} {}\n", "u".repeat((i % 50) as usize))).collect();
    let written = std::fs::read_to_string(&out).expect("read the file");
    assert!(
        written == expected,
        "the file differs from what was sent: {} bytes, {} expected",
        written.len(),
        expected.len()
    );
}

#[test]
fn unix_datagrams_to_file() {
    const DATAGRAMS: u32 = 3000;
    let fx = Fixture::new("unix");
    let location = fx.location(Backend::Posix);
    let out = fx.path("records.bin");
    let socket = fx.path("source.sock");
    let producer_config = format!(
        "{}[source]\nkind = \"unix\"\npath = {}\n",
        segment_section(&location, &[]),
        toml_string(&socket.display().to_string())
    );
    let producer = Daemon::ready(&fx, Kind::Producer, &producer_config);
    let consumer = Daemon::ready(&fx, Kind::Consumer, &file_sink(&location, &out, "binary"));
    assert!(socket.exists(), "producerd is ready but {} is not bound", socket.display());

    // A Unix datagram sender blocks while the receiver's queue is full: nothing drops.
    let sender = UnixDatagram::unbound().expect("a socket");
    let records: Vec<Vec<u8>> = (0..DATAGRAMS).map(|i| [i.to_le_bytes().as_slice(), b"\n\0bytes"].concat()).collect();
    for r in &records {
        sender.send_to(r, &socket).expect("send");
    }
    let ring = observe(&location);
    wait_produced(&ring, u64::from(DATAGRAMS));
    wait_drained(&ring);
    producer.stop(&fx).assert_success();
    assert!(!socket.exists(), "producerd left its socket behind");
    consumer.stop(&fx).assert_success();

    let written = std::fs::read(&out).expect("read the file");
    assert!(written == binary_frames(records.iter().map(Vec::as_slice)), "the file differs from what was sent");
}

#[test]
fn consumer_started_first_waits_for_the_segment() {
    const RECORDS: u64 = 20_000;
    let fx = Fixture::new("consumer-first");
    let location = fx.location(Backend::Posix);
    let consumer_config = format!(
        "{}[sink]\nkind = \"verify\"\n",
        segment_section(&location, &["create = \"never\"", "wait_for_segment = \"20s\""])
    );
    let mut consumer = Daemon::launch(&fx, Kind::Consumer, &consumer_config).start(&fx);
    consumer.wait_log(&fx, "waiting for the segment to appear");
    assert!(
        !consumer.notifications().iter().any(|(_, d)| d.lines().any(|l| l == "READY=1")),
        "ready before it had a segment: {:?}",
        consumer.notifications()
    );
    assert!(
        shm_core::Segment::builder(location.clone()).read_only().open().is_err(),
        "the consumer created the segment"
    );

    let producer_config = format!(
        "{}[source]\nkind = \"generator\"\ncount = {RECORDS}\n",
        segment_section(&location, &["capacity = \"256KiB\""])
    );
    let producer = Daemon::launch(&fx, Kind::Producer, &producer_config).start(&fx);
    consumer.wait_for(&fx, "READY=1");
    let p = producer.wait(&fx);
    p.assert_success();
    assert!(p.stderr.contains("generator finished"), "{}", p.stderr);
    let ring = observe_when_created(&location);
    wait_drained(&ring);
    consumer.stop(&fx).assert_success();
    consumer.summary().assert_verified(RECORDS);
    assert_eq!(ring.stats().total_produced, RECORDS);
}

#[test]
fn sigterm_drains_what_the_producer_left_in_the_ring() {
    const RECORDS: u64 = 40_000;
    let fx = Fixture::new("drain-left");
    let location = fx.location(Backend::Posix);
    // 40 000 records of 64 bytes (72 framed) fit in 4 MiB: the producer never waits.
    let producer_config = format!(
        "{}[source]\nkind = \"generator\"\ncount = {RECORDS}\n",
        segment_section(&location, &["capacity = \"4MiB\"", "create = \"if-missing\""])
    );
    let producer = Daemon::launch(&fx, Kind::Producer, &producer_config).start(&fx);
    producer.wait(&fx).assert_success();
    let ring = observe(&location);
    let before = ring.stats();
    assert_eq!((before.total_produced, before.total_consumed), (RECORDS, 0), "{before:#?}");

    let consumer = Daemon::ready(&fx, Kind::Consumer, &verify(&location));
    let c = consumer.stop(&fx);
    c.assert_success();
    assert!(c.stderr.contains("drained"), "{}", c.stderr);
    consumer.summary().assert_verified(RECORDS);
    let after = ring.stats();
    assert_eq!(after.read_cursor, after.write_cursor, "{after:#?}");
}

/// A consumer whose sink is a Unix socket that nobody reads yet.
fn consumer_behind_a_stalled_socket(fx: &Fixture, location: &Location, drain_timeout: &str) -> (Daemon, UnixDatagram) {
    let target = fx.path("sink.sock");
    let receiver = UnixDatagram::bind(&target).expect("bind the sink's target");
    let config = format!(
        "{}[sink]\nkind = \"unix\"\ntarget = {}\n[shutdown]\ndrain_timeout = \"{drain_timeout}\"\n",
        segment_section(location, &["wait_for_segment = \"10s\""]),
        toml_string(&target.display().to_string())
    );
    let consumer = Daemon::ready(fx, Kind::Consumer, &config);
    // Its first record shows it is sending; a few more fill the socket's queue, and then
    // it waits in a send, in the middle of its first batch.
    receiver.set_read_timeout(Some(daemons::PATIENCE)).expect("a timeout");
    let mut buf = [0u8; 256];
    let n = receiver.recv(&mut buf).expect("the consumer sends its first record");
    assert_eq!(daemons::generator_seq(&buf[..n]), Some(0));
    (consumer, receiver)
}

/// Records a producer with `count = records` leaves in a ring of 4 MiB, no consumer attached.
fn fill_ring(fx: &Fixture, location: &Location, records: u64) {
    let config = format!(
        "{}[source]\nkind = \"generator\"\ncount = {records}\n",
        segment_section(location, &["capacity = \"4MiB\""])
    );
    Daemon::launch(fx, Kind::Producer, &config).start(fx).wait(fx).assert_success();
}

#[test]
fn sigterm_drains_the_ring_behind_a_slow_sink() {
    const RECORDS: u64 = 5000;
    let fx = Fixture::new("drain-slow");
    let location = fx.location(Backend::Posix);
    fill_ring(&fx, &location, RECORDS);
    let (mut consumer, receiver) = consumer_behind_a_stalled_socket(&fx, &location, "30s");
    let ring = observe(&location);
    consumer.signal(&fx, nix::sys::signal::Signal::SIGTERM);
    consumer.wait_for(&fx, "STOPPING=1");
    let unread = ring.stats();
    assert!(unread.read_cursor < unread.write_cursor, "nothing left to drain: {unread:#?}");

    let mut buf = [0u8; 256];
    for expected in 1..RECORDS {
        let n = receiver.recv(&mut buf).unwrap_or_else(|e| panic!("record {expected} never came: {e}"));
        assert_eq!(daemons::generator_seq(&buf[..n]), Some(expected), "record {expected}");
    }
    consumer.wait(&fx).assert_success();
    let after = ring.stats();
    assert_eq!((after.total_consumed, after.read_cursor), (RECORDS, after.write_cursor), "{after:#?}");
}

#[test]
fn drain_timeout_bounds_the_shutdown_even_when_the_sink_blocks() {
    const RECORDS: u64 = 5000;
    let fx = Fixture::new("drain-bound");
    let location = fx.location(Backend::Posix);
    fill_ring(&fx, &location, RECORDS);
    let (consumer, _receiver) = consumer_behind_a_stalled_socket(&fx, &location, "500ms");
    let ring = observe(&location);
    consumer.signal(&fx, nix::sys::signal::Signal::SIGTERM);
    // "drain what is in the ring for at most drain_timeout": 500 ms, and generous slack.
    wait_until(
        Duration::from_secs(5),
        "consumerd exits, at most 5 s after SIGTERM with drain_timeout = \"500ms\" and a sink that blocks",
        || !fx.is_running(consumer.proc()),
    );
    consumer.wait(&fx).assert_success();
    let after = ring.stats();
    assert!(after.read_cursor < after.write_cursor, "the rest should stay in the ring: {after:#?}");
}
