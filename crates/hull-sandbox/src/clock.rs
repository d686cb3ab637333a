//! The TSC frequency a TCG guest needs on its cmdline.
//!
//! Under TCG the guest's TSC is the host's, and without `tsc_early_khz=` the guest
//! kernel measures it against the emulated PIT, which fails under host load: measured
//! in 20 of 20 boots with both cores busy, leaving the guest on a 10 ms jiffies clock
//! (guest/README.md). The host times `rdtsc` against CLOCK_MONOTONIC_RAW once per host
//! boot and keeps the result in the runtime root.

use std::path::Path;
use std::time::Duration;

/// How long the measurement runs: repeated 50 ms runs agreed within 1 ppm here.
const MEASURE: Duration = Duration::from_millis(50);

/// The host TSC frequency in kHz, measured once per host boot and cached in `cache`.
pub fn tsc_khz(cache: &Path) -> Option<u64> {
    let key = crate::files::boot_key("")?;
    if let Some(khz) = crate::files::kept(cache, &key).and_then(|k| k.parse().ok()) {
        return Some(khz);
    }
    let khz = measure()?;
    crate::files::keep(cache, &key, &khz.to_string());
    Some(khz)
}

#[cfg(target_arch = "x86_64")]
fn measure() -> Option<u64> {
    use nix::time::{clock_gettime, ClockId};
    let now = || clock_gettime(ClockId::CLOCK_MONOTONIC_RAW).ok();
    let to_ns =
        |t: nix::sys::time::TimeSpec| t.tv_sec() as i128 * 1_000_000_000 + t.tv_nsec() as i128;
    let t0 = now()?;
    // SAFETY: rdtsc has no preconditions on x86_64.
    let c0 = unsafe { core::arch::x86_64::_rdtsc() };
    std::thread::sleep(MEASURE);
    let t1 = now()?;
    // SAFETY: as above.
    let c1 = unsafe { core::arch::x86_64::_rdtsc() };
    let ns = to_ns(t1) - to_ns(t0);
    if ns <= 0 || c1 <= c0 {
        return None;
    }
    Some(((c1 - c0) as i128 * 1_000_000 / ns) as u64)
}

#[cfg(not(target_arch = "x86_64"))]
fn measure() -> Option<u64> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measures_a_plausible_frequency_and_caches_it() {
        let cache = std::env::temp_dir().join(format!("hull-tsc-{}", std::process::id()));
        let khz = tsc_khz(&cache).expect("a TSC on x86_64");
        assert!((100_000..10_000_000).contains(&khz), "{khz} kHz");
        let text = std::fs::read_to_string(&cache).unwrap();
        assert!(text.trim().ends_with(&khz.to_string()), "{text}");
        // The cached value comes back without measuring again.
        assert_eq!(tsc_khz(&cache), Some(khz));
        std::fs::remove_file(&cache).unwrap();
    }
}
