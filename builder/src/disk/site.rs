//! The site volume: where a box finds its site settings (`site.toml`) outside the signed image.
//!
//! The one contract shared by every way of delivering a site file:
//! - a FAT file system labelled [`LABEL`] whose root holds [`FILE_NAME`];
//! - on a flashed disk it fills a partition of type [`PARTITION_TYPE`] (kiln's own GPT type
//!   GUID) named [`LABEL`], placed at the end of the disk so the root can grow up to it;
//! - on a USB stick it is any FAT volume with that label; for a virtual machine, `kiln boot` and
//!   `kiln test` attach a volume written by [`write_volume`] as an extra disk.
//!
//! The box looks for them in that order (partition, then any FAT volume with the label).

use std::path::Path;

use anyhow::Result;
use uuid::{uuid, Uuid};

use super::esp::{write_esp, EspFile, EspOptions, EspSource};

/// GPT partition type GUID of a kiln site partition (kiln's own; no other software uses it).
pub const PARTITION_TYPE: Uuid = uuid!("6ee72326-f931-4cde-90bc-cf3aa833a038");

/// FAT volume label and GPT partition name of a site volume.
pub const LABEL: &str = "KILN-SITE";

/// The site file's name in the volume's root directory.
pub const FILE_NAME: &str = "site.toml";

/// Size of a site volume (and of the site partition kiln flash writes): room for the site file
/// and its keys, small enough to leave the rest of the disk to the root.
pub const VOLUME_SIZE: u64 = 16 * 1024 * 1024;

/// FAT volume serial of every site volume (fixed: the same site file gives the same bytes).
const VOLUME_ID: u32 = 0x6b69_7374;

/// Write a site volume holding `site_toml` to `path` (a new sparse file of [`VOLUME_SIZE`]
/// bytes). `timestamp` (Unix seconds) is every FAT timestamp, so the output is deterministic.
pub fn write_volume(path: &Path, site_toml: &[u8], timestamp: i64) -> Result<()> {
    let opts = EspOptions { size: VOLUME_SIZE, volume_id: VOLUME_ID, label: LABEL.to_string(), timestamp };
    let files = [EspFile { path: FILE_NAME.to_string(), contents: EspSource::Bytes(site_toml.to_vec()) }];
    write_esp(path, &opts, &files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volume_is_deterministic_and_holds_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a.img"), dir.path().join("b.img"));
        write_volume(&a, b"hostname = \"box\"\n", 1_700_000_000).unwrap();
        write_volume(&b, b"hostname = \"box\"\n", 1_700_000_000).unwrap();
        assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
        let f = std::fs::File::open(&a).unwrap();
        let fs = fatfs::FileSystem::new(f, fatfs::FsOptions::new()).unwrap();
        assert_eq!(fs.volume_label().trim_end(), LABEL);
        let mut s = String::new();
        std::io::Read::read_to_string(&mut fs.root_dir().open_file(FILE_NAME).unwrap(), &mut s).unwrap();
        assert_eq!(s, "hostname = \"box\"\n");
    }
}
