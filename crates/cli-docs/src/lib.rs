//! The man pages and shell completions of one program, generated from its clap definition.
//!
//! The package ships what the programs say about themselves, never a hand-written copy
//! that drifts: each of `shmctl`, `producerd` and `consumerd`, run with
//! `SHMRING_WRITE_CLI_DOCS=DIR` in its environment, calls [`write()`] with its own
//! [`clap::Command`] and exits ([`write_if_asked`]). The package build (`scripts/build-deb`)
//! runs the three after `cargo build`, and `cargo deb` installs the files they wrote:
//!
//! | written to `DIR/...` | installed in |
//! |---|---|
//! | `man/NAME.1`, and `man/NAME-SUB.1` for each visible subcommand, recursively | `/usr/share/man/man1/` |
//! | `completions/NAME` (bash) | `/usr/share/bash-completion/completions/` |
//! | `completions/_NAME` (zsh) | `/usr/share/zsh/vendor-completions/` |
//! | `completions/NAME.fish` | `/usr/share/fish/vendor_completions.d/` |

use std::io;
use std::path::Path;

use clap::Command;
use clap_complete::Shell;

/// Writes the man pages and the bash, zsh and fish completions of `command` (the whole
/// program, as `Parser::command()` gives it) under `dir`, as listed in the module docs.
pub fn write(command: Command, dir: &Path) -> io::Result<()> {
    let mut command = command;
    // Resolved once: the help and version flags and the propagated settings exist only then.
    command.build();
    let name = command.get_name().to_owned();
    let man = dir.join("man");
    std::fs::create_dir_all(&man)?;
    write_man_pages(&command, &name, &man)?;
    let completions = dir.join("completions");
    std::fs::create_dir_all(&completions)?;
    for (shell, file) in
        [(Shell::Bash, name.clone()), (Shell::Zsh, format!("_{name}")), (Shell::Fish, format!("{name}.fish"))]
    {
        let mut script = Vec::new();
        clap_complete::generate(shell, &mut command.clone(), &name, &mut script);
        std::fs::write(completions.join(file), script)?;
    }
    Ok(())
}

/// `title.1` for `command`, then `title-SUB.1` for each subcommand that is not hidden
/// (`shmctl-create.1`, `shmctl-bench-numa.1`), as git and cargo name theirs.
fn write_man_pages(command: &Command, title: &str, man: &Path) -> io::Result<()> {
    let mut page = Vec::new();
    // The page's NAME and SYNOPSIS use the command's name: give a subcommand its full one.
    let source = format!("shmring {}", command.get_version().unwrap_or_default());
    clap_mangen::Man::new(command.clone().display_name(title.to_owned()).bin_name(title.replace('-', " ")))
        .source(source)
        .render(&mut page)?;
    std::fs::write(man.join(format!("{title}.1")), page)?;
    for sub in command.get_subcommands().filter(|sub| !sub.is_hide_set() && sub.get_name() != "help") {
        write_man_pages(sub, &format!("{title}-{}", sub.get_name()), man)?;
    }
    Ok(())
}

/// The environment variable that asks a program for its docs instead of its work.
pub const ENV: &str = "SHMRING_WRITE_CLI_DOCS";

/// At the top of each program's `main`: with `SHMRING_WRITE_CLI_DOCS=DIR` set, [`write()`]s
/// the program's docs under `DIR` and returns the exit code (0, or 74 `EX_IOERR` after
/// printing the error); otherwise `None`, and the program goes on. An environment variable
/// rather than a hidden option, because clap_complete would complete a hidden option.
pub fn write_if_asked(command: impl FnOnce() -> Command) -> Option<std::process::ExitCode> {
    let dir = std::path::PathBuf::from(std::env::var_os(ENV)?);
    let command = command();
    let name = command.get_name().to_owned();
    Some(match write(command, &dir) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{name}: writing the man pages and completions to {}: {e}", dir.display());
            std::process::ExitCode::from(EX_IOERR)
        }
    })
}

/// sysexits.h's `EX_IOERR`.
const EX_IOERR: u8 = 74;
