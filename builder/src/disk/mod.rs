//! Disk image: GPT and ESP (owned by kiln, no external tools).

pub mod esp;
pub mod gpt;

pub use gpt::{Layout, PartitionSpec, PlacedPartition};

/// Read the partition table of an existing image and return the layout found.
/// Both the primary and the backup GPT must be valid.
pub fn read_layout(image: &std::path::Path) -> anyhow::Result<Layout> {
    gpt::read_gpt(image)
}
