//! Partition layout planning and deterministic GPT writing (via the `gpt` crate).
//!
//! The GPT is rendered into an in-memory device first, so that the
//! exact bytes of the head region (protective MBR, primary header and entries)
//! and of the tail region (backup entries and header) are known before anything
//! touches the output file. [`write_gpt`] writes those two regions; the image
//! assembler in [`super`] streams them together with the partition contents.

use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;

use anyhow::{bail, ensure, Context, Result};
use gpt::disk::LogicalBlockSize;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Logical sector size of every image kiln builds.
pub const SECTOR: u64 = 512;
/// Partitions start on 1 MiB boundaries.
pub const ALIGN: u64 = 1024 * 1024;

/// Number of partition entries in the table (the GPT minimum, as everybody uses).
const NUM_ENTRIES: u64 = 128;
/// Sectors occupied by the partition entry array (128 entries of 128 bytes).
const ENTRY_SECTORS: u64 = NUM_ENTRIES * 128 / SECTOR;
/// Protective MBR + primary header + primary entries.
pub const HEAD_LEN: u64 = (2 + ENTRY_SECTORS) * SECTOR;
/// Backup entries + backup header.
pub const TAIL_LEN: u64 = (ENTRY_SECTORS + 1) * SECTOR;
/// Longest partition name a GPT entry holds, in UTF-16 code units.
const MAX_LABEL_UNITS: usize = 36;

/// What the caller asks for: one partition, in disk order.
#[derive(Debug, Clone, Serialize)]
pub struct PartitionSpec {
    /// GPT partition name (at most 36 UTF-16 code units).
    pub label: String,
    /// Partition type GUID.
    pub type_guid: Uuid,
    /// Unique partition GUID, written exactly as given.
    pub part_guid: Uuid,
    /// Size in bytes (rounded up to [`ALIGN`]); `None` fills the rest of the disk (last partition only).
    pub size: Option<u64>,
    /// GPT attribute bits (e.g. [`GROWFS`]); 0 for none.
    #[serde(skip_serializing_if = "is_zero")]
    pub flags: u64,
}

/// GPT attribute bit 59, "grow the file system to the partition" (Discoverable Partitions
/// Specification): systemd-growfs and `systemd-dissect` read it.
pub const GROWFS: u64 = 1 << 59;

fn is_zero(v: &u64) -> bool {
    *v == 0
}

/// A partition placed on the disk. Offsets and sizes are in bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlacedPartition {
    /// 1-based partition number (index in the GPT entry array + 1).
    pub number: u32,
    /// GPT partition name.
    pub label: String,
    /// Partition type GUID.
    pub type_guid: Uuid,
    /// Unique partition GUID.
    pub part_guid: Uuid,
    /// Byte offset of the first sector (a multiple of [`ALIGN`] when planned by [`plan_layout`]).
    pub offset: u64,
    /// Size in bytes (a multiple of [`SECTOR`]).
    pub size: u64,
    /// GPT attribute bits; 0 (and absent from JSON) for none.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub flags: u64,
}

/// A complete disk layout: size, disk GUID and the placed partitions in order.
#[derive(Debug, Clone, Serialize)]
pub struct Layout {
    /// Total image size in bytes (a multiple of [`SECTOR`]).
    pub disk_size: u64,
    /// GPT disk GUID.
    pub disk_guid: Uuid,
    /// Partitions in disk order, numbered from 1.
    pub partitions: Vec<PlacedPartition>,
}

impl Layout {
    /// Byte offset of the backup GPT (entries followed by the header) at the end of the disk.
    pub(crate) fn tail_offset(&self) -> u64 {
        self.disk_size - TAIL_LEN
    }
}

fn round_up(value: u64, to: u64) -> Option<u64> {
    value.checked_add(to - 1).map(|v| v / to * to)
}

fn check_label(label: &str) -> Result<()> {
    let units = label.encode_utf16().count();
    ensure!(
        units <= MAX_LABEL_UNITS,
        "partition label {label:?} is {units} UTF-16 units long, GPT allows at most {MAX_LABEL_UNITS}"
    );
    Ok(())
}

/// Place partitions in order, 1 MiB aligned, leaving room for the backup GPT
/// (33 sectors) at the end of the disk.
///
/// Given sizes are rounded up to [`ALIGN`]. A `None` size (only allowed for the
/// last partition) takes the rest of the usable space, rounded down to [`ALIGN`]
/// so every planned size is a whole number of MiB.
/// Errors name the numbers when partitions do not fit, when `disk_size` is not a
/// multiple of 512, or when a `None` size is not last.
pub fn plan_layout(disk_size: u64, disk_guid: Uuid, specs: &[PartitionSpec]) -> Result<Layout> {
    ensure!(disk_size % SECTOR == 0, "disk size {disk_size} bytes is not a multiple of the {SECTOR}-byte sector size");
    // Labels, partition count and tiny disks are checked by validate_layout at the end.
    let usable_end = disk_size.saturating_sub(TAIL_LEN);
    let mut offset = ALIGN;
    let mut partitions = Vec::with_capacity(specs.len());
    for (i, spec) in specs.iter().enumerate() {
        let number = i as u32 + 1;
        let size = match spec.size {
            Some(0) => bail!("partition {number} ({:?}) has size 0", spec.label),
            Some(s) => round_up(s, ALIGN).with_context(|| {
                format!("partition {number} ({:?}) size {s} bytes is too large", spec.label)
            })?,
            None if i + 1 != specs.len() => bail!(
                "partition {number} ({:?}) has no size (fill the rest of the disk), but only the last of {} partitions may",
                spec.label,
                specs.len()
            ),
            None => {
                let rest = usable_end.saturating_sub(offset) / ALIGN * ALIGN;
                ensure!(
                    rest > 0,
                    "no space left for partition {number} ({:?}) that fills the rest of the disk: it would start at {offset}, usable space ends at {usable_end} (disk size {disk_size} bytes)",
                    spec.label
                );
                rest
            }
        };
        let end = offset.checked_add(size).filter(|&end| end <= usable_end);
        let Some(end) = end else {
            bail!(
                "partition {number} ({:?}) does not fit: {size} bytes at offset {offset} would end at {}, but usable space ends at {usable_end} (disk size {disk_size} bytes, backup GPT needs the last {TAIL_LEN})",
                spec.label,
                offset as u128 + size as u128
            );
        };
        partitions.push(PlacedPartition {
            number,
            label: spec.label.clone(),
            type_guid: spec.type_guid,
            part_guid: spec.part_guid,
            offset,
            size,
            flags: spec.flags,
        });
        offset = end;
    }
    let layout = Layout { disk_size, disk_guid, partitions };
    validate_layout(&layout)?;
    tracing::debug!(disk_size, partitions = layout.partitions.len(), "planned disk layout");
    Ok(layout)
}

/// Check that a (possibly hand-made) layout can be written: sector multiples,
/// numbers 1..=n in order, no overlap, everything inside the usable area.
pub(crate) fn validate_layout(layout: &Layout) -> Result<()> {
    let disk_size = layout.disk_size;
    ensure!(
        disk_size % SECTOR == 0 && disk_size >= HEAD_LEN + TAIL_LEN + SECTOR,
        "disk size {disk_size} bytes must be a multiple of {SECTOR} and at least {} bytes",
        HEAD_LEN + TAIL_LEN + SECTOR
    );
    ensure!(
        layout.partitions.len() as u64 <= NUM_ENTRIES,
        "{} partitions in layout, the GPT holds at most {NUM_ENTRIES}",
        layout.partitions.len()
    );
    let usable_end = layout.tail_offset();
    let mut prev_end = HEAD_LEN;
    let mut guids = HashSet::new();
    for (i, p) in layout.partitions.iter().enumerate() {
        let what = format!("partition {} ({:?})", p.number, p.label);
        ensure!(
            p.number as usize == i + 1,
            "{what} is at position {} of the layout; numbers must be 1..=n in order",
            i + 1
        );
        check_label(&p.label)?;
        ensure!(guids.insert(p.part_guid), "{what} reuses partition GUID {}", p.part_guid);
        ensure!(
            p.offset % SECTOR == 0 && p.size % SECTOR == 0 && p.size > 0,
            "{what}: offset {} and size {} must be non-zero multiples of {SECTOR}",
            p.offset,
            p.size
        );
        ensure!(
            p.offset >= prev_end,
            "{what} at offset {} overlaps the GPT or the previous partition (ending at {prev_end})",
            p.offset
        );
        let end = p.offset.checked_add(p.size).filter(|&e| e <= usable_end);
        prev_end = end.with_context(|| {
            format!("{what}: {} bytes at offset {} go past the usable end {usable_end}", p.size, p.offset)
        })?;
    }
    Ok(())
}

/// The bytes of the GPT: `head` belongs at offset 0, `tail` at `tail_offset`.
pub(crate) struct GptImage {
    pub head: Vec<u8>,
    pub tail: Vec<u8>,
    pub tail_offset: u64,
}

/// Render the protective MBR and both GPTs for `layout` in memory.
pub(crate) fn render_gpt(layout: &Layout) -> Result<GptImage> {
    validate_layout(layout)?;
    let sectors = layout.disk_size / SECTOR;
    let mut mem = GptDevice::new(layout.disk_size);
    let mbr_size = u32::try_from(sectors - 1).unwrap_or(u32::MAX);
    gpt::mbr::ProtectiveMBR::with_lb_size(mbr_size).overwrite_lba0(&mut mem).context("writing protective mbr")?;

    let mut disk = gpt::GptConfig::new()
        .writable(true)
        .logical_block_size(LogicalBlockSize::Lb512)
        .create_from_device(mem, Some(layout.disk_guid))
        .context("creating in-memory gpt")?;
    let table: BTreeMap<u32, gpt::partition::Partition> = layout
        .partitions
        .iter()
        .map(|p| {
            let part = gpt::partition::Partition {
                part_type_guid: p.type_guid.into(),
                part_guid: p.part_guid,
                first_lba: p.offset / SECTOR,
                last_lba: (p.offset + p.size) / SECTOR - 1,
                flags: p.flags,
                name: p.label.clone(),
            };
            (p.number, part)
        })
        .collect();
    disk.update_partitions(table).context("setting gpt partition entries")?;
    let mem = disk.write().context("writing gpt to memory")?;

    Ok(GptImage { head: mem.head, tail: mem.tail, tail_offset: layout.tail_offset() })
}

/// Write protective MBR + primary and backup GPT for `layout` into `file`,
/// which must already be `layout.disk_size` bytes long (sparse is fine).
///
/// Deterministic: disk and partition GUIDs are exactly those of `layout`, so the
/// same layout always produces byte-identical tables. Only the GPT regions are written.
pub fn write_gpt(file: &mut File, layout: &Layout) -> Result<()> {
    let len = file.metadata().context("reading image file size")?.len();
    ensure!(len == layout.disk_size, "image file is {len} bytes, layout expects {} bytes", layout.disk_size);
    let image = render_gpt(layout)?;
    file.write_all_at(&image.head, 0).context("writing primary gpt")?;
    file.write_all_at(&image.tail, image.tail_offset).context("writing backup gpt")?;
    tracing::debug!(disk_guid = %layout.disk_guid, "wrote gpt");
    Ok(())
}

/// The layout of `image` moved onto a disk of `disk_size` bytes (its backup GPT at the disk's
/// real end), with `extra` partitions appended (e.g. the site partition at the disk's end).
/// The image's partitions keep their places, numbers, GUIDs and attributes.
pub fn for_disk(image: &Layout, disk_size: u64, extra: &[PlacedPartition]) -> Result<Layout> {
    let mut partitions = image.partitions.clone();
    partitions.extend(extra.iter().cloned());
    let layout = Layout { disk_size, disk_guid: image.disk_guid, partitions };
    validate_layout(&layout).with_context(|| format!("laying the image out on a disk of {disk_size} bytes"))?;
    Ok(layout)
}

/// Offset of a partition of `size` bytes placed last on a disk of `disk_size` bytes, aligned
/// down to [`ALIGN`] and clear of the backup GPT.
pub fn last_offset(disk_size: u64, size: u64) -> Option<u64> {
    disk_size.checked_sub(TAIL_LEN)?.checked_sub(size).map(|o| o / ALIGN * ALIGN)
}

/// Write the protective MBR and both GPTs of `layout` to `dev` (a disk or file of at least
/// `layout.disk_size` bytes), without checking its length: for block devices.
pub fn write_gpt_to(dev: &File, layout: &Layout) -> Result<()> {
    let image = render_gpt(layout)?;
    dev.write_all_at(&image.head, 0).context("writing the primary GPT")?;
    dev.write_all_at(&image.tail, image.tail_offset).context("writing the backup GPT")?;
    Ok(())
}

/// Read the partition table of an existing image (both headers must be valid).
pub(crate) fn read_gpt(image: &std::path::Path) -> Result<Layout> {
    let mut file = File::open(image).with_context(|| format!("opening {}", image.display()))?;
    let disk_size = file.seek(SeekFrom::End(0)).context("finding image size")?;
    layout_of(file, disk_size).with_context(|| format!("reading the GPT of {}", image.display()))
}

/// The layout in the GPT of `dev` (a disk of `disk_size` bytes): both headers must be valid.
/// The one reader of partition tables: images (`read_gpt`) and `kiln verify`'s head and tail.
pub(crate) fn layout_of<D: gpt::DiskDevice>(mut dev: D, disk_size: u64) -> Result<Layout> {
    dev.seek(SeekFrom::Start(0)).context("seeking")?;
    // The gpt crate asserts (panics) on unusual entry sizes: check first.
    let header = gpt::header::read_header_from_arbitrary_device(&mut dev, LogicalBlockSize::Lb512)
        .context("reading the primary GPT header")?;
    ensure!(header.part_size == 128, "unsupported GPT entry size {}", header.part_size);
    dev.seek(SeekFrom::Start(0)).context("seeking")?;
    let disk = gpt::GptConfig::new()
        .writable(false)
        .only_valid_headers(true)
        .logical_block_size(LogicalBlockSize::Lb512)
        .open_from_device(dev)
        .context("reading the GPT")?;
    let mut partitions = Vec::new();
    for (&number, p) in disk.partitions().iter().filter(|(_, p)| p.is_used()) {
        ensure!(p.last_lba >= p.first_lba, "partition {number} ends before it starts");
        let offset = p.first_lba.checked_mul(SECTOR).context("partition offset overflows")?;
        let size = (p.last_lba - p.first_lba + 1).checked_mul(SECTOR).context("partition size overflows")?;
        partitions.push(PlacedPartition {
            number,
            label: p.name.clone(),
            type_guid: p.part_type_guid.guid,
            part_guid: p.part_guid,
            offset,
            size,
            flags: p.flags,
        });
    }
    Ok(Layout { disk_size, disk_guid: *disk.guid(), partitions })
}

/// An in-memory disk of `len` bytes that only stores the GPT regions: the head
/// (`HEAD_LEN` bytes at 0) and the tail (`TAIL_LEN` bytes at the end). Everything
/// in between reads as zeros and refuses writes.
pub(crate) struct GptDevice {
    len: u64,
    pos: u64,
    head: Vec<u8>,
    tail: Vec<u8>,
}

impl std::fmt::Debug for GptDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "GptDevice({} bytes)", self.len)
    }
}

impl GptDevice {
    /// A disk of `len` bytes whose first and last bytes are `head` and `tail` (as read from an
    /// image, to parse its GPT without reading the whole image); zeros between.
    pub(crate) fn from_ends(len: u64, head: Vec<u8>, tail: Vec<u8>) -> io::Result<Self> {
        if head.len() as u64 != HEAD_LEN || tail.len() as u64 != TAIL_LEN || len < HEAD_LEN + TAIL_LEN {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "head, tail and disk size do not fit a GPT disk"));
        }
        Ok(GptDevice { len, pos: 0, head, tail })
    }

    fn new(len: u64) -> Self {
        let (head, tail) = (vec![0; HEAD_LEN as usize], vec![0; TAIL_LEN as usize]);
        GptDevice { len, pos: 0, head, tail }
    }

    /// The stored bytes from the current position on (None in the gap), and how
    /// many bytes from here on are contiguous in that state.
    fn at(&mut self) -> (Option<&mut [u8]>, usize) {
        let tail_start = self.len - TAIL_LEN;
        if self.pos < HEAD_LEN {
            let rest = &mut self.head[self.pos as usize..];
            let n = rest.len();
            (Some(rest), n)
        } else if self.pos >= tail_start {
            let rest = &mut self.tail[(self.pos - tail_start) as usize..];
            let n = rest.len();
            (Some(rest), n)
        } else {
            (None, usize::try_from(tail_start - self.pos).unwrap_or(usize::MAX))
        }
    }
}

impl Read for GptDevice {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pos >= self.len {
            return Ok(0);
        }
        let (data, avail) = self.at();
        let n = avail.min(buf.len());
        match data {
            Some(d) => buf[..n].copy_from_slice(&d[..n]),
            None => buf[..n].fill(0),
        }
        self.pos += n as u64;
        Ok(n)
    }
}

impl Write for GptDevice {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let pos = self.pos;
        if pos >= self.len {
            return Err(io::Error::new(io::ErrorKind::WriteZero, "write past end of disk"));
        }
        let (Some(data), avail) = self.at() else {
            let msg = format!("gpt write at {pos} outside the gpt regions");
            return Err(io::Error::new(io::ErrorKind::InvalidInput, msg));
        };
        let n = avail.min(buf.len());
        data[..n].copy_from_slice(&buf[..n]);
        self.pos += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Seek for GptDevice {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        let new = match pos {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => self.len.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        self.pos = new.ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "bad seek"))?;
        Ok(self.pos)
    }
}
