//! Builds the XDP programs of `lb-ebpf` for bpfel-unknown-none (nightly, `-Z build-std=core`,
//! bpf-linker) and leaves the object in OUT_DIR, where `src/xdp.rs` embeds it.
//!
//! Built once per profile directory, not once per run of this script. Cargo runs this script in a
//! fresh OUT_DIR for each flavour of the `lb-daemon` build: `cargo clippy` hashes its
//! RUSTC_WORKSPACE_WRAPPER into the script's metadata, so clippy and `cargo build`/`cargo test`
//! get two OUT_DIRs. aya-build builds inside OUT_DIR (`OUT_DIR/aya-build/target`), so each of
//! them compiled `core`, `compiler_builtins`, the eBPF dependencies and lb-ebpf from scratch
//! (~20 s each, twice per `cargo xtask test`). Here aya-build works in one directory shared by
//! every run in the same profile directory (`target/debug/build/lb-ebpf-shared`), where the
//! inner cargo finds its earlier build fresh; the object is then copied into this run's OUT_DIR.
//! Cargo's lock on the profile directory serialises the runs that share it.
use std::path::{Path, PathBuf};

use anyhow::{Context as _, anyhow};
use aya_build::Toolchain;

fn main() -> anyhow::Result<()> {
    let cargo_metadata::Metadata { packages, .. } = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata failed")?;
    let ebpf = packages
        .into_iter()
        .find(|p| p.name.as_str() == "lb-ebpf")
        .ok_or_else(|| anyhow!("lb-ebpf package not found in the workspace"))?;
    let root_dir = ebpf
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("no parent for {}", ebpf.manifest_path))?;
    let package = aya_build::Package {
        name: ebpf.name.as_str(),
        root_dir: root_dir.as_str(),
        ..Default::default()
    };

    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").context("OUT_DIR not set")?);
    let skip =
        std::env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    let shared = shared_dir(&out_dir).filter(|_| !skip);
    if let Some(shared) = &shared {
        std::fs::create_dir_all(shared)
            .with_context(|| format!("creating {}", shared.display()))?;
        // aya-build reads its working directory from OUT_DIR only.
        // SAFETY: this build script is single-threaded here; nothing reads the environment
        // concurrently.
        unsafe { std::env::set_var("OUT_DIR", shared) };
    }
    aya_build::build_ebpf([package], Toolchain::default()).context(
        "building the XDP programs needs nightly rust-src and bpf-linker: run `cargo xtask setup`",
    )?;
    if let Some(shared) = &shared {
        let from = shared.join("lb-ebpf");
        let to = out_dir.join("lb-ebpf");
        std::fs::copy(&from, &to)
            .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    }
    Ok(())
}

/// `<profile dir>/build/lb-ebpf-shared` for an OUT_DIR of the usual shape
/// `<profile dir>/build/lb-daemon-<hash>/out`; `None` (build in OUT_DIR, as aya-build does) for
/// any other shape.
fn shared_dir(out_dir: &Path) -> Option<PathBuf> {
    let run_dir = out_dir.parent()?;
    let build_dir = run_dir.parent()?;
    let shaped = out_dir.file_name()? == "out"
        && run_dir.file_name()?.to_str()?.starts_with("lb-daemon-")
        && build_dir.file_name()? == "build";
    shaped.then(|| build_dir.join("lb-ebpf-shared"))
}
