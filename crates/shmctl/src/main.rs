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
mod stdout;
mod target;
mod unlink;

use std::process::ExitCode;

use clap::{CommandFactory, Parser};

use cli::{Cli, Command};

fn main() -> ExitCode {
    if let Some(code) = cli_docs::write_if_asked(Cli::command) {
        return code;
    }
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
        Command::Completions(a) => completions(a.shell),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // The reader closed the pipe (`shmctl list | head -1`): what it wanted, it got.
        Err(e) if e.chain().any(|c| c.is::<stdout::ReaderGone>()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("shmctl: {e:#}");
            ExitCode::from(exit::code_of(&e))
        }
    }
}

/// Prints the completion script; built in memory first, because `clap_complete`
/// panics when its writer fails, and a closed pipe is no failure here.
fn completions(shell: clap_complete::Shell) -> anyhow::Result<()> {
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "shmctl", &mut script);
    stdout::out!("{}", String::from_utf8_lossy(&script));
    Ok(())
}
