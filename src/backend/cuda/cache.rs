//! The on-disk cache of compiled kernels (PTX from NVRTC, and the kernel emulator's libraries).
//!
//! Compiled code is loaded and run, so where it comes from matters: a file another user could plant
//! would run with our rights. The cache therefore lives in a per-user directory,
//! `$XDG_CACHE_HOME/metagrad` (or `~/.cache/metagrad`), created with mode 0700; a directory that exists
//! but belongs to someone else, or that others may write, is refused (the caller then compiles
//! without caching). A cached file is used only if it is a regular file owned by this user whose
//! content hash matches the hash recorded beside it when it was written; anything else is rebuilt.
//! Files are written to a private temporary name and renamed into place, so a reader sees a whole file
//! or none.

use crate::error::{Error, Result};
use std::path::{Path, PathBuf};

/// A stable 64-bit FNV-1a hash of `parts` (cache keys and content hashes).
pub(crate) fn fnv(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in parts.iter().flat_map(|p| p.iter().copied().chain([0])) {
        h = (h ^ b as u64).wrapping_mul(0x100000001b3);
    }
    h
}

/// The cache directory, created (mode 0700) if missing; an error if it is not safe to use.
pub(crate) fn dir() -> Result<PathBuf> {
    let base = match std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        Some(x) => PathBuf::from(x),
        None => PathBuf::from(std::env::var_os("HOME").ok_or_else(|| bad("neither XDG_CACHE_HOME nor HOME is set".into()))?).join(".cache"),
    };
    let dir = base.join("metagrad");
    private_dir(&dir)?;
    Ok(dir)
}

fn bad(msg: String) -> Error {
    Error::device("kernel cache", msg)
}

/// Creates `dir` (and its parents) with mode 0700 if missing, and checks that it is a directory owned
/// by this user that no one else may write.
pub(crate) fn private_dir(dir: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{DirBuilderExt, MetadataExt};
        if !dir.exists() {
            std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(|e| Error::io("kernel cache", dir.display(), e))?;
        }
        let m = std::fs::symlink_metadata(dir).map_err(|e| Error::io("kernel cache", dir.display(), e))?;
        if !m.is_dir() || m.uid() != uid() || m.mode() & 0o022 != 0 {
            return Err(bad(format!(
                "{} is not a directory owned by this user and closed to others (uid {}, mode {:o}); not using it",
                dir.display(),
                m.uid(),
                m.mode() & 0o777
            )));
        }
    }
    #[cfg(not(unix))]
    std::fs::create_dir_all(dir).map_err(|e| Error::io("kernel cache", dir.display(), e))?;
    Ok(())
}

#[cfg(unix)]
fn uid() -> u32 {
    // SAFETY: getuid has no preconditions and cannot fail.
    unsafe { libc::getuid() }
}

/// The sidecar holding `path`'s content hash.
fn hash_path(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".fnv");
    PathBuf::from(p)
}

/// Whether `path` is a regular file owned by this user (not a link).
fn ours(path: &Path) -> bool {
    let Ok(m) = std::fs::symlink_metadata(path) else { return false };
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        m.is_file() && m.uid() == uid()
    }
    #[cfg(not(unix))]
    m.is_file()
}

/// The cached bytes at `path`, if the file is ours and matches its recorded hash.
pub(crate) fn read(path: &Path) -> Option<Vec<u8>> {
    let hp = hash_path(path);
    if !ours(path) || !ours(&hp) {
        return None;
    }
    let bytes = std::fs::read(path).ok()?;
    let want = std::fs::read_to_string(hp).ok()?;
    (want.trim() == format!("{:016x}", fnv(&[&bytes]))).then_some(bytes)
}

/// Writes `bytes` to `path` with its hash, atomically (best effort: a failed write only costs a later
/// process a compile).
pub(crate) fn write(path: &Path, bytes: &[u8]) {
    let tmp = |p: &Path| {
        let mut t = p.as_os_str().to_owned();
        t.push(format!(".tmp{}", std::process::id()));
        PathBuf::from(t)
    };
    let hp = hash_path(path);
    let (t1, t2) = (tmp(path), tmp(&hp));
    let ok = std::fs::write(&t1, bytes).is_ok() && std::fs::write(&t2, format!("{:016x}\n", fnv(&[bytes]))).is_ok();
    // The hash goes in last: a reader that sees the new hash sees the new file.
    if ok && std::fs::rename(&t1, path).is_ok() {
        let _ = std::fs::rename(&t2, &hp);
    }
    let _ = (std::fs::remove_file(&t1), std::fs::remove_file(&t2));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("metagrad-cache-test-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn a_written_file_reads_back_and_a_tampered_one_does_not() {
        let d = scratch("rw");
        private_dir(&d).unwrap();
        let f = d.join("k.ptx");
        write(&f, b"kernel");
        assert_eq!(read(&f).as_deref(), Some(&b"kernel"[..]));
        // A planted or corrupted file (content changed behind the recorded hash) is not used.
        std::fs::write(&f, b"evil").unwrap();
        assert_eq!(read(&f), None);
        // A file without its hash is not used either.
        std::fs::write(d.join("other.ptx"), b"planted").unwrap();
        assert_eq!(read(&d.join("other.ptx")), None);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[cfg(unix)]
    #[test]
    fn directories_open_to_others_are_refused() {
        use std::os::unix::fs::PermissionsExt;
        let d = scratch("perm");
        private_dir(&d).unwrap();
        let mode = std::fs::metadata(&d).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700, "created with mode {mode:o}");
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = private_dir(&d).unwrap_err();
        assert!(e.to_string().contains("not using it"), "{e}");
        // A symbolic link in place of the directory is refused too.
        let link = scratch("link");
        std::os::unix::fs::symlink(&d, &link).unwrap();
        assert!(private_dir(&link).is_err());
        let _ = (std::fs::remove_file(&link), std::fs::remove_dir_all(&d));
    }
}
