//! How a fuzz input is read: a few leading bytes configure the run (limits,
//! split points, chunk sizes), the rest is the data under test.
//!
//! Bytes past the end read as zero, so every input, even an empty one, is a
//! valid configuration and the fuzzer never wastes runs on rejected inputs.

/// The configuration bytes at the front of a fuzz input.
#[derive(Clone, Copy, Debug)]
pub struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    /// Starts reading `data` from its first byte.
    pub fn new(data: &'a [u8]) -> Self {
        Self { data }
    }

    /// The next byte, or 0 past the end.
    pub fn byte(&mut self) -> u8 {
        match self.data.split_first() {
            Some((&b, rest)) => {
                self.data = rest;
                b
            }
            None => 0,
        }
    }

    /// The next two bytes, little-endian.
    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.byte(), self.byte()])
    }

    /// Everything not read yet: the data under test.
    pub fn rest(self) -> &'a [u8] {
        self.data
    }
}

/// An endless sequence of read sizes in `1..=max`, drawn from one seed byte
/// with xorshift, so a single byte of input explores many ways of splitting a
/// stream.
#[derive(Clone, Debug)]
pub struct ChunkSizes {
    state: u32,
    max: usize,
}

impl ChunkSizes {
    /// Sizes from `seed`, each at most `max` (at least 1).
    pub fn new(seed: u8, max: usize) -> Self {
        Self {
            // xorshift needs a non-zero state; the odd constant guarantees one.
            state: 0x9E37_79B9 ^ u32::from(seed),
            max: max.max(1),
        }
    }
}

impl Iterator for ChunkSizes {
    type Item = usize;

    fn next(&mut self) -> Option<usize> {
        let mut x = self.state;
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        self.state = x;
        Some(1 + x as usize % self.max)
    }
}

/// `data` cut into consecutive, non-empty pieces of [`ChunkSizes`] lengths.
#[derive(Clone, Debug)]
pub struct Chunks<'a> {
    rest: &'a [u8],
    sizes: ChunkSizes,
}

impl<'a> Chunks<'a> {
    /// Pieces of `data` with sizes drawn from `sizes`.
    pub fn new(data: &'a [u8], sizes: ChunkSizes) -> Self {
        Self { rest: data, sizes }
    }
}

impl<'a> Iterator for Chunks<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        if self.rest.is_empty() {
            return None;
        }
        let n = self.sizes.next().unwrap_or(1).min(self.rest.len());
        let (piece, rest) = self.rest.split_at(n);
        self.rest = rest;
        Some(piece)
    }
}
