//! Run-time choice between the baseline kernels and their AVX2/FMA twins.
//!
//! The crate is compiled for a baseline x86-64 (SSE4.2, POPCNT), so the binary runs on any
//! such CPU. Hot loops (code scans, reranks) are compiled a second time with
//! `#[target_feature(enable = "avx2,fma")]` and picked here, once per block of work: the
//! kernels are plain Rust loops over 8 independent lanes that the compiler vectorizes, and
//! with no fast-math the two compilations compute the same sums in the same order, so results
//! are identical (tested). Setting `REWA_NO_AVX2=1` forces the baseline path (CI runs the tests
//! both ways). Other architectures compile only the baseline.

use std::sync::atomic::{AtomicU8, Ordering};

static LEVEL: AtomicU8 = AtomicU8::new(0);
const BASELINE: u8 = 1;
const AVX2: u8 = 2;

/// `true` when the AVX2/FMA twins run: the CPU has both and `REWA_NO_AVX2` is unset (or `0`).
#[inline]
pub fn avx2() -> bool {
    match LEVEL.load(Ordering::Relaxed) {
        0 => detect() == AVX2,
        l => l == AVX2,
    }
}

#[cold]
fn detect() -> u8 {
    let off = std::env::var_os("REWA_NO_AVX2").is_some_and(|v| !v.is_empty() && v != "0");
    #[cfg(target_arch = "x86_64")]
    let has = is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma");
    #[cfg(not(target_arch = "x86_64"))]
    let has = false;
    let l = if has && !off { AVX2 } else { BASELINE };
    LEVEL.store(l, Ordering::Relaxed);
    l
}

/// `true` when the AVX-512 popcount kernels (VPOPCNTDQ: eight 64-bit popcounts per
/// instruction) run: the CPU has AVX-512F and VPOPCNTDQ, [`avx2`] is on (so `REWA_NO_AVX2=1`
/// also turns these off), and `REWA_NO_AVX512` is unset (set to `1`, the AVX2 kernels run
/// instead: how they are measured and tested on a CPU that has both).
#[inline]
pub fn avx512_popcnt() -> bool {
    static P: AtomicU8 = AtomicU8::new(0);
    match P.load(Ordering::Relaxed) {
        0 => {
            #[cfg(target_arch = "x86_64")]
            let has = avx2()
                && is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512vpopcntdq")
                && !std::env::var_os("REWA_NO_AVX512").is_some_and(|v| !v.is_empty() && v != "0");
            #[cfg(not(target_arch = "x86_64"))]
            let has = false;
            P.store(if has { 2 } else { 1 }, Ordering::Relaxed);
            has
        }
        v => v == 2,
    }
}

/// The kernels in use, for reports: `"avx2"` or `"baseline"`.
pub fn level() -> &'static str {
    if avx2() {
        "avx2"
    } else {
        "baseline"
    }
}

/// `twin! { [name_baseline, name_avx2] fn name(..) -> R { body } }` defines `name`, which
/// runs `body` compiled for AVX2/FMA when [`avx2`] says so and for the baseline otherwise, plus
/// the two compilations under their own names for tests that compare them. `body` and
/// everything it calls must be `#[inline(always)]` (or small enough to inline) to be compiled with the wider instructions; closures handed to rayon are
/// separate functions, so call a twin inside them, not around them.
macro_rules! twin {
    (
        [$base:ident, $wide:ident]
        $(#[$m:meta])*
        $vis:vis fn $name:ident $(<$($g:ident : $b:path),*>)? ($($a:ident : $t:ty),* $(,)?) -> $r:ty $body:block
    ) => {
            $(#[$m])*
            #[inline]
            $vis fn $name $(<$($g: $b),*>)? ($($a: $t),*) -> $r {
                #[cfg(target_arch = "x86_64")]
                if $crate::simd::avx2() {
                    // SAFETY: `simd::avx2()` checked that the CPU has AVX2 and FMA.
                    return unsafe { $wide($($a),*) };
                }
                $base($($a),*)
            }
            #[inline(always)]
            #[allow(dead_code)]
            $vis fn $base $(<$($g: $b),*>)? ($($a: $t),*) -> $r $body
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2,fma")]
            #[allow(dead_code)]
            $vis unsafe fn $wide $(<$($g: $b),*>)? ($($a: $t),*) -> $r {
                $base($($a),*)
            }
    };
}
pub(crate) use twin;

#[cfg(test)]
mod tests {
    #[test]
    fn level_names_the_path_in_use() {
        assert_eq!(super::level() == "avx2", super::avx2());
        if std::env::var_os("REWA_NO_AVX2").is_some_and(|v| v == "1") {
            assert!(
                !super::avx2(),
                "REWA_NO_AVX2=1 must force the baseline kernels"
            );
        }
    }
}
