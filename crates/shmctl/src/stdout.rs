//! Standard output, where a reader that stops reading is the reader's choice, not a
//! failure: `shmctl list --all | head -1` must end quietly with status 0.
//!
//! Rust ignores `SIGPIPE`, so a write to a closed pipe fails with `EPIPE`, and
//! `println!` panics on it (exit 101). Everything `shmctl` prints goes through
//! [`outln!`] and [`out!`] instead: a closed pipe becomes [`ReaderGone`], which `main`
//! turns into a quiet exit 0; any other write error is an I/O error (74).

/// The reader of standard output went away (`EPIPE`): stop, quietly, with status 0.
#[derive(Debug, thiserror::Error)]
#[error("standard output was closed by its reader")]
pub struct ReaderGone;

/// Writes `args` to standard output.
pub fn write(args: std::fmt::Arguments<'_>) -> anyhow::Result<()> {
    use std::io::Write;
    std::io::stdout().lock().write_fmt(args).map_err(|e| {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            anyhow::Error::new(ReaderGone)
        } else {
            anyhow::Error::new(e).context("writing to standard output")
        }
    })
}

/// `print!` that returns from the enclosing function (which returns `anyhow::Result`)
/// when standard output fails, with [`ReaderGone`] for a closed pipe.
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::stdout::write(format_args!($($arg)*))?
    };
}

/// `println!` that returns from the enclosing function (which returns `anyhow::Result`)
/// when standard output fails, with [`ReaderGone`] for a closed pipe.
macro_rules! outln {
    () => {
        $crate::stdout::write(format_args!("\n"))?
    };
    ($($arg:tt)*) => {
        $crate::stdout::write(format_args!("{}\n", format_args!($($arg)*)))?
    };
}

pub(crate) use {out, outln};
