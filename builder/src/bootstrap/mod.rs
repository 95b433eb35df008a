//! Making Debian trees with mmdebstrap: the image's root (cached, given to a build as an
//! overlay) and the pinned tools tree; emulation and native help for foreign architectures.
pub mod assist;
pub mod emulation;
pub mod root;
pub mod tools;
