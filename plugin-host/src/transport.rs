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
    /// One address, given to every plugin: a `unix://` one serves
    /// `transport = "unix"` too, any other refuses it (the `plugin-host`
    /// binary's `--kernel`).
    pub fn one(url: &str) -> KernelUrls {
        KernelUrls {
            tcp: url.to_owned(),
            unix: url.starts_with("unix://").then(|| url.to_owned()),
        }
    }

    /// The address for `transport`, or why there is none.
    pub fn get(&self, transport: Transport) -> Result<&str, String> {
        match transport {
            Transport::Tcp => Ok(&self.tcp),
            Transport::Unix => self.unix.as_deref().ok_or_else(|| {
                "transport = \"unix\" but no unix:// address of the kernel is known here".to_owned()
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_address_serves_unix_plugins_only_when_it_is_a_unix_one() {
        let sock = KernelUrls::one("unix:///run/kernel.sock");
        assert_eq!(sock.get(Transport::Unix), Ok("unix:///run/kernel.sock"));
        assert_eq!(sock.get(Transport::Tcp), Ok("unix:///run/kernel.sock"));
        let tcp = KernelUrls::one("http://127.0.0.1:50051");
        assert_eq!(tcp.get(Transport::Tcp), Ok("http://127.0.0.1:50051"));
        let err = tcp.get(Transport::Unix).expect_err("no unix address");
        assert!(err.contains("unix://"), "{err}");
    }
}
