//! The pure part of a block upload: how a file is cut into blocks, the deterministic block id of
//! each (from the file's sha256, the block size and the index, so a second run names the same
//! bytes the same way and finds what an interrupted run staged), and which blocks still have to
//! be sent.

use std::collections::HashSet;

use crate::digest::Digest;

/// The service's limit on the blocks of one blob.
pub const MAX_BLOCKS: u64 = 50_000;
/// The service's limit on one block (4000 MiB); envbuild's blocks stay far below it.
pub const MAX_BLOCK: u64 = 4000 << 20;

/// The block size used for a file of `size` bytes: `preferred`, unless the file would need more
/// than [`MAX_BLOCKS`] blocks of it, then the smallest whole number of MiB that fits.
pub fn block_size(size: u64, preferred: u64) -> u64 {
    let preferred = preferred.clamp(1, MAX_BLOCK);
    if size.div_ceil(preferred) <= MAX_BLOCKS {
        return preferred;
    }
    let mib = 1 << 20;
    size.div_ceil(MAX_BLOCKS).div_ceil(mib) * mib
}

/// The byte ranges (offset, length) of a file of `size` bytes cut into blocks of `block`.
pub fn ranges(size: u64, block: u64) -> impl Iterator<Item = (u64, u64)> {
    let block = block.max(1);
    (0..size.div_ceil(block)).map(move |i| (i * block, block.min(size - i * block)))
}

/// The id of block `index` of the file whose bytes hash to `sha256`, cut into blocks of
/// `block` bytes: 48 bytes before base64 (the service wants at most 64, and the same length for
/// every block of a blob). Block size is part of it, so that blocks cut differently never mix.
pub fn block_id(sha256: &Digest, block: u64, index: u64) -> Vec<u8> {
    format!("{}-{block:08x}-{index:06}", &sha256.hex()[..32]).into_bytes()
}

/// The blocks of a file that are not staged yet: those whose id and size are not among
/// `staged` (id, size) — what Get Block List lists as uncommitted.
pub fn missing(
    sha256: &Digest,
    size: u64,
    block: u64,
    staged: &HashSet<(Vec<u8>, u64)>,
) -> Vec<u64> {
    ranges(size, block)
        .enumerate()
        .filter(|(i, (_, len))| !staged.contains(&(block_id(sha256, block, *i as u64), *len)))
        .map(|(i, _)| i as u64)
        .collect()
}

/// Whether `rel` is a relative '/'-separated path without `.`, `..` or empty parts — a name
/// that is safe both as a blob name under a prefix and as a file under a directory.
pub fn safe_relative(rel: &str) -> bool {
    !rel.is_empty()
        && !rel.contains('\\')
        && !rel.contains('\0')
        && rel
            .split('/')
            .all(|p| !p.is_empty() && p != "." && p != "..")
}

/// `prefix/rel` (or `rel` for an empty prefix), without doubled slashes.
pub fn join(prefix: &str, rel: &str) -> String {
    let p = prefix.trim_matches('/');
    if p.is_empty() {
        rel.to_owned()
    } else {
        format!("{p}/{rel}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_cover_the_file_exactly() {
        let r: Vec<_> = ranges(10, 4).collect();
        assert_eq!(r, vec![(0, 4), (4, 4), (8, 2)]);
        assert_eq!(ranges(8, 4).count(), 2);
        assert_eq!(ranges(0, 4).count(), 0);
        assert_eq!(block_size(100, 8 << 20), 8 << 20);
        // 1 TiB in 8 MiB blocks would be 131072 blocks: the size grows to fit 50,000.
        let big = 1u64 << 40;
        let b = block_size(big, 8 << 20);
        assert!(
            big.div_ceil(b) <= MAX_BLOCKS && b.is_multiple_of(1 << 20),
            "{b}"
        );
    }

    #[test]
    fn block_ids_are_deterministic_equal_length_and_distinct() {
        let d = Digest::of(b"x");
        let a = block_id(&d, 4 << 20, 0);
        assert_eq!(a, block_id(&d, 4 << 20, 0));
        assert_ne!(a, block_id(&d, 4 << 20, 1));
        assert_ne!(a, block_id(&d, 8 << 20, 0));
        assert_ne!(a, block_id(&Digest::of(b"y"), 4 << 20, 0));
        assert_eq!(a.len(), block_id(&d, 1, 999_999).len());
        assert!(a.len() <= 64);
    }

    #[test]
    fn only_blocks_not_staged_with_their_size_are_missing() {
        let d = Digest::of(b"f");
        let mut staged = HashSet::new();
        staged.insert((block_id(&d, 4, 0), 4));
        staged.insert((block_id(&d, 4, 2), 4)); // staged with a wrong size: sent again
        staged.insert((block_id(&Digest::of(b"g"), 4, 1), 4)); // another file's
        assert_eq!(missing(&d, 10, 4, &staged), vec![1, 2]);
    }

    #[test]
    fn names_are_relative_and_plain() {
        for ok in ["a", "a/b.txt", "dir/.hidden", "x..y"] {
            assert!(safe_relative(ok), "{ok}");
        }
        for bad in ["", "/a", "a/", "a//b", "../a", "a/./b", "a\\b", "a/.."] {
            assert!(!safe_relative(bad), "{bad}");
        }
        assert_eq!(join("LocalUpload/h/", "a/b"), "LocalUpload/h/a/b");
        assert_eq!(join("", "a"), "a");
    }
}
