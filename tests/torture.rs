//! The kill -9 torture that `reliability_faults` runs on each ring kind: every daemon of
//! the ring (each a [`Victim`]) is a candidate, one of them is `SIGKILL`ed at a random
//! moment and started again, over and over ([`kill_and_restart`]); the kind's test then
//! lets the stream run on, stops the daemons cleanly and compares its ledgers with what
//! the sinks wrote.
//!
//! Where a kill lands is chosen by time: mostly any daemon, 50-300 ms after the previous
//! kill; one time in eight the daemon started last, 0-5 ms after its start, while it may
//! still be attaching or recovering. Each kill must hit a running daemon
//! ([`Daemon::kill`] asserts it), so every kill counted is one that happened.

use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{Map, Value, json};

use shm_core::Segment;

use crate::daemons::{Daemon, Kind, Launch, PATIENCE};
use crate::fixture::Fixture;
use crate::records::splitmix64;

/// The environment variable that sets the number of kills of every torture (the long
/// mode: `SHMRING_TORTURE_KILLS=1000`).
pub const KILLS_VAR: &str = "SHMRING_TORTURE_KILLS";

/// The number of kills a torture makes: [`KILLS_VAR`] if set, else `default`.
#[track_caller]
pub fn kills_wanted(default: u64) -> u64 {
    match std::env::var(KILLS_VAR) {
        Ok(v) => v.parse().unwrap_or_else(|_| panic!("{KILLS_VAR}={v:?} is not a number")),
        Err(_) => default,
    }
}

/// One daemon of the torture: how to start it again, the one running now, and how often
/// it was killed.
#[derive(Debug)]
pub struct Victim {
    /// Its name in the report (`producer`, `consumer_a`, `worker_1`): the row's
    /// `kills_<role>`.
    pub role: String,
    launch: Launch,
    /// The daemon running now.
    pub daemon: Daemon,
    /// How often it was killed.
    pub kills: u64,
}

impl Victim {
    /// Starts `launch` and waits for its `READY=1`.
    #[track_caller]
    pub fn ready(fx: &Fixture, role: &str, launch: Launch) -> Victim {
        let mut daemon = launch.start(fx);
        daemon.wait_for(fx, "READY=1");
        Victim { role: role.to_owned(), launch, daemon, kills: 0 }
    }

    /// Which daemon it is.
    pub fn kind(&self) -> Kind {
        self.launch.kind()
    }

    /// Waits for `READY=1` unless the daemon running now has sent it already (one
    /// restarted by the last kill may still be starting).
    #[track_caller]
    pub fn ensure_ready(&mut self, fx: &Fixture) {
        if !self.daemon.has_been_ready() {
            self.daemon.wait_for(fx, "READY=1");
        }
    }
}

/// What [`kill_and_restart`] did.
#[derive(Debug, Clone)]
pub struct Kills {
    /// Kills in all.
    pub total: u64,
    /// `(role, kills)` of each victim, in the victims' order.
    pub by_role: Vec<(String, u64)>,
    /// Kills of a daemon that had not sent `READY=1` yet.
    pub before_ready: u64,
    /// How long the kills took.
    pub elapsed: Duration,
    /// The seed of the random choices (`SHMRING_TEST_SEED` repeats them).
    pub seed: u64,
}

impl Kills {
    /// The kills of the victims whose role starts with `prefix` (`"worker"`).
    pub fn of(&self, prefix: &str) -> u64 {
        self.by_role.iter().filter(|(r, _)| r.starts_with(prefix)).map(|(_, k)| k).sum()
    }

    /// The row's kill columns: `kills_<role>` for each victim, `kills_before_ready`,
    /// `seconds` and `seed`, followed by `more`'s keys.
    pub fn columns(&self, more: Value) -> Value {
        let mut fields: Map<String, Value> =
            self.by_role.iter().map(|(role, kills)| (format!("kills_{role}"), json!(kills))).collect();
        fields.insert("kills_before_ready".into(), json!(self.before_ready));
        fields.insert("seconds".into(), json!(self.elapsed.as_secs_f64()));
        fields.insert("seed".into(), json!(self.seed));
        if let Value::Object(more) = more {
            fields.extend(more);
        }
        Value::Object(fields)
    }

    /// Panics unless every victim was killed at least once.
    #[track_caller]
    pub fn assert_every_role_killed(&self) {
        assert!(self.by_role.iter().all(|(_, k)| *k > 0), "every role must have been killed: {:?}", self.by_role);
    }
}

/// `SIGKILL`s one of `victims` at a random moment and starts it again, `wanted` times,
/// with the random choices drawn from `seed`; then waits until every victim is ready
/// again. `victims` are in the order they were started: the last one is the first
/// candidate for a kill right after its start.
#[track_caller]
pub fn kill_and_restart(fx: &Fixture, victims: &mut [Victim], wanted: u64, seed: u64) -> Kills {
    assert!(!victims.is_empty(), "nothing to kill");
    let mut rng = seed;
    let mut random = |bound: usize| {
        rng = splitmix64(rng);
        usize::try_from(rng % bound as u64).expect("below a usize bound")
    };
    let started = Instant::now();
    let (mut total, mut before_ready) = (0u64, 0u64);
    let mut last_started = victims.len() - 1;
    // A dropped `Daemon` waits for its notification reader to notice (up to 50 ms):
    // another thread drops them, so that a restart is not delayed and an early kill
    // really lands early.
    let (graveyard, bodies) = mpsc::channel::<Daemon>();
    let buried = std::thread::spawn(move || bodies.into_iter().for_each(drop));
    while total < wanted {
        // Sleeping is the point: the time is where the kill lands.
        let (index, delay) =
            if random(8) == 0 { (last_started, random(6)) } else { (random(victims.len()), 50 + random(251)) };
        std::thread::sleep(Duration::from_millis(delay as u64));
        let victim = &mut victims[index];
        if !victim.daemon.has_been_ready() {
            before_ready += 1;
        }
        // Asserts that it was still running and died of SIGKILL: every kill counts.
        victim.daemon.kill(fx);
        victim.kills += 1;
        total += 1;
        let killed = std::mem::replace(&mut victim.daemon, victim.launch.start(fx));
        graveyard.send(killed).expect("the graveyard outlives the loop");
        last_started = index;
    }
    drop(graveyard);
    buried.join().expect("dropping killed daemons");
    let elapsed = started.elapsed();
    for victim in victims.iter_mut() {
        victim.ensure_ready(fx);
    }
    Kills { total, by_role: victims.iter().map(|v| (v.role.clone(), v.kills)).collect(), before_ready, elapsed, seed }
}

/// After the kills: the stream runs on until `ring` counts `more` records beyond what it
/// had, the producers stop cleanly, `drained` waits until the consumers have taken what
/// the ring still holds, and the consumers stop cleanly.
#[track_caller]
pub fn run_on_and_stop(fx: &Fixture, ring: &Segment, victims: &[Victim], more: u64, drained: impl FnOnce()) {
    let target = ring.stats().total_produced + more;
    let deadline = Instant::now() + PATIENCE;
    while ring.stats().total_produced < target {
        if Instant::now() >= deadline {
            // A stream that stopped after the kills: say where, for whoever reads the failure.
            let daemons: String = victims
                .iter()
                .map(|v| {
                    let state = if fx.is_running(v.daemon.proc()) { "running" } else { "NOT running" };
                    let log = v.daemon.log();
                    let tail: Vec<&str> = log.lines().rev().take(8).collect();
                    format!(
                        "--- {} ({state}, killed {} times), last log lines (newest first):\n{}\n",
                        v.role,
                        v.kills,
                        tail.join("\n")
                    )
                })
                .collect();
            panic!(
                "timed out after {PATIENCE:?} waiting until {target} records are produced\n{:#?}\nmpsc: {:#?}\nmpmc: {:#?}\nbroadcast: {:#?}\n{daemons}",
                ring.stats(),
                ring.mpsc_status(),
                ring.mpmc_status(),
                ring.broadcast_status()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let stop = |kind: Kind| {
        for victim in victims.iter().filter(|v| v.kind() == kind) {
            victim.daemon.stop(fx).assert_success();
        }
    };
    stop(Kind::Producer);
    drained();
    stop(Kind::Consumer);
}
