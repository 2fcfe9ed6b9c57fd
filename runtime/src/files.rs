//! The files and directories the broker creates: owned by us, private, never reached through
//! a symlink someone else planted.
//!
//! Directories we create are 0700 and files 0600. A directory we are given for private files
//! (the pid file's, the store's) must be ours and writable by nobody else; a file is opened
//! with `O_NOFOLLOW`, so a symlink in its place is refused rather than followed.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Our effective user id: the owner of `/proc/self`.
pub fn effective_uid() -> io::Result<u32> {
    Ok(std::fs::metadata("/proc/self")?.uid())
}

/// Creates `dir` (and missing parents) 0700, or checks that an existing one is a directory
/// (not a symlink), owned by us, and not writable by group or others.
pub fn private_dir(dir: &Path) -> io::Result<()> {
    match std::fs::symlink_metadata(dir) {
        Ok(meta) => check_private_dir(dir, &meta),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| named(dir, "cannot create directory", e))?;
            let meta = std::fs::symlink_metadata(dir)?;
            check_private_dir(dir, &meta)
        }
        Err(e) => Err(named(dir, "cannot inspect directory", e)),
    }
}

fn check_private_dir(dir: &Path, meta: &std::fs::Metadata) -> io::Result<()> {
    let refuse = |why: String| {
        Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("{}: {why}; refusing to keep files there", dir.display()),
        ))
    };
    if meta.file_type().is_symlink() {
        return refuse("is a symbolic link".to_owned());
    }
    if !meta.is_dir() {
        return refuse("is not a directory".to_owned());
    }
    let me = effective_uid()?;
    if meta.uid() != me {
        return refuse(format!(
            "is owned by uid {}, not by us (uid {me})",
            meta.uid()
        ));
    }
    let mode = meta.permissions().mode();
    if mode & 0o022 != 0 {
        return refuse(format!(
            "is writable by group or others (mode {:o}); chmod go-w it",
            mode & 0o7777
        ));
    }
    Ok(())
}

/// Opens `path` for writing, created 0600 if missing, truncated, never through a symlink.
pub fn create_private(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| named(path, "cannot open", e))
}

/// Opens `path` for appending, created 0600 if missing, never through a symlink.
pub fn append_private(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| named(path, "cannot open", e))
}

/// Reads a small file we wrote ourselves: not a symlink, owned by us.
pub fn read_own(path: &Path) -> io::Result<String> {
    let mut file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    let meta = file.metadata()?;
    if meta.uid() != effective_uid()? {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("{}: not owned by us", path.display()),
        ));
    }
    let mut text = String::new();
    io::Read::read_to_string(&mut file, &mut text)?;
    Ok(text)
}

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Replaces `path` with `bytes` atomically: a new, uniquely named temp file in the same
/// directory (created exclusively, so concurrent writers never share one), synced, renamed
/// over, and the directory synced. An existing file's mode and owner are kept; a new one
/// gets `new_mode`.
pub fn replace_atomically(path: &Path, bytes: &[u8], new_mode: u32) -> io::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let existing = std::fs::symlink_metadata(path).ok();
    if existing
        .as_ref()
        .is_some_and(|m| m.file_type().is_symlink())
    {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("{}: is a symbolic link; not replacing it", path.display()),
        ));
    }
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp: PathBuf = dir.join(format!(
        ".{name}.tmp-{}-{}",
        std::process::id(),
        TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let mode = existing
        .as_ref()
        .map_or(new_mode, |m| m.permissions().mode() & 0o7777);
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)?;
        file.write_all(bytes)?;
        if let Some(m) = &existing
            && (m.uid(), m.gid()) != (file.metadata()?.uid(), file.metadata()?.gid())
        {
            std::os::unix::fs::fchown(&file, Some(m.uid()), Some(m.gid()))?;
        }
        file.set_permissions(std::fs::Permissions::from_mode(mode))?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(|e| named(path, "cannot write", e))
}

fn named(path: &Path, what: &str, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{what} {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("tidemq-files-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn private_dirs_are_created_0700_and_shared_ones_refused() {
        let dir = scratch("dirs");
        private_dir(&dir.join("a/b")).unwrap();
        let mode = std::fs::metadata(dir.join("a/b"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700);
        let open = dir.join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
        let err = private_dir(&open).unwrap_err().to_string();
        assert!(err.contains("writable by group or others"), "{err}");
        let link = dir.join("link");
        std::os::unix::fs::symlink(dir.join("a"), &link).unwrap();
        assert!(
            private_dir(&link)
                .unwrap_err()
                .to_string()
                .contains("symbolic link")
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn private_files_refuse_symlinks() {
        let dir = scratch("links");
        private_dir(&dir).unwrap();
        let target = dir.join("target");
        std::fs::write(&target, "keep").unwrap();
        let link = dir.join("pid");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert!(create_private(&link).is_err());
        assert!(append_private(&link).is_err());
        assert!(read_own(&link).is_err());
        assert!(replace_atomically(&link, b"x", 0o600).is_err());
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep");
        let f = dir.join("new");
        drop(create_private(&f).unwrap());
        assert_eq!(
            std::fs::metadata(&f).unwrap().permissions().mode() & 0o777,
            0o600
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn replacing_keeps_the_mode_and_leaves_no_temp_files() {
        let dir = scratch("replace");
        private_dir(&dir).unwrap();
        let conf = dir.join("nanomq.conf");
        std::fs::write(&conf, "a=1\n").unwrap();
        std::fs::set_permissions(&conf, std::fs::Permissions::from_mode(0o640)).unwrap();
        let writers: Vec<_> = (0..8)
            .map(|i| {
                let conf = conf.clone();
                std::thread::spawn(move || {
                    replace_atomically(&conf, format!("a={i}\n").as_bytes(), 0o600)
                })
            })
            .collect();
        for w in writers {
            w.join().unwrap().unwrap();
        }
        assert_eq!(
            std::fs::metadata(&conf).unwrap().permissions().mode() & 0o777,
            0o640
        );
        let left: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
        assert_eq!(left.len(), 1, "temp files left behind");
        let fresh = dir.join("fresh.conf");
        replace_atomically(&fresh, b"x", 0o600).unwrap();
        assert_eq!(
            std::fs::metadata(&fresh).unwrap().permissions().mode() & 0o777,
            0o600
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
