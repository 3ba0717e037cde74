//! Example plugins for the kernel node; see the binaries in `src/bin`.
