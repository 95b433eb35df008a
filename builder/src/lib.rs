//! kiln: bakes reproducible, signed appliance disk images from TOML recipes.
pub mod arch;
pub mod disk;
