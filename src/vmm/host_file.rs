//! Opening and reading the host files a VM is built from (kernel, initrd,
//! firmware, configuration and map files, snapshot files) without trusting
//! what is at the path.
//!
//! Every such file must be a regular file of bounded size. A path naming a
//! FIFO would block `open(2)` until a writer appears, a character device
//! such as `/dev/zero` reads forever, and a directory fails only at the
//! first read with a message that does not say what was wrong. So:
//!
//! * files are opened with `O_NONBLOCK` (which makes opening a FIFO return
//!   at once; it changes nothing for a regular file) and `O_CLOEXEC`, plus
//!   `O_NOFOLLOW` where the caller asks for it;
//! * the type and size are taken with `fstat(2)` on the opened descriptor,
//!   not from the path, so nothing can be swapped in between the check and
//!   the read;
//! * reads stop one byte past the limit, so a file that grows after the
//!   check still cannot make the read unbounded.
//!
//! Errors are `std::io::Error`s (kind `InvalidInput` for a file of the
//! wrong type, `FileTooLarge` for one over its limit) so that the callers'
//! own errors, which already name the file and its role, carry them.

use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

/// Whether the last component of the path may be a symbolic link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Symlinks {
    Follow,
    /// Refuse a symlink (`O_NOFOLLOW`): for files in a directory Ember
    /// writes itself, where a link can only be a trap.
    Refuse,
}

/// What a non-regular file is, for messages.
fn kind_of(ft: &std::fs::FileType) -> &'static str {
    if ft.is_dir() {
        "a directory"
    } else if ft.is_fifo() {
        "a FIFO"
    } else if ft.is_char_device() {
        "a character device"
    } else if ft.is_block_device() {
        "a block device"
    } else if ft.is_socket() {
        "a socket"
    } else if ft.is_symlink() {
        "a symbolic link"
    } else {
        "not a regular file"
    }
}

/// Opens `path` for reading and checks that it is a regular file of at
/// most `limit` bytes; returns the file and its size. Never blocks on a
/// FIFO.
pub fn open_regular(path: &Path, limit: u64, symlinks: Symlinks) -> io::Result<(File, u64)> {
    let mut flags = libc::O_NONBLOCK | libc::O_CLOEXEC;
    if symlinks == Symlinks::Refuse {
        flags |= libc::O_NOFOLLOW;
    }
    let file = match OpenOptions::new().read(true).custom_flags(flags).open(path) {
        Ok(f) => f,
        // O_NOFOLLOW on a symlink fails with ELOOP, whose text ("too many
        // levels of symbolic links") would mislead.
        Err(e) if symlinks == Symlinks::Refuse && e.raw_os_error() == Some(libc::ELOOP) => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "is a symbolic link, which is not followed here",
            ))
        }
        Err(e) => return Err(e),
    };
    let meta = file.metadata()?;
    let ft = meta.file_type();
    if !ft.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("is {}, not a regular file", kind_of(&ft)),
        ));
    }
    let size = meta.len();
    if size > limit {
        return Err(too_large(limit));
    }
    Ok((file, size))
}

fn too_large(limit: u64) -> io::Error {
    io::Error::new(
        io::ErrorKind::FileTooLarge,
        format!("is larger than the {limit} bytes allowed here"),
    )
}

/// Reads all of the regular file `path`, at most `limit` bytes (see
/// [`open_regular`]).
pub fn read_regular(path: &Path, limit: u64, symlinks: Symlinks) -> io::Result<Vec<u8>> {
    let (file, size) = open_regular(path, limit, symlinks)?;
    let mut bytes = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
    // One byte past the limit tells a file that grew since fstat.
    file.take(limit.saturating_add(1)).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(too_large(limit));
    }
    Ok(bytes)
}

/// [`read_regular`] as UTF-8 text.
pub fn read_regular_to_string(path: &Path, limit: u64, symlinks: Symlinks) -> io::Result<String> {
    String::from_utf8(read_regular(path, limit, symlinks)?)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.utf8_error()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;
    use std::time::{Duration, Instant};

    fn temp_dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("ember-host-file-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn mkfifo(path: &Path) {
        let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: `c` is a valid NUL-terminated path for the call.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    }

    #[test]
    fn reads_a_regular_file_within_its_limit() {
        let dir = temp_dir("regular");
        let path = dir.join("f");
        std::fs::write(&path, b"hello").unwrap();
        assert_eq!(read_regular(&path, 5, Symlinks::Follow).unwrap(), b"hello");
        let e = read_regular(&path, 4, Symlinks::Follow).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::FileTooLarge, "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn refuses_devices_directories_and_fifos_without_blocking() {
        let dir = temp_dir("special");
        let fifo = dir.join("fifo");
        mkfifo(&fifo);
        let started = Instant::now();
        for (path, kind) in [
            (Path::new("/dev/zero"), "character device"),
            (dir.as_path(), "directory"),
            (fifo.as_path(), "FIFO"),
        ] {
            let e = read_regular(path, 1 << 20, Symlinks::Follow).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{path:?}: {e}");
            assert!(e.to_string().contains(kind), "{path:?}: {e}");
        }
        // Nothing waited for a FIFO writer or read a device to its end.
        assert!(started.elapsed() < Duration::from_secs(5));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_symlink_is_followed_only_when_allowed() {
        let dir = temp_dir("symlink");
        let target = dir.join("target");
        std::fs::write(&target, b"x").unwrap();
        let link = dir.join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert_eq!(read_regular(&link, 1, Symlinks::Follow).unwrap(), b"x");
        let e = read_regular(&link, 1, Symlinks::Refuse).unwrap_err();
        assert!(e.to_string().contains("symbolic link"), "{e}");
        // A link to a device is refused for the device even when followed.
        let zero = dir.join("zero");
        std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
        let e = read_regular(&zero, 1 << 20, Symlinks::Follow).unwrap_err();
        assert!(e.to_string().contains("character device"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
