//! Shell completions and man pages of `lbd` and `lbctl`, generated from their clap definitions
//! (`lbctl completions SHELL`, `lbctl man DIR`, `lbd --completions SHELL`, `lbd --man DIR`), so
//! that they never drift from the options; `cargo xtask install` writes them where shells and
//! `man` look.

use std::{io::Write, path::Path};

pub use clap_complete::Shell;

/// Writes `cmd`'s completion script for `shell`.
pub fn completions(mut cmd: clap::Command, shell: Shell, out: &mut dyn Write) {
    let name = cmd.get_name().to_string();
    clap_complete::generate(shell, &mut cmd, name, out);
}

/// Writes `cmd`'s man pages into `dir`: one for the command and one per subcommand, as git's
/// (`lbctl.1`, `lbctl-backend-add.1`, ...). Returns how many.
pub fn man_pages(cmd: clap::Command, dir: &Path) -> std::io::Result<usize> {
    std::fs::create_dir_all(dir)?;
    let before = std::fs::read_dir(dir)?.count();
    clap_mangen::generate_to(cmd, dir)?;
    Ok(std::fs::read_dir(dir)?.count().saturating_sub(before))
}
