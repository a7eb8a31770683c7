//! Content-defined chunking of a byte stream with FastCDC (2020 variant).
//!
//! The chunker keeps at most one maximum-size chunk plus one incoming buffer,
//! so memory stays bounded whatever the object size.

use bytes::{Bytes, BytesMut};
use fastcdc::v2020::FastCDC;

use super::ChunkerConfig;

/// Smallest chunk: 512 KiB keeps per-chunk overhead (index entries, requests
/// on restore) small for multi-GB files.
pub const MIN_SIZE: u32 = 512 * 1024;
/// Average chunk: 1 MiB, so a change re-uploads about 1 MiB around it.
pub const AVG_SIZE: u32 = 1024 * 1024;
/// Largest chunk: 8 MiB bounds the memory a chunk in flight takes.
pub const MAX_SIZE: u32 = 8 * 1024 * 1024;

pub fn default_config() -> ChunkerConfig {
    ChunkerConfig {
        algorithm: "fastcdc-2020".into(),
        min_size: MIN_SIZE,
        avg_size: AVG_SIZE,
        max_size: MAX_SIZE,
    }
}

/// Splits a stream pushed in pieces into content-defined chunks.
pub struct Chunker {
    config: ChunkerConfig,
    buf: BytesMut,
}

impl Chunker {
    pub fn new(config: ChunkerConfig) -> Self {
        Self { config, buf: BytesMut::new() }
    }

    /// Appends bytes read from the stream.
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// Returns the next chunk whose end is final. Before the end of the stream
    /// a chunk is final once a maximum-size window is buffered, because the
    /// cut point of the first chunk depends only on its first `max_size` bytes.
    /// With `eof`, the rest of the buffer is returned in chunks.
    pub fn next_chunk(&mut self, eof: bool) -> Option<Bytes> {
        if self.buf.is_empty() {
            return None;
        }
        if !eof && self.buf.len() < self.config.max_size as usize {
            return None;
        }
        let window = self.buf.len().min(self.config.max_size as usize);
        let length = FastCDC::new(
            &self.buf[..window],
            self.config.min_size,
            self.config.avg_size,
            self.config.max_size,
        )
        .next()
        .map(|c| c.length)
        .unwrap_or(window);
        // A window shorter than the buffer that the chunker ran to its end
        // was cut at max_size; otherwise the cut is content-defined.
        Some(self.buf.split_to(length).freeze())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{RngCore, SeedableRng};

    fn chunks_of(data: &[u8], piece: usize) -> Vec<Bytes> {
        let mut c = Chunker::new(default_config());
        let mut out = Vec::new();
        for p in data.chunks(piece) {
            c.push(p);
            while let Some(ch) = c.next_chunk(false) {
                out.push(ch);
            }
        }
        while let Some(ch) = c.next_chunk(true) {
            out.push(ch);
        }
        out
    }

    #[test]
    fn chunks_reassemble_and_respect_bounds() {
        let mut data = vec![0u8; 20 * 1024 * 1024];
        rand::rngs::StdRng::seed_from_u64(7).fill_bytes(&mut data);
        let chunks = chunks_of(&data, 100_000);
        assert_eq!(chunks.concat(), data);
        for c in &chunks[..chunks.len() - 1] {
            assert!(c.len() >= MIN_SIZE as usize, "{}", c.len());
            assert!(c.len() <= MAX_SIZE as usize, "{}", c.len());
        }
    }

    #[test]
    fn cut_points_do_not_depend_on_read_sizes() {
        let mut data = vec![0u8; 9 * 1024 * 1024];
        rand::rngs::StdRng::seed_from_u64(11).fill_bytes(&mut data);
        let a: Vec<usize> = chunks_of(&data, 4096).iter().map(|c| c.len()).collect();
        let b: Vec<usize> = chunks_of(&data, 3_000_001).iter().map(|c| c.len()).collect();
        assert_eq!(a, b);
    }

    #[test]
    fn change_in_middle_changes_few_chunks() {
        let mut data = vec![0u8; 16 * 1024 * 1024];
        rand::rngs::StdRng::seed_from_u64(3).fill_bytes(&mut data);
        let before: std::collections::HashSet<Bytes> = chunks_of(&data, 65536).into_iter().collect();
        data[8 * 1024 * 1024..8 * 1024 * 1024 + 100].fill(0xAB);
        let after = chunks_of(&data, 65536);
        let changed = after.iter().filter(|c| !before.contains(*c)).count();
        assert!(changed <= 2, "{changed} chunks changed");
    }

    #[test]
    fn empty_stream_has_no_chunks() {
        assert!(chunks_of(&[], 10).is_empty());
    }
}
