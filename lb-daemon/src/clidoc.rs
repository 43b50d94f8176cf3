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
/// (`lbctl.8`, `lbctl-backend-add.8`, ...), in section 8 (both are root's tools in sbin).
/// Returns how many.
pub fn man_pages(cmd: clap::Command, dir: &Path) -> std::io::Result<usize> {
    fn write(cmd: clap::Command, dir: &Path, n: &mut usize) -> std::io::Result<()> {
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()).cloned() {
            write(sub, dir, n)?;
        }
        clap_mangen::Man::new(cmd).section("8").generate_to(dir)?;
        *n += 1;
        Ok(())
    }
    std::fs::create_dir_all(dir)?;
    let mut cmd = cmd.disable_help_subcommand(true);
    cmd.build();
    let mut n = 0;
    write(cmd, dir, &mut n)?;
    Ok(n)
}
