//! Top-k structures: a search result ([`Hit`]), the best `k` of a stream of distances
//! ([`TopK`]; [`CountTop`] for small integer distances), the rows a filtered search may
//! return ([`Allow`], which both top-k structures check before keeping a row), and [`rerank`].
//!
//! The bottom of the search code: every scan, quantizer and stage builds on these, and this
//! file imports nothing from the crate.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

/// One search result: an id (insertion position) and its distance (lower is closer).
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct Hit {
    /// Position of the vector in insertion order.
    pub id: u32,
    /// Distance to the query in the space of the stage that produced it.
    pub distance: f32,
}

impl Eq for Hit {}
impl Ord for Hit {
    /// By `(distance, id)`, so that ties always come out in the same order.
    fn cmp(&self, o: &Self) -> Ordering {
        self.distance
            .total_cmp(&o.distance)
            .then(self.id.cmp(&o.id))
    }
}
impl PartialOrd for Hit {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}

/// The rows a scan may return: all of them, or those whose bit is set in a bitset (row `id`
/// of the scan is bit `base + id`; rows past the bitset's end are not allowed). The top-k
/// structures check it before keeping a row, so a filtered scan's thresholds tighten on
/// allowed rows only: its hits are the best `k` of the allowed rows, not of all rows.
#[derive(Clone, Copy, Debug, Default)]
pub struct Allow<'a> {
    bits: Option<&'a [u64]>,
    base: u32,
}

impl<'a> Allow<'a> {
    /// Every row.
    pub const ALL: Allow<'static> = Allow {
        bits: None,
        base: 0,
    };
    /// Row `id` allowed where bit `base + id` of `bits` is set.
    pub fn bits(bits: &'a [u64], base: u32) -> Allow<'a> {
        Allow {
            bits: Some(bits),
            base,
        }
    }
    /// The same rows for a scan of rows `by..` (its row 0 is this one's row `by`).
    pub fn shifted(self, by: u32) -> Allow<'a> {
        Allow {
            bits: self.bits,
            base: self.base + by,
        }
    }
    /// Whether every row is allowed.
    pub fn is_all(&self) -> bool {
        self.bits.is_none()
    }
    /// Whether row `id` is allowed.
    #[inline(always)]
    pub fn contains(&self, id: u32) -> bool {
        match self.bits {
            None => true,
            Some(b) => {
                let i = (self.base + id) as usize;
                b.get(i / 64).is_some_and(|w| w & (1 << (i % 64)) != 0)
            }
        }
    }
}

/// The `k` smallest hits seen so far, by `(distance, id)`.
///
/// Up to [`TopK::HEAP_MAX`] a binary heap keeps exactly the best `k` (its root is the
/// threshold). For a larger `k` (a first stage keeping hundreds of candidates) a heap push
/// costs more than scanning a code, so candidates are appended to a buffer instead and the
/// buffer is cut back to the best `k` (one `select_nth_unstable`) whenever it reaches `2k`: the
/// threshold is then the k-th distance as of the last cut, looser than the heap's, but each
/// push costs O(1) amortized. Both give exactly the best `k` by `(distance, id)` of everything
/// offered at or below the threshold (and allowed: see [`TopK::allowing`]).
#[derive(Clone, Debug)]
pub struct TopK<'a> {
    k: usize,
    heap: BinaryHeap<Hit>,
    buf: Vec<Hit>,
    worst: f32,
    allow: Allow<'a>,
}

impl<'a> TopK<'a> {
    /// The largest `k` kept in a heap.
    pub const HEAP_MAX: usize = 64;

    /// An empty top-k. `k` must be at least 1.
    pub fn new(k: usize) -> Self {
        Self::allowing(k, Allow::ALL)
    }
    /// An empty top-k keeping only rows `allow` allows (a filtered scan). `k` must be at
    /// least 1.
    pub fn allowing(k: usize, allow: Allow<'a>) -> Self {
        debug_assert!(k >= 1);
        let heap = k <= Self::HEAP_MAX;
        TopK {
            k,
            // A huge k must not allocate up front: storage grows only as hits arrive.
            heap: BinaryHeap::with_capacity(if heap { k + 1 } else { 0 }),
            buf: Vec::with_capacity(if heap { 0 } else { (2 * k).min(8192) }),
            worst: f32::INFINITY,
            allow,
        }
    }
    /// Distances above this cannot enter (ties are decided by id).
    #[inline(always)]
    pub fn threshold(&self) -> f32 {
        self.worst
    }
    /// Offers a candidate.
    #[inline(always)]
    pub fn push(&mut self, id: u32, distance: f32) {
        if !self.allow.contains(id) {
            return;
        }
        let h = Hit { id, distance };
        if self.k > Self::HEAP_MAX {
            if distance <= self.worst {
                self.buf.push(h);
                if self.buf.len() >= 2 * self.k {
                    self.cut();
                }
            }
            return;
        }
        if self.heap.len() < self.k {
            self.heap.push(h);
            if self.heap.len() == self.k {
                self.worst = self.heap.peek().map_or(f32::INFINITY, |w| w.distance);
            }
        } else {
            let replaced = match self.heap.peek_mut() {
                Some(mut top) if h < *top => {
                    *top = h;
                    true
                }
                _ => false,
            };
            if replaced {
                self.worst = self.heap.peek().map_or(f32::INFINITY, |w| w.distance);
            }
        }
    }
    /// Keeps the best `k` of the buffer; the threshold becomes the k-th distance.
    #[cold]
    fn cut(&mut self) {
        let k = self.k;
        self.buf.select_nth_unstable(k - 1);
        self.buf.truncate(k);
        self.worst = self.buf[k - 1].distance;
    }
    /// The hits, best first.
    pub fn into_sorted(mut self) -> Vec<Hit> {
        if self.k > Self::HEAP_MAX {
            if self.buf.len() > self.k {
                self.cut();
            }
            self.buf.sort_unstable();
            return self.buf;
        }
        self.heap.into_sorted_vec()
    }
}

/// The `k` smallest of a stream of small integer distances (`0..=max`, e.g. Hamming
/// distances), by `(distance, id)`, without comparisons: a histogram of the kept distances
/// gives the exact k-th distance after every push, and the result comes out already sorted
/// by distance (a counting sort). A first stage keeping hundreds of candidates spent a third
/// of its time in [`TopK`]'s cuts and final sort; this costs O(1) per push.
///
/// `threshold()` is the k-th distance so far (`max + 1` until `k` are kept). A caller
/// offering ids in ascending order may offer only distances below it (a tie would lose to the
/// earlier ids); a caller in any other id order offers distances at or below it, and ties at
/// the k-th distance are decided by id at the end.
#[derive(Clone, Debug)]
pub struct CountTop<'a> {
    k: usize,
    allow: Allow<'a>,
    hist: Vec<u32>,
    thr: u32,
    below: usize,
    buf: Vec<(u32, u32)>,
    ascending: bool,
    last: Option<u32>,
}

impl<'a> CountTop<'a> {
    /// An empty top-`k` of distances in `0..=max`; `k` must be at least 1.
    pub fn new(k: usize, max: u32) -> Self {
        Self::allowing(k, max, Allow::ALL)
    }
    /// An empty top-`k` keeping only rows `allow` allows (a filtered scan).
    pub fn allowing(k: usize, max: u32, allow: Allow<'a>) -> Self {
        debug_assert!(k >= 1);
        CountTop {
            k,
            allow,
            hist: vec![0; max as usize + 2],
            thr: max + 1,
            below: 0,
            buf: Vec::with_capacity(Self::limit(k).min(8192)),
            ascending: true,
            last: None,
        }
    }
    /// The k-th distance kept so far (`max + 1` while fewer than `k` are kept).
    #[inline(always)]
    pub fn threshold(&self) -> u32 {
        self.thr
    }
    /// Offers a candidate; anything above the threshold is ignored.
    #[inline(always)]
    pub fn push(&mut self, id: u32, d: u32) {
        if d > self.thr || !self.allow.contains(id) {
            return;
        }
        if let Some(last) = self.last {
            self.ascending &= id > last;
        }
        self.last = Some(id);
        self.hist[d as usize] += 1;
        self.buf.push((id, d));
        if d < self.thr {
            self.below += 1;
            while self.below >= self.k {
                self.thr -= 1;
                self.below -= self.hist[self.thr as usize] as usize;
            }
        }
        if self.buf.len() >= Self::limit(self.k) {
            self.shrink();
        }
    }
    /// Kept candidates at which those above the threshold are dropped.
    fn limit(k: usize) -> usize {
        2 * k + 256
    }
    /// Keeps only what can still make the top: every candidate below the threshold and the
    /// smallest ids of those at it.
    #[cold]
    fn shrink(&mut self) {
        let t = self.thr;
        let need = self.k - self.below;
        let mut at: Vec<(u32, u32)> = Vec::new();
        self.buf.retain(|&(id, d)| {
            if d == t {
                at.push((id, d));
            }
            d < t
        });
        if at.len() > need {
            at.select_nth_unstable(need);
            at.truncate(need);
            at.sort_unstable();
        } else if !self.ascending {
            at.sort_unstable();
        }
        if let Some(h) = self.hist.get_mut(t as usize) {
            *h = at.len() as u32;
        }
        self.buf.append(&mut at);
    }
    /// The best `k` by `(distance, id)`, sorted.
    pub fn into_sorted(mut self) -> Vec<Hit> {
        self.shrink();
        // counting sort by distance; stable, so ids keep the order they came in
        let t = self.thr as usize;
        let mut start = vec![0usize; t + 2];
        for &(_, d) in &self.buf {
            start[d as usize + 1] += 1;
        }
        for i in 1..start.len() {
            start[i] += start[i - 1];
        }
        let mut out = vec![
            Hit {
                id: 0,
                distance: 0.0
            };
            self.buf.len()
        ];
        for &(id, d) in &self.buf {
            let s = &mut start[d as usize];
            out[*s] = Hit {
                id,
                distance: d as f32,
            };
            *s += 1;
        }
        if !self.ascending {
            out.sort_unstable();
        }
        out
    }
}

/// Rescores candidates `ids` with `score` and keeps the best `keep`.
#[inline(always)]
pub fn rerank(
    ids: impl Iterator<Item = u32>,
    keep: usize,
    mut score: impl FnMut(u32) -> f32,
) -> Vec<Hit> {
    let mut top = TopK::new(keep.max(1));
    for id in ids {
        let d = score(id);
        if d <= top.threshold() {
            top.push(id, d);
        }
    }
    top.into_sorted()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both ways of keeping the top k return the sorted best k by (distance, id) of a stream
    /// with many ties, whatever the order it arrives in.
    #[test]
    fn top_k_is_the_best_k_of_the_stream_for_small_and_large_k() {
        let mut next = crate::testutil::xorshift(11);
        let hits: Vec<Hit> = (0..20_000u32)
            .map(|id| Hit {
                id,
                distance: (next() % 500) as f32,
            })
            .collect();
        for k in [1, 7, 64, 65, 300, 5_000, 20_000, 30_000] {
            for order in 0..2 {
                let mut t = TopK::new(k);
                let mut stream = hits.clone();
                if order == 1 {
                    stream.reverse();
                }
                for h in &stream {
                    // as the kernels offer: only at or below the threshold
                    if h.distance <= t.threshold() {
                        t.push(h.id, h.distance);
                    }
                }
                let mut want = hits.clone();
                want.sort_unstable();
                want.truncate(k);
                assert_eq!(t.into_sorted(), want, "k {k}, order {order}");
            }
        }
    }

    /// The counting top-k returns the sorted best k by (distance, id) of integer distances
    /// with many ties: ids ascending and offered only below the threshold (as the Hamming
    /// scans do), and in shuffled order offered at or below it (as list scans do).
    #[test]
    fn counting_top_k_is_the_best_k_of_the_stream() {
        let mut next = crate::testutil::xorshift(5);
        for max in [0u32, 3, 256] {
            let hits: Vec<Hit> = (0..20_000u32)
                .map(|id| Hit {
                    id,
                    distance: (next() % (max as u64 + 1)) as f32,
                })
                .collect();
            for k in [1, 7, 64, 65, 300, 2_000, 5_000, 20_000, 30_000] {
                for order in 0..3 {
                    let mut t = CountTop::new(k, max);
                    let mut stream = hits.clone();
                    match order {
                        1 => stream.reverse(),
                        2 => stream.sort_by_key(|h| h.id.wrapping_mul(2_654_435_761)),
                        _ => {}
                    }
                    for h in &stream {
                        let d = h.distance as u32;
                        if d < t.threshold() || (order > 0 && d == t.threshold()) {
                            t.push(h.id, d);
                        }
                    }
                    let mut want = hits.clone();
                    want.sort_unstable();
                    want.truncate(k);
                    assert_eq!(t.into_sorted(), want, "max {max}, k {k}, order {order}");
                }
            }
        }
    }

    #[test]
    fn topk_breaks_ties_by_id() {
        let mut t = TopK::new(2);
        for id in [5, 3, 9, 1] {
            t.push(id, 1.0);
        }
        assert_eq!(
            t.into_sorted().iter().map(|h| h.id).collect::<Vec<_>>(),
            [1, 3]
        );
    }
}
