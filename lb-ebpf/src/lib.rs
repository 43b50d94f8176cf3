//! The library target of lb-ebpf, empty on purpose: it lets lb-daemon name this crate as a build
//! dependency, so cargo rebuilds the eBPF object when the programs change. The programs are the
//! binary target (`main.rs`).
#![no_std]
