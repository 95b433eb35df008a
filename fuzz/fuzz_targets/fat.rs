//! kiln's own FAT reader (`disk::fatfix`, which walks a FAT volume's directory tree and
//! rewrites its "." and ".." entries). Input: one byte choosing FAT12/16/32, then the start of
//! the volume; the rest of its 64 MiB are zeros (a sparse file), so seeds need not hold the
//! empty clusters of a real volume.
#![no_main]
use libfuzzer_sys::fuzz_target;

const VOLUME: u64 = 64 << 20;

fuzz_target!(|data: &[u8]| {
    let Some((&kind, volume)) = data.split_first() else { return };
    let fat_type = match kind % 3 {
        0 => fatfs::FatType::Fat12,
        1 => fatfs::FatType::Fat16,
        _ => fatfs::FatType::Fat32,
    };
    let path = kiln_fuzz::scratch().join("fat.img");
    std::fs::write(&path, volume).unwrap();
    let file = std::fs::OpenOptions::new().read(true).write(true).open(&path).unwrap();
    file.set_len((volume.len() as u64).max(VOLUME)).unwrap();
    let _ = kiln::disk::fatfix::fix_dot_entries(&file, fat_type);
});
