//! `shmctl`: the operator's tool for shmring segments.
//!
//! Thin by design: parse the command line, call `shm-core`, print, and map every error
//! to a documented exit code (see [`exit`]).

mod bench;
mod cli;
mod create;
mod demo;
mod exit;
mod gc;
mod list;
mod peek;
mod publish;
mod render;
mod stat;
mod target;
mod unlink;

use std::process::ExitCode;

use clap::{CommandFactory, Parser};

use cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { ExitCode::from(exit::USAGE) } else { ExitCode::SUCCESS };
        }
    };
    let result = match cli.command {
        Command::Create(a) => create::run(a),
        Command::Stat(a) => stat::run(a),
        Command::List(a) => list::run(a),
        Command::Unlink(a) => unlink::run(a),
        Command::Gc(a) => gc::run(a),
        Command::Publish(a) => publish::run(a),
        Command::Peek(a) => peek::run(a),
        Command::Demo(a) => demo::run(a),
        Command::Bench(a) => bench::run(a),
        Command::Completions(a) => {
            clap_complete::generate(a.shell, &mut Cli::command(), "shmctl", &mut std::io::stdout());
            Ok(())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("shmctl: {e:#}");
            ExitCode::from(exit::code_of(&e))
        }
    }
}
