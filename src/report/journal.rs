//! An append-only JSON-lines journal of finished work, flushed after every batch, so a run
//! killed half-way resumes where it stopped.
//!
//! Whole, for a log, means whole records: the journal only ever grows by complete lines.
//! An append that fails (a full disk, an I/O error) is cut back to the last complete record
//! before the error is reported, so the file stays a valid JSON-lines file. Only a kill or
//! a power cut in the middle of one append's write can leave a torn last line; opening the
//! journal again (`--resume`) drops it.

use crate::error::{Error, Result};
use serde::{de::DeserializeOwned, Serialize};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

pub struct Journal {
    path: PathBuf,
    file: File,
    /// Bytes of complete records in the file.
    len: u64,
}

/// The complete records of a journal, each with its line (without the newline), leaving
/// out a torn last line; reads only.
pub fn read<T: DeserializeOwned>(path: &Path) -> Result<Vec<(String, T)>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let mut records = Vec::new();
    for (i, line) in text.split_inclusive('\n').enumerate() {
        let Some(line) = line.strip_suffix('\n') else {
            break; // torn write
        };
        let record = serde_json::from_str(line).map_err(|e| {
            Error::input(format!(
                "{} line {}: not a record of this run's journal: {} (start over \
                 without --resume, or with another --out)",
                path.display(),
                i + 1,
                crate::data::json_message(&e)
            ))
        })?;
        records.push((line.to_string(), record));
    }
    Ok(records)
}

impl Journal {
    /// Opens the journal, reading the records already in it (`fresh` empties it first).
    pub fn open<T: DeserializeOwned>(path: &Path, fresh: bool) -> Result<(Journal, Vec<T>)> {
        let (records, good_bytes) = if !fresh && path.exists() {
            let lines = read::<T>(path)?;
            let bytes = lines.iter().map(|(line, _)| line.len() + 1).sum();
            (lines.into_iter().map(|(_, r)| r).collect(), bytes)
        } else {
            (Vec::new(), 0)
        };
        let file = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(false)
            .open(path)
            .map_err(|e| Error::write(path, e))?;
        let len = good_bytes as u64;
        file.set_len(len).map_err(|e| Error::write(path, e))?;
        let mut journal = Journal {
            path: path.to_path_buf(),
            file,
            len,
        };
        use std::io::Seek;
        journal
            .file
            .seek(std::io::SeekFrom::Start(len))
            .map_err(|e| Error::write(path, e))?;
        Ok((journal, records))
    }

    /// Appends records and syncs them to disk; on failure the journal is cut back to the
    /// records it held before, and the error names it.
    pub fn append<T: Serialize>(&mut self, records: &[T]) -> Result<()> {
        let mut buf = Vec::new();
        for r in records {
            serde_json::to_writer(&mut buf, r).expect("records serialize");
            buf.push(b'\n');
        }
        self.append_bytes(&buf)
    }

    fn append_bytes(&mut self, buf: &[u8]) -> Result<()> {
        use std::io::Seek;
        let written = self.file.write_all(buf).and_then(|_| self.file.sync_data());
        if let Err(e) = written {
            // a short write leaves part of a line: cut it off (this frees space, so it
            // works on a full disk too)
            let cut = self.file.set_len(self.len).and_then(|_| {
                self.file
                    .seek(std::io::SeekFrom::Start(self.len))
                    .map(|_| ())
            });
            return Err(match cut {
                Ok(()) => Error::write(&self.path, e),
                Err(cut) => Error::write(
                    &self.path,
                    std::io::Error::new(
                        e.kind(),
                        format!(
                            "{e}; cutting the torn record off failed too ({cut}): \
                             --resume drops it"
                        ),
                    ),
                ),
            });
        }
        self.len += buf.len() as u64;
        Ok(())
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
