//! Output files that are whole or absent. Every file a command leaves behind (dumps,
//! summaries, samples, plots, fitted lenses, run.json) is written here: to a temporary file
//! in the same folder, synced, then renamed over its name, so that a reader, a crash, a
//! kill or a full disk never leaves half a file under the real name. The file gets the
//! permissions a plain create would give it: those of the file it replaces, else the
//! default (0o666 less the umask). A failure names the file being written and says so;
//! the temporary file is removed.
//!
//! A temporary file outlives its process only when the process is killed mid-write; its
//! name ([`is_temporary`]) marks it, and [`remove_stale`] clears such leftovers from a
//! results folder when the next run starts there.

use crate::error::{Error, Result};
use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// The marker in every temporary file's name: `.<name>.qwen-scope-tmp.<pid>.<n>`.
const MARKER: &str = ".qwen-scope-tmp.";

/// Writes `bytes` to `path`, whole or not at all.
pub fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    write_with(path, |f| f.write_all(bytes))
}

/// Writes `path` through `fill`, which gets the temporary file; whole or not at all.
pub fn write_with(path: &Path, fill: impl FnOnce(&mut File) -> std::io::Result<()>) -> Result<()> {
    let target = resolve(path);
    let fail = |e: std::io::Error| Error::write(path, e);
    if target.is_dir() {
        return Err(fail(std::io::Error::new(
            std::io::ErrorKind::IsADirectory,
            "it is a folder",
        )));
    }
    let tmp = temporary_name(&target);
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .map_err(fail)?;
    let result = (|| {
        // a plain create keeps the permissions of the file it truncates
        if let Ok(meta) = std::fs::metadata(&target) {
            file.set_permissions(meta.permissions())?;
        }
        fill(&mut file)?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&tmp, &target)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(fail(e));
    }
    // the rename itself reaches the disk with the folder; best effort (not every
    // filesystem can sync a folder)
    if let Some(dir) = target.parent() {
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

/// Whether `name` is one of this module's temporary files.
pub fn is_temporary(name: &std::ffi::OsStr) -> bool {
    let name = name.to_string_lossy();
    name.starts_with('.') && name.contains(MARKER)
}

/// Removes the temporary files that killed runs left in `dir` (only this module's names;
/// nothing else is touched). Errors are ignored: a leftover is harmless, only untidy.
pub fn remove_stale(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if is_temporary(&entry.file_name()) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// A symbolic link is written through, as a plain create would: its target is replaced,
/// not the link.
fn resolve(path: &Path) -> PathBuf {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => std::fs::canonicalize(path).unwrap_or(path.into()),
        _ => path.to_path_buf(),
    }
}

/// A fresh name beside `target`, unique within this process and across processes.
fn temporary_name(target: &Path) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut name = OsString::from(".");
    name.push(target.file_name().unwrap_or_default());
    name.push(format!("{MARKER}{}.{n}", std::process::id()));
    target.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn writes_whole_and_leaves_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("summary.csv");
        write(&p, b"a,b\n1,2\n").unwrap();
        write(&p, b"a,b\n3,4\n").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"a,b\n3,4\n");
        assert_eq!(names(dir.path()), ["summary.csv"]);
    }

    #[test]
    fn a_failing_writer_leaves_the_old_file_and_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("run.json");
        write(&p, b"old").unwrap();
        let e = write_with(&p, |f| {
            f.write_all(b"half")?;
            Err(std::io::Error::other("disk on fire"))
        })
        .unwrap_err()
        .to_string();
        assert_eq!(e, format!("cannot write {}: disk on fire", p.display()));
        assert_eq!(std::fs::read(&p).unwrap(), b"old");
        assert_eq!(names(dir.path()), ["run.json"]);
    }

    #[test]
    fn permissions_are_a_plain_creates() {
        let dir = tempfile::tempdir().unwrap();
        // a new file: what File::create gives (0o666 less the umask)
        let plain = dir.path().join("plain");
        File::create(&plain).unwrap();
        let p = dir.path().join("new");
        write(&p, b"x").unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&p), mode(&plain));
        // an existing file keeps its own
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o640)).unwrap();
        write(&p, b"y").unwrap();
        assert_eq!(mode(&p), 0o640);
    }

    #[test]
    fn a_symlink_is_written_through() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real.json");
        std::fs::write(&real, b"old").unwrap();
        let link = dir.path().join("link.json");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        write(&link, b"new").unwrap();
        assert!(std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(std::fs::read(&real).unwrap(), b"new");
    }

    #[test]
    fn errors_name_the_file_and_say_it_was_being_written() {
        let dir = tempfile::tempdir().unwrap();
        // the parent is a file
        let file = dir.path().join("file");
        std::fs::write(&file, b"").unwrap();
        let p = file.join("out.csv");
        let e = write(&p, b"x").unwrap_err().to_string();
        assert!(
            e.starts_with(&format!("cannot write {}: ", p.display())),
            "{e}"
        );
        // a folder in the way
        let e = write(dir.path(), b"x").unwrap_err().to_string();
        assert!(e.contains("it is a folder"), "{e}");
    }

    #[test]
    fn stale_temporaries_are_removed_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let stale = temporary_name(&dir.path().join("samples.csv"));
        std::fs::write(&stale, b"half").unwrap();
        std::fs::write(dir.path().join("notes.txt"), b"mine").unwrap();
        std::fs::write(dir.path().join(".hidden"), b"mine").unwrap();
        remove_stale(dir.path());
        assert_eq!(names(dir.path()), [".hidden", "notes.txt"]);
    }
}
