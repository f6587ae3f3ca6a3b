//! Output files that are whole or absent. Every file a command leaves behind (dumps,
//! summaries, samples, plots, fitted lenses, run.json) is written here: to a temporary file
//! in the same folder, synced, then renamed over its name, so that a reader, a crash, a
//! kill or a full disk never leaves half a file under the real name. On Linux the file has
//! no name at all until it is whole (O_TMPFILE, where the filesystem has it), so a kill
//! mid-write leaves nothing. The file gets the permissions a plain create would give it:
//! those of the file it replaces, else the default (0o666 less the umask). A failure names
//! the file being written and says so; the temporary file is removed.
//!
//! A temporary file outlives its process only when the process is killed between naming
//! it and the rename (where unnamed files exist: then it is whole) or mid-write (where
//! they do not); its name ([`is_temporary`]) marks it and the process that made it. [`remove_stale`] clears
//! the leftovers of processes that are gone from a results folder when the next run starts
//! there, and each write clears those of its own file.

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
    write_via(path, &|f| f.write_all(bytes), true)
}

/// Writes `path` through `fill`, whole or not at all: through an unnamed file where
/// `try_unnamed` and the filesystem allow, else through a named temporary file.
fn write_via(
    path: &Path,
    fill: &dyn Fn(&mut File) -> std::io::Result<()>,
    try_unnamed: bool,
) -> Result<()> {
    let target = resolve(path);
    let fail = |e: std::io::Error| Error::write(path, e);
    if target.is_dir() {
        return Err(fail(std::io::Error::new(
            std::io::ErrorKind::IsADirectory,
            "it is a folder",
        )));
    }
    let dir = folder(target.parent().unwrap_or(Path::new(".")));
    if let Some(name) = target.file_name() {
        remove_stale_of(dir, Some(name));
    }
    // a plain create keeps the permissions of the file it truncates
    let keep = std::fs::metadata(&target).ok().map(|m| m.permissions());
    let finish = |file: &mut File| -> std::io::Result<()> {
        if let Some(p) = &keep {
            file.set_permissions(p.clone())?;
        }
        fill(file)?;
        file.sync_all()
    };
    let tmp = temporary_name(&target);
    let result = match try_unnamed.then(|| unnamed(dir)).flatten() {
        // the file gets a name only once it is whole
        Some(mut file) => finish(&mut file).and_then(|_| link(&file, &tmp)),
        None => OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .and_then(|mut file| finish(&mut file)),
    }
    .and_then(|_| std::fs::rename(&tmp, &target));
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(fail(e));
    }
    // the rename itself reaches the disk with the folder; best effort (not every
    // filesystem can sync a folder)
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// A file in `dir` with no name yet (Linux's O_TMPFILE): killed before [`link`], the
/// process leaves nothing behind; `None` where the filesystem or the OS has no such files,
/// and the temporary file is then created under its name.
#[cfg(target_os = "linux")]
fn unnamed(dir: &Path) -> Option<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_TMPFILE)
        .mode(0o666)
        .open(dir)
        .ok()
        // linking it needs /proc
        .filter(|_| Path::new("/proc/self/fd").is_dir())
}

#[cfg(not(target_os = "linux"))]
fn unnamed(_dir: &Path) -> Option<File> {
    None
}

/// Gives an unnamed file the name `to` (in its own folder).
#[cfg(target_os = "linux")]
fn link(file: &File, to: &Path) -> std::io::Result<()> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::io::AsRawFd;
    let from = CString::new(format!("/proc/self/fd/{}", file.as_raw_fd()))?;
    let to = CString::new(to.as_os_str().as_bytes())?;
    // SAFETY: both are NUL-terminated paths that live across the call
    let rc = unsafe {
        libc::linkat(
            libc::AT_FDCWD,
            from.as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            libc::AT_SYMLINK_FOLLOW,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(not(target_os = "linux"))]
fn link(_file: &File, _to: &Path) -> std::io::Result<()> {
    unreachable!("unnamed files are Linux's")
}

/// A path's parent as a folder to open: "" is ".".
fn folder(dir: &Path) -> &Path {
    if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    }
}

/// Whether `name` is one of this module's temporary files.
pub fn is_temporary(name: &std::ffi::OsStr) -> bool {
    parse_temporary(name).is_some()
}

/// Removes the temporary files that killed processes left in `dir`: only this module's
/// names, and only those of processes that are gone (another qwen-scope writing there now
/// keeps its own). Errors are ignored: a leftover is harmless, only untidy.
pub fn remove_stale(dir: &Path) {
    remove_stale_of(dir, None);
}

/// [`remove_stale`], for the temporaries of one file name only when `of` is given.
fn remove_stale_of(dir: &Path, of: Option<&std::ffi::OsStr>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some((file, pid)) = parse_temporary(&name) else {
            continue;
        };
        if of.is_some_and(|of| of.to_string_lossy() != file) || process_alive(pid) {
            continue;
        }
        let _ = std::fs::remove_file(entry.path());
    }
}

/// `.<name>.qwen-scope-tmp.<pid>.<n>` -> (name, pid).
fn parse_temporary(name: &std::ffi::OsStr) -> Option<(String, u32)> {
    let name = name.to_str()?.strip_prefix('.')?;
    let (file, rest) = name.rsplit_once(MARKER)?;
    let (pid, n) = rest.split_once('.')?;
    n.parse::<u64>().ok()?;
    Some((file.to_string(), pid.parse().ok()?))
}

/// Whether process `pid` still runs (Linux: /proc; elsewhere every process counts as
/// running, so nothing is removed).
fn process_alive(pid: u32) -> bool {
    if pid == std::process::id() {
        return true;
    }
    if !Path::new("/proc/self").exists() {
        return true;
    }
    Path::new("/proc").join(pid.to_string()).exists()
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

    /// Both ways of writing: through an unnamed file (Linux) and a named temporary one.
    const WAYS: [bool; 2] = [true, false];

    #[test]
    fn writes_whole_and_leaves_nothing_else() {
        for unnamed in WAYS {
            let dir = tempfile::tempdir().unwrap();
            let p = dir.path().join("summary.csv");
            let put = |b: &[u8]| write_via(&p, &|f| f.write_all(b), unnamed);
            put(b"a,b\n1,2\n").unwrap();
            put(b"a,b\n3,4\n").unwrap();
            assert_eq!(std::fs::read(&p).unwrap(), b"a,b\n3,4\n");
            assert_eq!(names(dir.path()), ["summary.csv"]);
        }
    }

    #[test]
    fn a_failing_writer_leaves_the_old_file_and_no_temporary() {
        for unnamed in WAYS {
            let dir = tempfile::tempdir().unwrap();
            let p = dir.path().join("run.json");
            write(&p, b"old").unwrap();
            let fill = |f: &mut File| {
                f.write_all(b"half")?;
                Err(std::io::Error::other("disk on fire"))
            };
            let e = write_via(&p, &fill, unnamed).unwrap_err().to_string();
            assert_eq!(e, format!("cannot write {}: disk on fire", p.display()));
            assert_eq!(std::fs::read(&p).unwrap(), b"old");
            assert_eq!(names(dir.path()), ["run.json"]);
        }
    }

    #[test]
    fn permissions_are_a_plain_creates() {
        let dir = tempfile::tempdir().unwrap();
        // a new file: what File::create gives (0o666 less the umask)
        let plain = dir.path().join("plain");
        File::create(&plain).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        for unnamed in WAYS {
            let p = dir.path().join(format!("new-{unnamed}"));
            let put = |b: &[u8]| write_via(&p, &|f| f.write_all(b), unnamed);
            put(b"x").unwrap();
            assert_eq!(mode(&p), mode(&plain));
            // an existing file keeps its own
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o640)).unwrap();
            put(b"y").unwrap();
            assert_eq!(mode(&p), 0o640);
        }
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
        // a process that is gone (pid_max is at most 2^22 on Linux) and a live one: this
        let gone = |name: &str| dir.path().join(format!(".{name}{MARKER}{}.0", 1u32 << 23));
        std::fs::write(gone("samples.csv"), b"half").unwrap();
        std::fs::write(gone("summary.csv"), b"half").unwrap();
        let live = temporary_name(&dir.path().join("run.json"));
        std::fs::write(&live, b"being written").unwrap();
        std::fs::write(dir.path().join("notes.txt"), b"mine").unwrap();
        std::fs::write(dir.path().join(".hidden"), b"mine").unwrap();
        // writing a file clears its own leftovers only
        write(&dir.path().join("samples.csv"), b"a\n").unwrap();
        assert!(!gone("samples.csv").exists() && gone("summary.csv").exists());
        remove_stale(dir.path());
        let live = live.file_name().unwrap().to_string_lossy().into_owned();
        assert_eq!(
            names(dir.path()),
            [
                ".hidden".to_string(),
                live,
                "notes.txt".into(),
                "samples.csv".into()
            ]
        );
    }
}
