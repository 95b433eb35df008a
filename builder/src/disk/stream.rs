//! Whole images are read in fixed chunks: the one chunk size and the one read that fills a buffer
//! (used by image assembly, `kiln verify` and the image formats).
use std::io::{ErrorKind, Read};

/// Copy and hashing granularity of whole-image passes.
pub const CHUNK: usize = 4 << 20;

/// Fill `buf` from `src` as far as possible; returns the bytes read (short only at the end).
pub fn read_full(src: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match src.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

#[cfg(test)]
mod tests {
    /// A reader that hands out at most 3 bytes per call.
    struct Trickle<'a>(&'a [u8]);

    impl std::io::Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = buf.len().min(3).min(self.0.len());
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    #[test]
    fn fills_the_buffer_across_short_reads() {
        let mut src = Trickle(b"0123456789");
        let mut buf = [0u8; 8];
        assert_eq!(super::read_full(&mut src, &mut buf).unwrap(), 8);
        assert_eq!(&buf, b"01234567");
        assert_eq!(super::read_full(&mut src, &mut buf).unwrap(), 2);
        assert_eq!(super::read_full(&mut src, &mut buf).unwrap(), 0);
    }
}
