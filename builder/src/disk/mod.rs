//! Disk image: GPT and ESP (owned by kiln, no external tools).
