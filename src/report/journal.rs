//! An append-only JSON-lines journal of finished work, flushed after every batch, so a run
//! killed half-way resumes where it stopped. A torn last line (killed mid-write) is ignored
//! and rewritten.

use crate::error::{Error, Result};
use serde::{de::DeserializeOwned, Serialize};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

pub struct Journal {
    path: PathBuf,
    file: File,
}

impl Journal {
    /// Opens the journal, reading the records already in it (`fresh` empties it first).
    pub fn open<T: DeserializeOwned>(path: &Path, fresh: bool) -> Result<(Journal, Vec<T>)> {
        let mut records = Vec::new();
        let mut good_bytes = 0;
        if !fresh && path.exists() {
            let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
            for line in text.split_inclusive('\n') {
                if !line.ends_with('\n') {
                    break; // torn write
                }
                let record = serde_json::from_str(line.trim_end()).map_err(|e| {
                    Error::input(format!("{}: corrupt journal line: {e}", path.display()))
                })?;
                records.push(record);
                good_bytes += line.len();
            }
        }
        let file = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(false)
            .open(path)
            .map_err(|e| Error::io(path, e))?;
        file.set_len(good_bytes as u64)
            .map_err(|e| Error::io(path, e))?;
        let mut journal = Journal {
            path: path.to_path_buf(),
            file,
        };
        use std::io::Seek;
        journal
            .file
            .seek(std::io::SeekFrom::End(0))
            .map_err(|e| Error::io(path, e))?;
        Ok((journal, records))
    }

    /// Appends records and syncs them to disk.
    pub fn append<T: Serialize>(&mut self, records: &[T]) -> Result<()> {
        let mut buf = Vec::new();
        for r in records {
            serde_json::to_writer(&mut buf, r).expect("records serialize");
            buf.push(b'\n');
        }
        self.file
            .write_all(&buf)
            .and_then(|_| self.file.sync_data())
            .map_err(|e| Error::io(&self.path, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resumes_after_a_torn_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.jsonl");
        let (mut j, old) = Journal::open::<u32>(&path, false).unwrap();
        assert!(old.is_empty());
        j.append(&[1u32, 2]).unwrap();
        drop(j);
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"3")
            .unwrap();
        let (mut j, old) = Journal::open::<u32>(&path, false).unwrap();
        assert_eq!(old, [1, 2]);
        j.append(&[4u32]).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "1\n2\n4\n");
        let (_, old) = Journal::open::<u32>(&path, true).unwrap();
        assert!(old.is_empty());
    }
}
