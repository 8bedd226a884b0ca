//! Byte storage for codes and vectors: owned (8-byte aligned) or memory-mapped.

use memmap2::Mmap;
use std::sync::Arc;

/// A byte buffer that is either owned or a range of a memory-mapped file.
/// Both kinds start 8-byte aligned, so f32 and u64 views need no copy.
#[derive(Clone, Debug)]
pub(crate) enum Bytes {
    Owned {
        words: Vec<u64>,
        len: usize,
    },
    Mapped {
        map: Arc<Mmap>,
        start: usize,
        len: usize,
    },
}

impl Default for Bytes {
    fn default() -> Self {
        Bytes::Owned {
            words: Vec::new(),
            len: 0,
        }
    }
}

impl Bytes {
    pub(crate) fn mapped(map: Arc<Mmap>, start: usize, len: usize) -> Self {
        debug_assert!(start.is_multiple_of(8) && start + len <= map.len());
        Bytes::Mapped { map, start, len }
    }
    pub(crate) fn as_slice(&self) -> &[u8] {
        match self {
            Bytes::Owned { words, len } => &crate::io::as_bytes(words)[..*len],
            Bytes::Mapped { map, start, len } => &map[*start..*start + *len],
        }
    }
    /// Appends bytes; a mapped buffer is first copied into memory.
    pub(crate) fn extend(&mut self, data: &[u8]) {
        if let Bytes::Mapped { .. } = self {
            let mut owned = Bytes::default();
            owned.extend(self.as_slice());
            *self = owned;
        }
        let Bytes::Owned { words, len } = self else {
            unreachable!("invariant: converted above")
        };
        let new_len = *len + data.len();
        words.resize(new_len.div_ceil(8), 0);
        let bytes: &mut [u8] = bytemuck::cast_slice_mut(words);
        bytes[*len..new_len].copy_from_slice(data);
        *len = new_len;
    }
    /// Makes room for `more` bytes beyond the current length (a mapped buffer is first copied
    /// into memory), so that appends in chunks do not double the buffer as they go.
    pub(crate) fn reserve(&mut self, more: usize) {
        self.extend(&[]);
        if let Bytes::Owned { words, len } = self {
            let want = (*len + more).div_ceil(8);
            words.reserve_exact(want.saturating_sub(words.len()));
        }
    }
    /// The bytes as f32 (little-endian host; `len` is a multiple of 4).
    pub(crate) fn as_f32(&self) -> &[f32] {
        // Storage starts 8-byte aligned (owned: Vec<u64>; mapped: the header is 64 bytes), so
        // this cast cannot fail.
        bytemuck::cast_slice(self.as_slice())
    }
}
