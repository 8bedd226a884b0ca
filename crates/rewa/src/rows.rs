//! Row storage views: [`Rows`] (fixed-length rows held in parts, an index's segments, read as
//! one id space), [`ListsRef`] (the lists of a partitioned part), [`Deleted`] (tombstones)
//! and [`RowFilter`] (the rows a filtered search may return).
//!
//! Below the encoders and the stage runner: this file imports nothing from the crate.

/// Fixed-length rows held in parts (an index's segments), each part a run of ids in
/// ascending order, parts in id order: what a stage scans part by part and what a rerank
/// reads by id.
#[derive(Clone, Debug)]
pub struct Rows<'a> {
    row_len: usize,
    parts: Vec<RowPart<'a>>,
    /// The first id of each part (for [`Rows::locate`]).
    firsts: Vec<u32>,
}

/// One part of [`Rows`].
#[derive(Clone, Copy, Debug)]
pub struct RowPart<'a> {
    /// Row `j` has id `start + j`, unless `ids` is given.
    pub start: u32,
    /// Row `j` has id `ids[j]` (ascending): a part that lost deleted rows when it was compacted.
    pub ids: Option<&'a [u32]>,
    /// The rows (for a partitioned code set: in list order, see `lists`).
    pub data: &'a [u8],
    /// For a partitioned code set: the lists, whose ids are row numbers within this part.
    pub lists: Option<ListsRef<'a>>,
}

impl RowPart<'_> {
    /// The id of row `j`.
    #[inline(always)]
    pub fn id(&self, j: u32) -> u32 {
        match self.ids {
            Some(ids) => ids[j as usize],
            None => self.start + j,
        }
    }
    /// The smallest and the largest id (for an empty part, `start` and `start - 1`).
    pub(crate) fn id_range(&self, rows: usize) -> (u32, Option<u32>) {
        match self.ids {
            Some(ids) => (
                ids.first().copied().unwrap_or(self.start),
                ids.last().copied(),
            ),
            None => (
                self.start,
                (rows as u32).checked_sub(1).map(|r| self.start + r),
            ),
        }
    }
}

impl<'a> Rows<'a> {
    /// Parts of `row_len`-byte rows; their id ranges must rise and not overlap.
    pub fn new(row_len: usize, parts: Vec<RowPart<'a>>) -> Rows<'a> {
        let firsts = parts
            .iter()
            .map(|p| p.id_range(p.data.len() / row_len.max(1)).0)
            .collect();
        Rows {
            row_len,
            parts,
            firsts,
        }
    }
    /// One part of rows `0..`, ids equal to row numbers.
    pub fn single(row_len: usize, data: &'a [u8]) -> Rows<'a> {
        Rows::new(
            row_len,
            vec![RowPart {
                start: 0,
                ids: None,
                data,
                lists: None,
            }],
        )
    }
    /// The parts.
    pub fn parts(&self) -> &[RowPart<'a>] {
        &self.parts
    }
    /// Bytes per row.
    pub fn row_len(&self) -> usize {
        self.row_len
    }
    /// The part and row holding `id`. `id` must be held (hits only carry ids that are).
    #[inline(always)]
    pub fn locate(&self, id: u32) -> (&RowPart<'a>, usize) {
        let p = if self.parts.len() == 1 {
            0
        } else {
            self.firsts.partition_point(|&f| f <= id).saturating_sub(1)
        };
        let part = &self.parts[p];
        let j = match part.ids {
            Some(ids) => ids.binary_search(&id).unwrap_or_else(|_| {
                unreachable!("invariant: id {id} is held by the part its range names")
            }),
            None => (id - part.start) as usize,
        };
        (part, j)
    }
    /// The row of `id` if a part holds it (a compacted part lost its deleted rows).
    pub fn try_row(&self, id: u32) -> Option<&'a [u8]> {
        let p = self.firsts.partition_point(|&f| f <= id).checked_sub(1)?;
        let part = &self.parts[p];
        let n = part.data.len() / self.row_len.max(1);
        let j = match part.ids {
            Some(ids) => ids.binary_search(&id).ok()?,
            None => (id - part.start) as usize,
        };
        let data: &'a [u8] = part.data;
        (j < n).then(|| &data[j * self.row_len..(j + 1) * self.row_len])
    }
    /// The row of `id` (not for a partitioned code set, whose rows are in list order).
    #[inline(always)]
    pub fn row(&self, id: u32) -> &'a [u8] {
        let (part, j) = self.locate(id);
        let data: &'a [u8] = part.data;
        &data[j * self.row_len..(j + 1) * self.row_len]
    }
}

/// Deleted ids (tombstones): never returned by a search. Kept sorted, with a bitmap for the
/// per-hit check.
#[derive(Clone, Debug, Default)]
pub struct Deleted {
    sorted: Vec<u32>,
    bits: Vec<u64>,
}

impl Deleted {
    /// From ids in any order (repeats allowed).
    pub fn new(mut ids: Vec<u32>) -> Deleted {
        ids.sort_unstable();
        ids.dedup();
        let mut bits = vec![0u64; ids.last().map_or(0, |&m| m as usize / 64 + 1)];
        for &i in &ids {
            bits[i as usize / 64] |= 1 << (i % 64);
        }
        Deleted { sorted: ids, bits }
    }
    /// Whether `id` is deleted.
    #[inline(always)]
    pub fn contains(&self, id: u32) -> bool {
        self.bits
            .get(id as usize / 64)
            .is_some_and(|w| w & (1 << (id % 64)) != 0)
    }
    /// Deleted ids in `lo..=hi`.
    pub fn count_in(&self, lo: u32, hi: u32) -> usize {
        self.sorted.partition_point(|&i| i <= hi) - self.sorted.partition_point(|&i| i < lo)
    }
    /// The ids, ascending.
    pub fn ids(&self) -> &[u32] {
        &self.sorted
    }
    /// Number of deleted ids.
    pub fn len(&self) -> usize {
        self.sorted.len()
    }
    /// `true` if nothing is deleted.
    pub fn is_empty(&self) -> bool {
        self.sorted.is_empty()
    }
}

/// The rows a filtered search may return, by id: a bitset over ids (bit `id` set: allowed)
/// and how many it holds. Built by the caller from whatever selects rows (stored fields, a
/// tenant, a list of ids); the index takes its deleted rows out before searching.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RowFilter {
    bits: Vec<u64>,
    count: usize,
}

impl RowFilter {
    /// The rows `ids` (any order, repeats allowed).
    pub fn from_ids(ids: impl IntoIterator<Item = u32>) -> RowFilter {
        let mut bits: Vec<u64> = Vec::new();
        for id in ids {
            let w = id as usize / 64;
            if w >= bits.len() {
                bits.resize(w + 1, 0);
            }
            bits[w] |= 1 << (id % 64);
        }
        RowFilter::from_bits(bits)
    }
    /// The rows whose bits are set (`bits[id / 64] >> (id % 64) & 1`).
    pub fn from_bits(bits: Vec<u64>) -> RowFilter {
        let count = bits.iter().map(|w| w.count_ones() as usize).sum();
        RowFilter { bits, count }
    }
    /// Whether row `id` is allowed.
    #[inline(always)]
    pub fn contains(&self, id: u32) -> bool {
        self.bits
            .get(id as usize / 64)
            .is_some_and(|w| w & (1 << (id % 64)) != 0)
    }
    /// Rows allowed.
    pub fn len(&self) -> usize {
        self.count
    }
    /// `true` when no row is allowed.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
    /// The bitset, 64 ids per word.
    pub fn words(&self) -> &[u64] {
        &self.bits
    }
    /// The allowed ids, ascending.
    pub fn ids(&self) -> impl Iterator<Item = u32> + '_ {
        self.bits.iter().enumerate().flat_map(|(w, &x)| {
            let mut x = x;
            std::iter::from_fn(move || {
                (x != 0).then(|| {
                    let b = x.trailing_zeros();
                    x &= x - 1;
                    (w * 64) as u32 + b
                })
            })
        })
    }
    /// Allowed ids in `lo..=hi`.
    pub fn count_in(&self, lo: u32, hi: u32) -> usize {
        if hi < lo {
            return 0;
        }
        let (lo, hi) = (lo as usize, hi as usize);
        let mut n = 0;
        for w in lo / 64..=(hi / 64).min(self.bits.len().saturating_sub(1)) {
            let Some(&x) = self.bits.get(w) else { break };
            let mut m = u64::MAX;
            if w == lo / 64 {
                m &= u64::MAX << (lo % 64);
            }
            if w == hi / 64 && hi % 64 != 63 {
                m &= (1u64 << (hi % 64 + 1)) - 1;
            }
            n += (x & m).count_ones() as usize;
        }
        n
    }
    /// These rows but the deleted ones, and none at or above `end`.
    pub fn without(&self, deleted: &Deleted, end: u32) -> RowFilter {
        let mut bits = self.bits.clone();
        let words = (end as usize).div_ceil(64);
        bits.truncate(words);
        if !end.is_multiple_of(64) {
            if let Some(last) = bits.get_mut(words - 1) {
                *last &= (1u64 << (end % 64)) - 1;
            }
        }
        for (w, d) in bits.iter_mut().zip(&deleted.bits) {
            *w &= !d;
        }
        RowFilter::from_bits(bits)
    }
}

/// The lists of a partitioned code set: list `l` holds the codes at positions
/// `offsets[l]..offsets[l + 1]`, and `ids[p]` is the id of the code at position `p`.
#[derive(Clone, Copy, Debug)]
pub struct ListsRef<'a> {
    /// `nlist + 1` positions, from 0 up to the number of codes.
    pub offsets: &'a [u32],
    /// One id per code, in list order.
    pub ids: &'a [u32],
    /// The same codes laid out for the quantizer's blocked list kernel, when it has one.
    pub layout: Option<&'a ListLayout>,
}

/// One list of a partitioned code set, as a list kernel sees it (the quantizer's `scan_run`).
#[derive(Clone, Copy, Debug)]
pub struct Run<'a> {
    /// The codes, `code_len` bytes each.
    pub codes: &'a [u8],
    /// The same codes in the quantizer's list layout, when it has one.
    pub laid: Option<&'a [u8]>,
    /// The id of each code.
    pub ids: &'a [u32],
}

/// A partitioned code set's codes laid out, list by list, for its quantizer's blocked kernel
/// (for the fast-scan codes: groups of 32 codes transposed, a short last group padded). The
/// quantizer that builds it owns the byte layout; here it is bytes and where each list starts.
#[derive(Clone, Debug, Default)]
pub struct ListLayout {
    /// The laid-out lists, one after another.
    pub data: Vec<u8>,
    /// `nlist + 1` byte offsets: list `l` is `data[starts[l]..starts[l + 1]]`.
    pub starts: Vec<usize>,
}

impl ListLayout {
    /// The bytes of list `l`.
    #[inline(always)]
    pub fn list(&self, l: usize) -> &[u8] {
        &self.data[self.starts[l]..self.starts[l + 1]]
    }
}
