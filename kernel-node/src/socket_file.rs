//! The node's Unix-domain socket file (`server.unix_socket`): owner-only
//! from the moment it can be reached (bound under a private name, then
//! linked into place), a file left there replaced only when
//! it is a socket nobody answers on, and removed at exit only while it is
//! still the one this node bound.

use std::io::ErrorKind;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tokio::net::UnixListener;

/// The socket file this node bound. Removed when dropped, unless another
/// process has put its own at the path since (a node that started while
/// this one drained).
#[derive(Debug)]
pub struct SocketFile {
    path: PathBuf,
    /// Device and inode of the file this node bound.
    id: (u64, u64),
}

/// Listens on `path`, mode 0600. The socket is bound under a private name
/// beside it (`.k<pid>`: short, as socket paths are limited to about 107
/// bytes), made owner-only, then linked into place, so nobody connects
/// through the process's umask in between; the link fails if another
/// process took the path meanwhile (two nodes starting at once), where a
/// rename would silently replace its socket.
pub fn bind(path: &Path) -> Result<(UnixListener, SocketFile), String> {
    if check_free(path)? == Found::Stale {
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(format!("cannot remove the stale socket: {e}")),
        }
    }
    let staging = path.with_file_name(format!(".k{}", std::process::id()));
    let _ = std::fs::remove_file(&staging);
    let listener = UnixListener::bind(&staging)
        .map_err(|e| format!("cannot bind {} (beside it): {e}", staging.display()))?;
    let placed = std::fs::set_permissions(&staging, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| format!("cannot set its mode: {e}"))
        .and_then(|()| {
            std::fs::hard_link(&staging, path).map_err(|e| match e.kind() {
                ErrorKind::AlreadyExists => "another process took the path meanwhile".to_owned(),
                _ => format!("cannot link it into place: {e}"),
            })
        })
        .and_then(|()| std::fs::symlink_metadata(path).map_err(|e| e.to_string()));
    // The private name goes either way; the listener stays bound.
    let _ = std::fs::remove_file(&staging);
    let meta = placed?;
    Ok((
        listener,
        SocketFile {
            path: path.to_owned(),
            id: (meta.dev(), meta.ino()),
        },
    ))
}

/// What [`check_free`] found at the path.
#[derive(Debug, PartialEq, Eq)]
enum Found {
    Nothing,
    /// A socket nobody listens on.
    Stale,
}

/// Nothing at `path`, or a socket nobody listens on (a node that died left
/// it); an error for anything else, which is never removed.
fn check_free(path: &Path) -> Result<Found, String> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Found::Nothing),
        Err(e) => return Err(format!("cannot look at it: {e}")),
    };
    if !meta.file_type().is_socket() {
        return Err("it exists and is not a socket; not replacing it".into());
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => Err("another process is listening on it".into()),
        Err(e) if e.kind() == ErrorKind::ConnectionRefused => Ok(Found::Stale),
        Err(e) => Err(format!(
            "cannot tell whether another process listens on it ({e}); remove it if none does"
        )),
    }
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        match std::fs::symlink_metadata(&self.path) {
            Ok(m) if (m.dev(), m.ino()) == self.id => {
                let _ = std::fs::remove_file(&self.path);
            }
            Ok(_) => tracing::info!(
                unix_socket = %self.path.display(),
                "another process's socket is at the path now; left in place"
            ),
            Err(_) => {}
        }
    }
}
