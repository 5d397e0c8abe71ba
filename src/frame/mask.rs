//! Payload masking (RFC 6455 section 5.3), in safe code.

/// XORs `buf` in place with the 4-byte masking `key`.
///
/// `offset` is the position of `buf[0]` within the frame payload, so a
/// payload that arrives in several chunks can be unmasked chunk by chunk:
/// pass the number of payload bytes already unmasked as `offset`. Masking is
/// its own inverse, so the same call masks and unmasks.
///
/// The bulk of the buffer is processed eight bytes at a time as `u64`
/// words; the tail (fewer than eight bytes) byte by byte.
///
/// # Examples
///
/// ```
/// use wshub::frame::apply_mask;
///
/// let key = [1, 2, 3, 4];
/// let mut data = *b"hello, world";
/// // Mask in two chunks; the second continues the key at offset 5.
/// let (a, b) = data.split_at_mut(5);
/// apply_mask(a, key, 0);
/// apply_mask(b, key, 5);
/// // Unmask in one go.
/// apply_mask(&mut data, key, 0);
/// assert_eq!(&data, b"hello, world");
/// ```
pub fn apply_mask(buf: &mut [u8], key: [u8; 4], offset: usize) {
    // Rotate the key so that `key[0]` applies to `buf[0]`.
    let key = rotate_key(key, offset);
    let word = u64::from_ne_bytes([
        key[0], key[1], key[2], key[3], key[0], key[1], key[2], key[3],
    ]);
    let mut chunks = buf.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(chunk);
        let masked = u64::from_ne_bytes(bytes) ^ word;
        chunk.copy_from_slice(&masked.to_ne_bytes());
    }
    // Every chunk is a multiple of 4 bytes long, so the key phase of the
    // remainder is the same as at the start of `buf`.
    for (byte, k) in chunks.into_remainder().iter_mut().zip(key.iter().cycle()) {
        *byte ^= k;
    }
}

/// Returns `key` rotated left by `offset % 4` positions.
#[inline]
fn rotate_key(key: [u8; 4], offset: usize) -> [u8; 4] {
    let shift = offset % 4;
    [
        key[shift],
        key[(shift + 1) % 4],
        key[(shift + 2) % 4],
        key[(shift + 3) % 4],
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Byte-at-a-time reference implementation, straight from RFC 6455 5.3.
    fn naive_mask(buf: &mut [u8], key: [u8; 4], offset: usize) {
        for (i, byte) in buf.iter_mut().enumerate() {
            *byte ^= key[(offset + i) % 4];
        }
    }

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    #[test]
    fn matches_naive_over_lengths_offsets_and_alignments() {
        let keys = [[0, 0, 0, 0], [1, 2, 3, 4], [0xff, 0x00, 0xa5, 0x5a]];
        for key in keys {
            for len in 0..80 {
                for offset in 0..9 {
                    for align in 0..8 {
                        let source = pattern(align + len + 3, len as u8);
                        let mut fast = source.clone();
                        let mut slow = source.clone();
                        apply_mask(&mut fast[align..align + len], key, offset);
                        naive_mask(&mut slow[align..align + len], key, offset);
                        assert_eq!(fast, slow, "key {key:?} len {len} offset {offset}");
                    }
                }
            }
        }
    }

    #[test]
    fn large_buffers_match_naive() {
        for len in [1000, 4096, 65_537] {
            let source = pattern(len, 7);
            let mut fast = source.clone();
            let mut slow = source.clone();
            apply_mask(&mut fast, [9, 8, 7, 6], 3);
            naive_mask(&mut slow, [9, 8, 7, 6], 3);
            assert_eq!(fast, slow);
        }
    }

    #[test]
    fn chunked_masking_equals_whole() {
        let key = [0x37, 0xfa, 0x21, 0x3d];
        let source = pattern(200, 1);
        let mut whole = source.clone();
        apply_mask(&mut whole, key, 0);
        for split in [1, 2, 3, 5, 8, 13, 100, 199] {
            let mut parts = source.clone();
            let (a, b) = parts.split_at_mut(split);
            apply_mask(a, key, 0);
            apply_mask(b, key, split);
            assert_eq!(parts, whole, "split at {split}");
        }
    }

    #[test]
    fn mask_is_involution() {
        let source = pattern(33, 2);
        let mut data = source.clone();
        apply_mask(&mut data, [1, 2, 3, 4], 2);
        assert_ne!(data, source);
        apply_mask(&mut data, [1, 2, 3, 4], 2);
        assert_eq!(data, source);
    }
}
