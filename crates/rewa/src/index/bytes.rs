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
        if let Bytes::Mapped { .. } = self {
            // Copied straight into a buffer of the final size: copying first and growing
            // after would hold two copies at once while the allocator moves the first.
            let src = self.as_slice();
            let len = src.len();
            let mut words = Vec::with_capacity((len + more).div_ceil(8));
            words.resize(len.div_ceil(8), 0u64);
            let bytes: &mut [u8] = bytemuck::cast_slice_mut(&mut words);
            bytes[..len].copy_from_slice(src);
            *self = Bytes::Owned { words, len };
            return;
        }
        if let Bytes::Owned { words, len } = self {
            let want = (*len + more).div_ceil(8);
            words.reserve_exact(want.saturating_sub(words.len()));
        }
    }
    /// Owned bytes, copied into 8-byte aligned storage.
    pub(crate) fn from_vec(v: Vec<u8>) -> Self {
        let mut b = Bytes::default();
        b.reserve(v.len());
        b.extend(&v);
        b
    }
    /// Owned u32 values, little-endian.
    pub(crate) fn from_u32(v: &[u32]) -> Self {
        let mut b = Bytes::default();
        b.reserve(4 * v.len());
        b.extend(bytemuck::cast_slice(v));
        b
    }
    /// The bytes as u32 (little-endian host; `len` is a multiple of 4).
    pub(crate) fn as_u32(&self) -> &[u32] {
        bytemuck::cast_slice(self.as_slice())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserving_on_a_mapping_copies_once_into_a_buffer_of_the_final_size() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let data: Vec<u8> = (0..77u8).collect();
        std::fs::write(&path, [&[0u8; 8][..], &data].concat()).unwrap();
        // SAFETY: a private temporary file nobody else writes.
        let map = unsafe { Mmap::map(&std::fs::File::open(&path).unwrap()) }.unwrap();
        let mut b = Bytes::mapped(Arc::new(map), 8, 77);
        b.reserve(1000);
        let Bytes::Owned { words, len } = &b else {
            panic!("still mapped")
        };
        assert_eq!(*len, 77);
        assert!(words.capacity() * 8 >= 1077);
        let before = words.as_ptr();
        b.extend(&[1; 1000]);
        assert_eq!(&b.as_slice()[..77], &data[..]);
        assert_eq!(b.as_slice().len(), 1077);
        let Bytes::Owned { words, .. } = &b else {
            unreachable!()
        };
        assert_eq!(words.as_ptr(), before, "the append moved the buffer");
    }
}
