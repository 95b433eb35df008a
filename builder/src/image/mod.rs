//! From a finished root to disk bytes: the boot pieces for the ESP (cached by their inputs)
//! and the root filesystem. The GPT and FAT writers are the ground floor's `disk` module.
pub mod boot;
pub mod espcache;
pub mod filesystem;
