//! Debian's formats and archives: control files, installed packages, the mirror's indexes, the
//! .deb cache, where a bootstrap's packages come from, extra apt repositories.
pub mod deb822;
pub mod debcache;
pub mod mirror;
pub mod names;
pub mod packages;
pub mod pinning;
pub mod repos;
pub mod source;
