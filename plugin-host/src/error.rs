//! The plugin host's error type.

/// What can go wrong hosting plugins.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A manifest was refused; the plugin is not started.
    #[error("plugin `{plugin}`: `{key}` {reason}")]
    Manifest {
        /// The plugin (or where its manifest came from).
        plugin: String,
        /// The key that is wrong.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The plugin's process could not be started.
    #[error("plugin `{plugin}`: cannot start: {reason}")]
    Spawn {
        /// The plugin.
        plugin: String,
        /// Why.
        reason: String,
    },
    /// No plugin by that name is hosted.
    #[error("no plugin `{plugin}` is hosted here")]
    Unknown {
        /// The name asked for.
        plugin: String,
    },
}
