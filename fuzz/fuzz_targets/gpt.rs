//! The GPT reader of `kiln verify` (`verify::scan::gpt_from_ends`): the partition table from
//! the first and last bytes of a disk. Input: the disk size in sectors (4 bytes, little
//! endian), then up to HEAD_LEN bytes of the disk's start, then the bytes of its end
//! (zero-padded at the front to TAIL_LEN).
#![no_main]
use kiln::disk::gpt::{HEAD_LEN, SECTOR, TAIL_LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    let sectors = u32::from_le_bytes(data[..4].try_into().unwrap());
    let rest = &data[4..];
    let (h, t) = rest.split_at(rest.len().min(HEAD_LEN as usize));
    let mut head = h.to_vec();
    head.resize(HEAD_LEN as usize, 0);
    let t = &t[t.len().saturating_sub(TAIL_LEN as usize)..];
    let mut tail = vec![0u8; TAIL_LEN as usize - t.len()];
    tail.extend_from_slice(t);
    let _ = kiln::verify::scan::gpt_from_ends(&head, &tail, u64::from(sectors) * SECTOR);
});
