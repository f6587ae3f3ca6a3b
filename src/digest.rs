//! Stable content fingerprints (FNV-1a, 64-bit): the same bytes give the same hex string on
//! every platform and release, unlike std's hasher. Used to tie a results folder to the
//! prompts and the model files it was made from.

use crate::error::{Error, Result};
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

/// An FNV-1a 64 hash being fed.
pub struct Fnv64(u64);

impl Default for Fnv64 {
    fn default() -> Self {
        Fnv64(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv64 {
    pub fn update(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ b as u64).wrapping_mul(0x0100_0000_01b3);
        }
    }

    pub fn hex(&self) -> String {
        format!("{:016x}", self.0)
    }
}

/// Files up to this size are hashed whole.
const WHOLE_FILE: u64 = 64 << 20;
/// Larger files: the first MiB (a safetensors header and the start of the data), then
/// this many evenly spaced samples of `SAMPLE` bytes, and the last `SAMPLE` bytes.
const SAMPLES: u64 = 256;
const SAMPLE: u64 = 16 << 10;

/// Fingerprint of one file: its size and a hash of its content (whole, or sampled when it
/// is over 64 MiB, so a multi-GB weights file costs ~5 MB of reads). A file replaced in
/// place by another model differs in nearly every sample.
pub fn file_fingerprint(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let size = f.metadata().map_err(|e| Error::io(path, e))?.len();
    let mut h = Fnv64::default();
    h.update(&size.to_le_bytes());
    let mut read_at = |h: &mut Fnv64, offset: u64, len: u64| -> std::io::Result<()> {
        let mut buf = vec![0u8; len as usize];
        f.seek(SeekFrom::Start(offset))?;
        f.read_exact(&mut buf)?;
        h.update(&buf);
        Ok(())
    };
    let sampled = if size <= WHOLE_FILE {
        read_at(&mut h, 0, size)
    } else {
        let head = 1 << 20;
        let step = (size - head) / SAMPLES;
        (0..SAMPLES)
            .map(|i| head + i * step)
            .chain(std::iter::once(size - SAMPLE))
            .try_for_each(|at| read_at(&mut h, at, SAMPLE.min(size - at)))
            .and_then(|_| read_at(&mut h, 0, head))
    };
    sampled.map_err(|e| Error::io(path, e))?;
    Ok(format!("{size}:{}", h.hex()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_known_values() {
        // published FNV-1a 64 test vectors
        let hex = |s: &str| {
            let mut h = Fnv64::default();
            h.update(s.as_bytes());
            h.hex()
        };
        assert_eq!(hex(""), "cbf29ce484222325");
        assert_eq!(hex("a"), "af63dc4c8601ec8c");
        assert_eq!(hex("foobar"), "85944171f73967e8");
    }

    #[test]
    fn a_changed_byte_changes_the_fingerprint() {
        let dir = tempfile::tempdir().unwrap();
        for size in [1000usize, (WHOLE_FILE + 12345) as usize] {
            let path = dir.path().join("w.bin");
            let mut bytes: Vec<u8> = (0..size).map(|i| (i * 7 % 251) as u8).collect();
            std::fs::write(&path, &bytes).unwrap();
            let before = file_fingerprint(&path).unwrap();
            assert_eq!(before, file_fingerprint(&path).unwrap());
            bytes[10] ^= 1; // inside the whole-file hash or the sampled head
            std::fs::write(&path, &bytes).unwrap();
            assert_ne!(before, file_fingerprint(&path).unwrap(), "size {size}");
        }
    }
}
