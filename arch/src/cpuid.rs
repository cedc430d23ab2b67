//! Per-vCPU CPUID: KVM's supported set with this vCPU's APIC ID and a topology of one
//! socket, one thread per core, `count` cores, plus the features KVM emulates but leaves out
//! of that set for the VMM to turn on ([`HostFeatures`]).

use kvm_bindings::{kvm_cpuid_entry2, CpuId};

const LEAF_FEATURES: u32 = 0x1;
const LEAF_CACHE: u32 = 0x4;
const LEAF_TOPOLOGY: u32 = 0xb;
const LEAF_TOPOLOGY_V2: u32 = 0x1f;
const LEAF_AMD_SIZES: u32 = 0x8000_0008;
const LEAF_AMD_TOPOLOGY: u32 = 0x8000_001e;

const ECX_HYPERVISOR: u32 = 1 << 31;
const ECX_TSC_DEADLINE: u32 = 1 << 24;
const EDX_HTT: u32 = 1 << 28;
/// CLFLUSH line size in 8-byte units.
const CLFLUSH_64B: u32 = 8 << 8;
const LEVEL_SMT: u32 = 1;
const LEVEL_CORE: u32 = 2;

/// Bits needed to number `count` cores.
fn core_shift(count: u8) -> u32 {
    u32::from(count.max(1)).next_power_of_two().trailing_zeros()
}

/// The physical address width CPUID leaf 0x80000008 reports (EAX bits 7:0), which is what a
/// guest given `cpuid` may use: 36 bits when the leaf is missing (the architectural default).
pub fn phys_bits(cpuid: &CpuId) -> u8 {
    cpuid
        .as_slice()
        .iter()
        .find(|e| e.function == LEAF_AMD_SIZES)
        .map_or(36, |e| (e.eax & 0xff) as u8)
}

/// Narrows the physical address width in leaf 0x80000008 to `bits` (never widens it).
pub fn limit_phys_bits(cpuid: &mut CpuId, bits: u8) {
    for e in cpuid.as_mut_slice() {
        if e.function == LEAF_AMD_SIZES && (e.eax & 0xff) > u32::from(bits) {
            e.eax = (e.eax & !0xff) | u32::from(bits);
        }
    }
}

/// What the host's KVM emulates without listing it in KVM_GET_SUPPORTED_CPUID.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HostFeatures {
    /// The local APIC timer's TSC-deadline mode (KVM_CAP_TSC_DEADLINE_TIMER). Without it the
    /// guest runs its APIC timer in one-shot mode and first calibrates it against another
    /// clock, busy-waiting a tenth of a second of its boot.
    pub tsc_deadline: bool,
}

/// Adjusts `cpuid` (KVM's supported entries) for vCPU `index` of `count`.
pub fn adjust(cpuid: &mut CpuId, index: u8, count: u8, host: HostFeatures) {
    for e in cpuid.as_mut_slice() {
        patch_entry(e, u32::from(index), count, host);
    }
}

fn patch_entry(e: &mut kvm_cpuid_entry2, apic_id: u32, count: u8, host: HostFeatures) {
    let count32 = u32::from(count);
    let shift = core_shift(count);
    match e.function {
        LEAF_FEATURES => {
            e.ebx = (apic_id << 24) | (count32 << 16) | CLFLUSH_64B;
            e.ecx |= ECX_HYPERVISOR;
            if host.tsc_deadline {
                e.ecx |= ECX_TSC_DEADLINE;
            }
            if count > 1 {
                e.edx |= EDX_HTT;
            } else {
                e.edx &= !EDX_HTT;
            }
        }
        LEAF_CACHE if e.eax & 0x1f != 0 => {
            // Cores per package - 1 in 31:26; caches above L2 are shared by all cores.
            let level = (e.eax >> 5) & 0x7;
            let sharing = if level >= 3 { count32 - 1 } else { 0 };
            e.eax = (e.eax & 0x3ff) | (sharing << 14) | ((count32 - 1) << 26);
        }
        LEAF_TOPOLOGY | LEAF_TOPOLOGY_V2 => {
            e.edx = apic_id;
            match e.index {
                0 => {
                    e.eax = 0;
                    e.ebx = 1;
                    e.ecx = LEVEL_SMT << 8;
                }
                1 => {
                    e.eax = shift;
                    e.ebx = count32;
                    e.ecx = (LEVEL_CORE << 8) | 1;
                }
                n => {
                    e.eax = 0;
                    e.ebx = 0;
                    e.ecx = n;
                }
            }
        }
        LEAF_AMD_SIZES => {
            e.ecx = (e.ecx & !0xf0ff) | (shift << 12) | (count32 - 1);
        }
        LEAF_AMD_TOPOLOGY => {
            e.eax = apic_id;
            e.ebx = (e.ebx & !0xff00 & !0xff) | apic_id;
            e.ecx &= !0x7ff;
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            ..Default::default()
        }
    }

    fn cpuid() -> CpuId {
        CpuId::from_entries(&[
            entry(LEAF_FEATURES, 0),
            kvm_cpuid_entry2 {
                eax: 0x121,
                ..entry(LEAF_CACHE, 0)
            },
            kvm_cpuid_entry2 {
                eax: 0x163,
                ..entry(LEAF_CACHE, 3)
            },
            entry(LEAF_TOPOLOGY, 0),
            entry(LEAF_TOPOLOGY, 1),
            entry(LEAF_TOPOLOGY, 2),
            entry(LEAF_AMD_SIZES, 0),
        ])
        .unwrap()
    }

    #[test]
    fn apic_id_and_counts() {
        let mut c = cpuid();
        adjust(&mut c, 2, 3, HostFeatures::default());
        let e = c.as_slice();
        assert_eq!(e[0].ebx >> 24, 2, "initial APIC ID");
        assert_eq!((e[0].ebx >> 16) & 0xff, 3, "logical processors");
        assert_ne!(e[0].edx & EDX_HTT, 0);
        assert_ne!(e[0].ecx & ECX_HYPERVISOR, 0);
        assert_eq!(e[1].eax >> 26, 2, "cores per package - 1");
        assert_eq!((e[1].eax >> 14) & 0xfff, 0, "L1 not shared");
        assert_eq!((e[2].eax >> 14) & 0xfff, 2, "L3 shared by all");
        assert_eq!((e[3].edx, e[3].ebx, e[3].ecx), (2, 1, 0x100));
        assert_eq!((e[4].eax, e[4].ebx, e[4].ecx), (2, 3, 0x201));
        assert_eq!((e[5].ebx, e[5].ecx & 0xff00), (0, 0));
        assert_eq!(e[6].ecx & 0xff, 2);
        assert_eq!((e[6].ecx >> 12) & 0xf, 2);
    }

    #[test]
    fn single_cpu_has_no_htt() {
        let mut c = cpuid();
        c.as_mut_slice()[0].edx = EDX_HTT;
        adjust(&mut c, 0, 1, HostFeatures::default());
        assert_eq!(c.as_slice()[0].edx & EDX_HTT, 0);
        assert_eq!(c.as_slice()[4].eax, 0);
    }

    #[test]
    fn physical_address_width() {
        let mut c = cpuid();
        c.as_mut_slice()[6].eax = 0x3028;
        assert_eq!(phys_bits(&c), 40);
        limit_phys_bits(&mut c, 37);
        assert_eq!(phys_bits(&c), 37);
        assert_eq!(c.as_slice()[6].eax, 0x3025, "virtual width kept");
        limit_phys_bits(&mut c, 46);
        assert_eq!(phys_bits(&c), 37, "never widened");
        let none = CpuId::from_entries(&[entry(LEAF_FEATURES, 0)]).unwrap();
        assert_eq!(phys_bits(&none), 36);
    }

    #[test]
    fn tsc_deadline_only_when_kvm_emulates_it() {
        let mut c = cpuid();
        adjust(&mut c, 0, 2, HostFeatures::default());
        assert_eq!(c.as_slice()[0].ecx & ECX_TSC_DEADLINE, 0);
        let host = HostFeatures { tsc_deadline: true };
        for index in 0..2 {
            let mut c = cpuid();
            adjust(&mut c, index, 2, host);
            assert_ne!(c.as_slice()[0].ecx & ECX_TSC_DEADLINE, 0, "vCPU {index}");
        }
    }

    #[test]
    fn shifts() {
        assert_eq!(core_shift(1), 0);
        assert_eq!(core_shift(2), 1);
        assert_eq!(core_shift(3), 2);
        assert_eq!(core_shift(8), 3);
    }
}
