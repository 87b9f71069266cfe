//! CPU cache hints.
//!
//! Contract: [`prefetch`] asks the CPU to start loading the cache line that
//! holds an address; it never faults, reads nothing the program sees and
//! changes no state, whatever the address (a no-op off x86_64).

/// Start loading the cache line at `p` into every cache level.
#[inline(always)]
pub fn prefetch<T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is a hint: it never faults, even on an address
    // that is not mapped, and has no effect the program can observe.
    unsafe {
        std::arch::x86_64::_mm_prefetch(p.cast::<i8>(), std::arch::x86_64::_MM_HINT_T0)
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}
