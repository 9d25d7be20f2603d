//! Object bodies: a pure function of (run seed, key, generation, size),
//! generated in pieces so a multi-MiB body is never held whole, and
//! self-describing so bytes seen anywhere can be traced back to the key and
//! generation that wrote them.
//!
//! Layout: the body is cut into 4 KiB blocks. Each block with room for it
//! starts with a 32-byte header (`FLT1`, the key's tag, the generation, the block index,
//! the run's tag); the rest is ChaCha8 keystream seeded from (seed, key,
//! generation) and addressed by absolute offset. The byte at offset `o`
//! therefore does not depend on the size: a shorter body of the same
//! generation is a prefix of a longer one, and any slice can be produced
//! without producing what comes before it.

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sha2::{Digest, Sha256};

pub const BLOCK_BYTES: u64 = 4096;
pub const HEADER_BYTES: usize = 32;
const MAGIC: &[u8; 4] = b"FLT1";

/// What a block header says about the bytes around it.
pub use crate::history::Trace as Header;

/// The recipe for one object body.
#[derive(Debug, Clone)]
pub struct Body {
    pub size: u64,
    pub generation: u64,
    key_tag: u64,
    run_tag: u32,
    stream_seed: [u8; 32],
}

/// The first 8 bytes of sha256(key): how a header names its key.
pub fn key_tag(key: &str) -> u64 {
    let digest = Sha256::digest(key.as_bytes());
    u64::from_be_bytes(
        digest[..8]
            .try_into()
            .expect("a sha256 digest has 32 bytes"),
    )
}

/// The first 4 bytes of sha256(seed): how a header names its run.
pub fn run_tag(seed: u64) -> u32 {
    let digest = Sha256::digest(seed.to_be_bytes());
    u32::from_be_bytes(
        digest[..4]
            .try_into()
            .expect("a sha256 digest has 32 bytes"),
    )
}

impl Body {
    pub fn new(seed: u64, key: &str, generation: u64, size: u64) -> Body {
        Body::with_tags(seed, key, generation, size, key_tag(key), run_tag(seed))
    }

    /// `new` for a caller that already has `key_tag(key)` and
    /// `run_tag(seed)` (the oracle recomputes many slices of one key).
    pub fn with_tags(
        seed: u64,
        key: &str,
        generation: u64,
        size: u64,
        key_tag: u64,
        run_tag: u32,
    ) -> Body {
        let mut h = Sha256::new();
        h.update(b"faultline-body-v1");
        h.update(seed.to_be_bytes());
        h.update(generation.to_be_bytes());
        h.update(key.as_bytes());
        Body {
            size,
            generation,
            key_tag,
            run_tag,
            stream_seed: h.finalize().into(),
        }
    }

    fn header(&self, block: u64) -> [u8; HEADER_BYTES] {
        let mut out = [0u8; HEADER_BYTES];
        out[..4].copy_from_slice(MAGIC);
        out[4..12].copy_from_slice(&self.key_tag.to_be_bytes());
        out[12..20].copy_from_slice(&self.generation.to_be_bytes());
        out[20..28].copy_from_slice(&block.to_be_bytes());
        out[28..32].copy_from_slice(&self.run_tag.to_be_bytes());
        out
    }

    /// Writes the body's bytes `[offset, offset + buf.len())` into `buf`.
    /// The range must lie within the body.
    pub fn fill(&self, offset: u64, buf: &mut [u8]) {
        assert!(
            offset + buf.len() as u64 <= self.size,
            "slice past the end of the body"
        );
        // Keystream first: one RNG positioned once per call. ChaCha's word
        // position is in 4-byte words; skip the leading partial word.
        let mut rng = ChaCha8Rng::from_seed(self.stream_seed);
        rng.set_word_pos(u128::from(offset / 4));
        let skip = (offset % 4) as usize;
        if skip == 0 {
            rng.fill_bytes(buf);
        } else {
            let mut lead = [0u8; 4];
            rng.fill_bytes(&mut lead);
            let n = (4 - skip).min(buf.len());
            buf[..n].copy_from_slice(&lead[skip..skip + n]);
            // fill_bytes drops the unused part of its last word, so the next
            // word starts exactly at offset + n.
            rng.fill_bytes(&mut buf[n..]);
        }
        // Then stamp the headers of every block the slice touches. A block
        // too short for its whole header keeps keystream there instead: a
        // cut header would hold no generation, and tiny bodies of different
        // generations would be the same bytes.
        let end = offset + buf.len() as u64;
        let mut block = offset / BLOCK_BYTES;
        while block * BLOCK_BYTES < end {
            let start = block * BLOCK_BYTES;
            if start + HEADER_BYTES as u64 > self.size {
                break;
            }
            let header = self.header(block);
            let lo = start.max(offset);
            let hi = (start + HEADER_BYTES as u64).min(end);
            if lo < hi {
                let src = &header[(lo - start) as usize..(hi - start) as usize];
                buf[(lo - offset) as usize..(hi - offset) as usize].copy_from_slice(src);
            }
            block += 1;
        }
    }

    /// The bytes `[start, end)`.
    pub fn slice(&self, start: u64, end: u64) -> Vec<u8> {
        let mut out = vec![0u8; (end - start) as usize];
        self.fill(start, &mut out);
        out
    }

    /// The whole body; for small objects and tests.
    pub fn to_vec(&self) -> Vec<u8> {
        self.slice(0, self.size)
    }

    /// The body in pieces of at most `chunk` bytes, generated lazily.
    pub fn chunks(&self, chunk: usize) -> impl Iterator<Item = Vec<u8>> + Send + 'static {
        let body = self.clone();
        let chunk = chunk.max(1) as u64;
        (0..self.size.div_ceil(chunk)).map(move |i| {
            let start = i * chunk;
            body.slice(start, (start + chunk).min(body.size))
        })
    }

    /// sha256 of the whole body, computed piecewise.
    pub fn sha256(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        for piece in self.chunks(64 * 1024) {
            h.update(&piece);
        }
        h.finalize().into()
    }
}

/// Reads the header of the block that starts at `bytes[at..]`, if intact.
pub fn decode_header(bytes: &[u8], at: usize) -> Option<Header> {
    let h = bytes.get(at..at + HEADER_BYTES)?;
    if &h[..4] != MAGIC {
        return None;
    }
    let word =
        |r: std::ops::Range<usize>| u64::from_be_bytes(h[r].try_into().expect("8-byte slice"));
    Some(Header {
        key_tag: word(4..12),
        generation: word(12..20),
        block: word(20..28),
        run_tag: u32::from_be_bytes(h[28..32].try_into().expect("4-byte slice")),
    })
}

/// Finds the first intact header in `bytes`, which start at object offset
/// `offset`: how a reader traces unexpected bytes to their writer.
pub fn trace(bytes: &[u8], offset: u64) -> Option<Header> {
    let first = offset.div_ceil(BLOCK_BYTES) * BLOCK_BYTES;
    let mut at = first - offset;
    while (at as usize) + HEADER_BYTES <= bytes.len() {
        if let Some(h) = decode_header(bytes, at as usize) {
            return Some(h);
        }
        at += BLOCK_BYTES;
    }
    None
}

/// sha256 of `body[start..end)`, computed 64 KiB at a time.
pub fn slice_sha256(body: &Body, start: u64, end: u64) -> [u8; 32] {
    const PIECE_BYTES: u64 = 64 * 1024;
    let mut h = Sha256::new();
    let mut s = start;
    while s < end {
        let e = (s + PIECE_BYTES).min(end);
        h.update(body.slice(s, e));
        s = e;
    }
    h.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_inputs_same_bytes_and_any_input_changes_them() {
        let a = Body::new(1, "k", 1, 10_000).to_vec();
        assert_eq!(a, Body::new(1, "k", 1, 10_000).to_vec());
        assert_ne!(a, Body::new(2, "k", 1, 10_000).to_vec());
        assert_ne!(a, Body::new(1, "j", 1, 10_000).to_vec());
        assert_ne!(a, Body::new(1, "k", 2, 10_000).to_vec());
    }

    #[test]
    fn streaming_pieces_equal_the_whole_body_byte_for_byte() {
        for size in [0u64, 1, 3, 31, 32, 33, 4095, 4096, 4097, 65_537, 1_000_003] {
            let body = Body::new(9, "run/key-7", 3, size);
            let whole = body.to_vec();
            assert_eq!(whole.len() as u64, size);
            for chunk in [1usize, 7, 4096, 65_536] {
                if size > 100_000 && chunk < 4096 {
                    continue;
                }
                let joined: Vec<u8> = body.chunks(chunk).flatten().collect();
                assert!(joined == whole, "size {size} chunk {chunk}");
            }
            assert_eq!(
                body.sha256(),
                <[u8; 32]>::from(Sha256::digest(&whole)),
                "size {size}"
            );
        }
    }

    #[test]
    fn any_slice_equals_the_same_bytes_of_the_whole() {
        let body = Body::new(5, "k", 2, 20_000);
        let whole = body.to_vec();
        for (s, e) in [
            (0, 1),
            (1, 5),
            (3, 4),
            (4094, 4130),
            (4096, 4128),
            (8000, 20_000),
            (19_999, 20_000),
        ] {
            assert_eq!(
                body.slice(s, e),
                whole[s as usize..e as usize],
                "[{s}, {e})"
            );
        }
    }

    #[test]
    fn every_size_differs_between_generations() {
        for size in 1..=64u64 {
            assert_ne!(
                Body::new(3, "k", 1, size).to_vec(),
                Body::new(3, "k", 2, size).to_vec(),
                "size {size}"
            );
        }
    }

    #[test]
    fn a_shorter_body_is_a_prefix_of_a_longer_one() {
        let long = Body::new(5, "k", 2, 9000).to_vec();
        assert_eq!(Body::new(5, "k", 2, 5000).to_vec(), long[..5000]);
    }

    #[test]
    fn bytes_trace_back_to_key_generation_and_run() {
        let body = Body::new(77, "run/obj", 4, 3 * BLOCK_BYTES);
        let slice = body.slice(5000, 9000);
        let h = trace(&slice, 5000).expect("the slice spans the header of block 2");
        assert_eq!(
            h,
            Header {
                key_tag: key_tag("run/obj"),
                generation: 4,
                block: 2,
                run_tag: run_tag(77)
            }
        );
        assert_eq!(trace(&body.slice(100, 4000), 100), None, "no header inside");
    }
}
