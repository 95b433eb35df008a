//! The ground floor: mechanisms every stage uses to talk to the build host (programs, files,
//! the cache, the network, the work directory, progress). Nothing here imports a stage.
pub mod blockdev;
pub mod cache;
pub mod cmd;
pub mod files;
pub mod gpg;
pub mod net;
pub mod pagecache;
pub mod progress;
pub mod work;
