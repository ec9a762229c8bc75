//! The man pages and completions the package installs, as the programs write them
//! (`SHMRING_WRITE_CLI_DOCS=DIR`, crates/cli-docs): a page for each program and for each
//! subcommand `shmctl --help` lists (nested ones too: `shmctl bench --help`), and a
//! bash, zsh and fish completion for each program, naming its subcommands.

use std::path::Path;
use std::process::Command;

use shmring_tests::Fixture;
use shmring_tests::fixture::binary;

/// The subcommands a `--help` text lists under "Commands:", but `help`.
fn subcommands(program: &Path, args: &[&str]) -> Vec<String> {
    let out = Command::new(program).args(args).arg("--help").output().unwrap();
    let help = String::from_utf8(out.stdout).unwrap();
    help.lines()
        .skip_while(|l| *l != "Commands:")
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| *name != "help")
        .map(str::to_owned)
        .collect()
}

#[test]
fn every_program_and_subcommand_has_a_man_page_and_completions() {
    let fx = Fixture::new("cli-docs");
    let dir = fx.path("docs");
    for program in ["shmctl", "producerd", "consumerd"] {
        let status = Command::new(binary(program)).env("SHMRING_WRITE_CLI_DOCS", &dir).status().unwrap();
        assert!(status.success(), "{program} with SHMRING_WRITE_CLI_DOCS: {status}");
    }
    let shmctl = binary("shmctl");
    let mut pages = vec!["shmctl".to_owned(), "producerd".to_owned(), "consumerd".to_owned()];
    let top = subcommands(&shmctl, &[]);
    assert!(top.contains(&"stat".to_owned()) && top.contains(&"bench".to_owned()), "{top:?}");
    for sub in &top {
        pages.push(format!("shmctl-{sub}"));
        for nested in subcommands(&shmctl, &[sub]) {
            pages.push(format!("shmctl-{sub}-{nested}"));
        }
    }
    assert!(pages.contains(&"shmctl-bench-numa".to_owned()), "{pages:?}");
    for page in &pages {
        let path = dir.join("man").join(format!("{page}.1"));
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(text.contains(&format!(".TH {page} 1 ")), "{page}.1 has no .TH line for {page}:\n{text}");
    }
    let written = std::fs::read_dir(dir.join("man")).unwrap().count();
    assert_eq!(written, pages.len(), "man pages for hidden or unknown commands: {written} written, {pages:?} expected");
    for program in ["shmctl", "producerd", "consumerd"] {
        for file in [program.to_owned(), format!("_{program}"), format!("{program}.fish")] {
            let path = dir.join("completions").join(&file);
            let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert!(text.contains(program), "{file} does not name {program}");
            assert!(!text.contains("WRITE_CLI_DOCS"), "{file} completes the docs hook");
        }
    }
    let bash = std::fs::read_to_string(dir.join("completions/shmctl")).unwrap();
    for sub in &top {
        assert!(bash.contains(sub.as_str()), "the bash completion does not offer {sub}");
    }
}
