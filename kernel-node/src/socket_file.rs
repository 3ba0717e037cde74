//! The node's Unix-domain socket file (`server.unix_socket`): owner-only
//! from the moment it can be reached, a file left there replaced only when
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
/// beside it, made owner-only, then renamed into place, so nobody connects
/// through the process's umask in between, and a stale socket is replaced
/// in one step.
pub fn bind(path: &Path) -> Result<(UnixListener, SocketFile), String> {
    check_free(path)?;
    let name = path
        .file_name()
        .ok_or("it names no file")?
        .to_string_lossy();
    let staging = path.with_file_name(format!(".{name}.{}.binding", std::process::id()));
    let _ = std::fs::remove_file(&staging);
    let listener = UnixListener::bind(&staging)
        .map_err(|e| format!("cannot bind {}: {e}", staging.display()))?;
    let placed = std::fs::set_permissions(&staging, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| format!("cannot set its mode: {e}"))
        .and_then(|()| {
            std::fs::rename(&staging, path).map_err(|e| format!("cannot move it into place: {e}"))
        })
        .and_then(|()| std::fs::symlink_metadata(path).map_err(|e| e.to_string()));
    match placed {
        Ok(meta) => Ok((
            listener,
            SocketFile {
                path: path.to_owned(),
                id: (meta.dev(), meta.ino()),
            },
        )),
        Err(e) => {
            let _ = std::fs::remove_file(&staging);
            Err(e)
        }
    }
}

/// Ok when nothing is at `path` or a socket nobody listens on (a node that
/// died left it); an error for anything else, which is never removed.
fn check_free(path: &Path) -> Result<(), String> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(format!("cannot look at it: {e}")),
    };
    if !meta.file_type().is_socket() {
        return Err("it exists and is not a socket; not replacing it".into());
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => Err("another process is listening on it".into()),
        Err(e) if e.kind() == ErrorKind::ConnectionRefused => Ok(()),
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
