//! How a supervised plugin reaches the kernel: the manifest's
//! `transport` and the address the host gives for each.

use serde::Deserialize;

/// The kernel address a supervised plugin is given.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// The kernel's TCP port (`http://` or, with TLS, `https://`).
    #[default]
    Tcp,
    /// The kernel's Unix-domain socket (`unix:///path`).
    Unix,
}

/// Where supervised plugins reach the kernel, by [`Transport`].
#[derive(Debug, Clone)]
pub struct KernelUrls {
    /// For `transport = "tcp"` (the default).
    pub tcp: String,
    /// For `transport = "unix"`; none when the kernel has no socket a
    /// plugin can use.
    pub unix: Option<String>,
}

impl KernelUrls {
    /// One address for every plugin (`transport = "unix"` is refused).
    pub fn tcp(url: &str) -> KernelUrls {
        KernelUrls {
            tcp: url.to_owned(),
            unix: None,
        }
    }

    /// The address for `transport`, or why there is none.
    pub fn get(&self, transport: Transport) -> Result<&str, String> {
        match transport {
            Transport::Tcp => Ok(&self.tcp),
            Transport::Unix => self.unix.as_deref().ok_or_else(|| {
                "transport = \"unix\" but the kernel has no Unix-domain socket for plugins \
                 (server.unix_socket unset, or TLS on)"
                    .to_owned()
            }),
        }
    }
}
