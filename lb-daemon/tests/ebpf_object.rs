//! Checks of the embedded eBPF object itself, without loading it (no privileges needed).

use lb_daemon::xdp::{EBPF_OBJECT, PROG_LBD};
use object::{Object as _, ObjectSection as _, ObjectSymbol as _};

/// `BPF_JMP | BPF_CALL`.
const OP_CALL: u8 = 0x85;
/// `BPF_LD | BPF_IMM | BPF_DW`: a 16-byte instruction.
const OP_LDDW: u8 = 0x18;
/// `src_reg` of a call to a BPF function of the same object (a subprogram, not a helper).
const BPF_PSEUDO_CALL: u8 = 1;

/// The instructions of one program of the object.
fn program(name: &str) -> Vec<[u8; 8]> {
    let file = object::File::parse(EBPF_OBJECT).expect("the embedded eBPF object is an ELF file");
    let symbol = file
        .symbols()
        .find(|s| s.name() == Ok(name))
        .unwrap_or_else(|| panic!("no symbol {name} in the eBPF object"));
    let index = symbol
        .section_index()
        .expect("the program lives in a section");
    let data = file
        .section_by_index(index)
        .and_then(|s| s.data())
        .expect("the program's section has data");
    let start = usize::try_from(symbol.address()).expect("address fits");
    let len = usize::try_from(symbol.size()).expect("size fits");
    data[start..start + len]
        .chunks_exact(8)
        .map(|c| c.try_into().expect("8-byte chunks"))
        .collect()
}

/// The balancer's per-packet path calls kernel helpers only. A BPF-to-BPF call costs a frame
/// set-up per packet: zeroing a `[u8; 3]` padding field once compiled to a call of the
/// object's `memset` on every packet (a quarter of the program's cost in BPF_PROG_TEST_RUN).
#[test]
fn the_balancer_calls_no_bpf_subprograms() {
    let insns = program(PROG_LBD);
    assert!(insns.len() > 50, "{PROG_LBD}: {} instructions", insns.len());
    let mut helpers = 0;
    let mut i = 0;
    while i < insns.len() {
        let [op, regs, ..] = insns[i];
        if op == OP_CALL {
            assert_ne!(
                regs >> 4,
                BPF_PSEUDO_CALL,
                "{PROG_LBD}: instruction {i} calls a BPF subprogram"
            );
            helpers += 1;
        }
        i += if op == OP_LDDW { 2 } else { 1 };
    }
    assert!(helpers > 0, "{PROG_LBD}: no helper calls found");
}
