//! `shmctl bench numa`: a segment bound to the local NUMA node against one bound to a
//! remote node, with every process pinned to CPUs of one node.
//!
//! For each node with memory, an anonymous segment is created bound to it
//! (`numa_node`, prefaulted) and two things are measured from CPUs of the CPU node:
//! - a two-process spsc stream: a forked producer pinned to one CPU claims, fills and
//!   commits records, this process, pinned to another CPU of the node, reads every byte of
//!   them for `--duration` (records/s and payload GB/s);
//! - copy bandwidth over the segment's memory: one committed record copied into a claim
//!   of the same size, both halves of a `--copy-size` ring, for `--duration`.
//!
//! With one node there is nothing to compare: it says so and measures nothing, unless
//! `--local-only` asks for the local numbers alone.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid, fork};
use serde::Serialize;
use shm_core::placement::{self, format_list};
use shm_core::units::{format_size, parse_size};
use shm_core::{Location, ReadError, Segment};

use crate::exit::{USAGE, refuse};
use crate::stdout::outln;

/// `shmctl bench numa`.
#[derive(Debug, Args)]
pub struct NumaArgs {
    /// How long each measurement runs.
    #[arg(long, default_value = "2s", value_parser = crate::cli::parse_interval)]
    pub duration: Duration,
    /// Payload bytes of each record of the stream.
    #[arg(long, default_value = "64")]
    pub size: String,
    /// Ring capacity of the stream's segment.
    #[arg(long, default_value = "1MiB")]
    pub capacity: String,
    /// Ring capacity of the copy's segment (half of it is copied each pass; keep it well
    /// above the last-level cache).
    #[arg(long, default_value = "64MiB")]
    pub copy_size: String,
    /// Measure the local node alone, also on a one-node machine (no comparison).
    #[arg(long)]
    pub local_only: bool,
    /// Write the results as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
}

/// A node as sysfs describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
struct Node {
    id: u32,
    cpus: Vec<u32>,
    has_memory: bool,
}

/// What to measure: from CPUs of `cpu_node`, memory on each of `memory_nodes` (the
/// local one first).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Plan {
    cpu_node: u32,
    cpus: (usize, usize),
    memory_nodes: Vec<u32>,
}

/// One memory node's numbers.
#[derive(Debug, Clone, Serialize)]
struct Measured {
    memory_node: u32,
    local: bool,
    stream_records_per_s: f64,
    stream_gb_per_s: f64,
    copy_gb_per_s: f64,
}

/// The JSON report.
#[derive(Debug, Serialize)]
struct Report {
    nodes: usize,
    measured: bool,
    /// Each node's CPUs, as a kernel list.
    node_cpus: BTreeMap<u32, String>,
    message: Option<String>,
    cpu_node: Option<u32>,
    cpus: Option<(usize, usize)>,
    record_size: usize,
    capacity: u64,
    copy_size: u64,
    duration_s: f64,
    results: Vec<Measured>,
    /// Remote against local, for each remote node.
    ratios: Vec<Ratio>,
}

/// A remote node's numbers divided by the local node's.
#[derive(Debug, Clone, Serialize)]
struct Ratio {
    memory_node: u32,
    stream: f64,
    copy: f64,
}

/// Runs it.
pub fn run(args: &NumaArgs) -> Result<()> {
    let record_size = usize::try_from(parse_size(&args.size).context("--size")?).context("--size")?;
    let capacity = parse_size(&args.capacity).context("--capacity")?;
    let copy_size = parse_size(&args.copy_size).context("--copy-size")?;
    if record_size == 0 {
        return Err(refuse(USAGE, "--size must be at least 1 byte"));
    }
    let nodes = discover().context("reading the NUMA topology from /sys/devices/system/node")?;
    let allowed = placement::allowed_cpus().context("sched_getaffinity")?;
    let mut report = Report {
        nodes: nodes.len(),
        measured: false,
        node_cpus: nodes.iter().map(|n| (n.id, format_list(&n.cpus))).collect(),
        message: None,
        cpu_node: None,
        cpus: None,
        record_size,
        capacity,
        copy_size,
        duration_s: args.duration.as_secs_f64(),
        results: Vec::new(),
        ratios: Vec::new(),
    };
    let plan = match plan(&nodes, &allowed, args.local_only) {
        Ok(plan) => plan,
        Err(message) => {
            outln!("{message}");
            report.message = Some(message);
            return write_json(args, &report);
        }
    };
    outln!(
        "NUMA: {} node(s); CPUs of node {} (producer on CPU {}, consumer on CPU {}); {record_size}-byte records through a {} ring; copies over a {} ring; {:?} each",
        nodes.len(),
        plan.cpu_node,
        plan.cpus.0,
        plan.cpus.1,
        format_size(capacity),
        format_size(copy_size),
        args.duration
    );
    placement::pin_current_thread(&[plan.cpus.1]).context("pinning to the consumer's CPU")?;
    for &node in &plan.memory_nodes {
        let stream = stream(node, plan.cpus.0, record_size, capacity, args.duration)
            .with_context(|| format!("the stream over memory on node {node}"))?;
        let copy =
            copy(node, copy_size, args.duration).with_context(|| format!("the copy over memory on node {node}"))?;
        report.results.push(Measured {
            memory_node: node,
            local: node == plan.cpu_node,
            stream_records_per_s: stream.0,
            stream_gb_per_s: stream.1,
            copy_gb_per_s: copy,
        });
    }
    report.measured = true;
    report.cpu_node = Some(plan.cpu_node);
    report.cpus = Some(plan.cpus);
    if let Some(local) = report.results.first().cloned() {
        for r in report.results.iter().skip(1) {
            report.ratios.push(Ratio {
                memory_node: r.memory_node,
                stream: r.stream_records_per_s / local.stream_records_per_s,
                copy: r.copy_gb_per_s / local.copy_gb_per_s,
            });
        }
    }
    print_table(&report)?;
    write_json(args, &report)
}

/// Every online node, its CPUs, and whether it has memory.
fn discover() -> std::io::Result<Vec<Node>> {
    let with_memory = placement::memory_nodes()?;
    placement::online_nodes()?
        .into_iter()
        .map(|id| Ok(Node { id, cpus: placement::node_cpus(id)?, has_memory: with_memory.contains(&id) }))
        .collect()
}

/// Chooses the CPU node (the first with CPUs this process may use) and the memory nodes
/// to compare, or says why there is nothing to compare.
fn plan(nodes: &[Node], allowed: &[usize], local_only: bool) -> Result<Plan, String> {
    let usable = |n: &Node| -> Vec<usize> {
        n.cpus.iter().map(|&c| c as usize).filter(|c| allowed.contains(c)).collect::<Vec<_>>()
    };
    let describe = |n: &Node| format!("node{}: cpus {}", n.id, format_list(&n.cpus));
    let cpu_node = nodes.iter().find(|n| n.has_memory && !usable(n).is_empty()).or_else(|| {
        // A node with CPUs but no memory still has a nearest memory node; keep it simple:
        // any node whose CPUs we may use.
        nodes.iter().find(|n| !usable(n).is_empty())
    });
    let Some(cpu_node) = cpu_node else {
        return Err(format!(
            "no NUMA node has a CPU this process may use (allowed: {}); nothing measured",
            format_list(allowed)
        ));
    };
    let remote: Vec<u32> = nodes.iter().filter(|n| n.has_memory && n.id != cpu_node.id).map(|n| n.id).collect();
    if remote.is_empty() && !local_only {
        let all: Vec<String> = nodes.iter().map(describe).collect();
        let needs = if nodes.len() == 1 { "two" } else { "two with memory, and only one has" };
        let plural = if nodes.len() == 1 { "" } else { "s" };
        return Err(format!(
            "{} NUMA node{plural} ({}): a local-vs-remote comparison needs {needs}; nothing measured",
            nodes.len(),
            all.join("; ")
        ));
    }
    let cpus = usable(cpu_node);
    let consumer = cpus[0];
    let producer = cpus.get(1).copied().unwrap_or(consumer);
    let mut memory_nodes = vec![cpu_node.id];
    if !local_only {
        memory_nodes.extend(remote);
    }
    Ok(Plan { cpu_node: cpu_node.id, cpus: (producer, consumer), memory_nodes })
}

/// The stream over memory on `node`: (records/s, payload GB/s), measured by the consumer
/// (this process) from its first record for `duration`.
fn stream(node: u32, producer_cpu: usize, size: usize, capacity: u64, duration: Duration) -> Result<(f64, f64)> {
    let segment = Segment::builder(Location::Anon).capacity(capacity).numa_node(Some(node)).prefault(true).create()?;
    let max = segment.geometry().max_record;
    if size as u64 > max {
        return Err(refuse(USAGE, format!("--size {size} is larger than the ring's largest record ({max} bytes)")));
    }
    // SAFETY: shmctl is single-threaded (no thread has been started), so the child
    // inherits no lock another thread holds; it leaves only through `_exit`.
    let child = match unsafe { fork() }.context("fork")? {
        ForkResult::Child => {
            let code = std::panic::catch_unwind(|| produce(&segment, producer_cpu, size)).map_or(70, |r| {
                r.map_or_else(
                    |e| {
                        eprintln!("shmctl bench numa: producer: {e:#}");
                        1
                    },
                    |()| 0,
                )
            });
            // SAFETY: `_exit` ends the child at once, without running the parent's
            // destructors or atexit handlers.
            unsafe { libc::_exit(code) }
        }
        ForkResult::Parent { child } => child,
    };
    let result = consume(&segment, size, duration, child);
    // The producer runs until stopped: a kill -9 mid-claim leaves the ring consistent.
    let _ = nix::sys::signal::kill(child, nix::sys::signal::Signal::SIGKILL);
    let _ = waitpid(child, None);
    result
}

/// The forked producer: pinned, then claims and commits records until killed.
fn produce(segment: &Segment, cpu: usize, size: usize) -> Result<()> {
    placement::pin_current_thread(&[cpu]).context("pinning the producer")?;
    let mut producer = segment.producer()?;
    let mut seq = 0u64;
    loop {
        let mut claim = producer.claim(size, Some(Duration::from_secs(10)))?;
        // Write every byte, so GB/s is bytes that went through the memory.
        claim.fill(seq as u8);
        claim.commit()?;
        seq += 1;
    }
}

fn consume(segment: &Segment, size: usize, duration: Duration, child: Pid) -> Result<(f64, f64)> {
    let mut consumer = segment.consumer()?;
    let mut started: Option<Instant> = None;
    let mut records = 0u64;
    loop {
        match consumer.read(Some(Duration::from_millis(200))) {
            Ok(record) => {
                // Read every byte, as the producer wrote every byte.
                std::hint::black_box(checksum(&record));
            }
            Err(ReadError::TimedOut(_)) => {
                if !matches!(waitpid(child, Some(WaitPidFlag::WNOHANG)), Ok(WaitStatus::StillAlive)) {
                    bail!("the producer exited early");
                }
                continue;
            }
            Err(e) => return Err(e.into()),
        }
        let Some(start) = started else {
            started = Some(Instant::now());
            continue;
        };
        records += 1;
        // Look at the clock every 1024 records: cheap, and at most ~100 µs late.
        if records % 1024 == 0 {
            let elapsed = start.elapsed();
            if elapsed >= duration {
                let per_s = records as f64 / elapsed.as_secs_f64();
                return Ok((per_s, per_s * size as f64 / 1e9));
            }
        }
    }
}

/// XOR of the bytes, eight at a time (the compiler vectorises it): a read of every byte
/// that costs little more than the memory traffic.
fn checksum(bytes: &[u8]) -> u64 {
    let chunks = bytes.chunks_exact(8);
    let tail = chunks.remainder().iter().fold(0u64, |a, &b| a ^ u64::from(b));
    chunks.fold(tail, |a, c| a ^ u64::from_ne_bytes(c.try_into().unwrap_or([0; 8])))
}

/// Copy bandwidth over memory on `node` (GB/s copied): a committed record of half the
/// ring copied into a claim of the other half.
fn copy(node: u32, copy_size: u64, duration: Duration) -> Result<f64> {
    let segment = Segment::builder(Location::Anon).capacity(copy_size).numa_node(Some(node)).prefault(true).create()?;
    let len = usize::try_from(segment.geometry().max_record).context("--copy-size")?;
    let mut producer = segment.producer()?;
    let mut consumer = segment.consumer()?;
    let mut first = producer.try_claim(len)?;
    first.fill(0xa5);
    first.commit()?;
    let source = consumer.try_read()?;
    let mut target = producer.try_claim(len)?;
    let started = Instant::now();
    let mut copies = 0u64;
    while started.elapsed() < duration {
        target.copy_from_slice(&source);
        std::hint::black_box(&mut *target);
        copies += 1;
    }
    Ok(copies as f64 * len as f64 / started.elapsed().as_secs_f64() / 1e9)
}

fn print_table(report: &Report) -> Result<()> {
    outln!("{:<16} {:>14} {:>13} {:>11}", "memory", "stream Mrec/s", "stream GB/s", "copy GB/s");
    for r in &report.results {
        let label = format!("node{} ({})", r.memory_node, if r.local { "local" } else { "remote" });
        outln!(
            "{label:<16} {:>14.2} {:>13.3} {:>11.2}",
            r.stream_records_per_s / 1e6,
            r.stream_gb_per_s,
            r.copy_gb_per_s
        );
    }
    for r in &report.ratios {
        let label = format!("node{}/local", r.memory_node);
        outln!("{label:<16} {:>14.2} {:>13.2} {:>11.2}", r.stream, r.stream, r.copy);
    }
    Ok(())
}

fn write_json(args: &NumaArgs, report: &Report) -> Result<()> {
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: u32, cpus: &[u32], has_memory: bool) -> Node {
        Node { id, cpus: cpus.to_vec(), has_memory }
    }

    #[test]
    fn one_node_says_so_and_plans_nothing() {
        let message = plan(&[node(0, &[0, 1], true)], &[0, 1], false).expect_err("one node");
        assert_eq!(message, "1 NUMA node (node0: cpus 0-1): a local-vs-remote comparison needs two; nothing measured");
        let local = plan(&[node(0, &[0, 1], true)], &[0, 1], true).expect("--local-only");
        assert_eq!(local, Plan { cpu_node: 0, cpus: (1, 0), memory_nodes: vec![0] });
    }

    #[test]
    fn two_nodes_compare_local_with_remote_on_allowed_cpus() {
        let nodes = [node(0, &[0, 1, 2, 3], true), node(1, &[4, 5, 6, 7], true)];
        assert_eq!(
            plan(&nodes, &[0, 1, 2, 3, 4, 5, 6, 7], false),
            Ok(Plan { cpu_node: 0, cpus: (1, 0), memory_nodes: vec![0, 1] })
        );
        // Only node 1's CPUs allowed (taskset): node 1 is local, node 0 remote.
        assert_eq!(plan(&nodes, &[6], false), Ok(Plan { cpu_node: 1, cpus: (6, 6), memory_nodes: vec![1, 0] }));
        // A memoryless node is never a memory node.
        let nodes = [node(0, &[0, 1], true), node(1, &[2, 3], false), node(2, &[], true)];
        assert_eq!(plan(&nodes, &[0, 1, 2, 3], false).map(|p| p.memory_nodes), Ok(vec![0, 2]));
        let nodes = [node(0, &[0, 1], true), node(1, &[2, 3], false)];
        let message = plan(&nodes, &[0, 1, 2, 3], false).expect_err("one node with memory");
        assert!(message.contains("2 NUMA nodes") && message.contains("only one has"), "{message}");
    }
}
