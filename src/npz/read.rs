//! Reading a member's array data: from the map (stored) or through a bounded inflater
//! (deflated), in chunks of a fixed size, whatever the declared shape.

use std::io::{self, Read};

use crc32fast::Hasher;

use super::NpzErrorKind;

/// Where the array data comes from: a slice of the map or a decompressing stream.
pub(crate) trait Source {
    /// Skips `n` bytes.
    fn skip(&mut self, n: usize) -> io::Result<()>;
    /// Fills `buf`.
    fn fill(&mut self, buf: &mut [u8]) -> io::Result<()>;
}

impl Source for &[u8] {
    fn skip(&mut self, n: usize) -> io::Result<()> {
        *self = self.get(n..).ok_or(io::ErrorKind::UnexpectedEof)?;
        Ok(())
    }

    fn fill(&mut self, buf: &mut [u8]) -> io::Result<()> {
        self.read_exact(buf)
    }
}

/// A deflated member's bytes, inflated as they are read, never beyond the size its zip entry
/// declares, with the CRC-32 of everything read so far.
pub(crate) struct Inflate<'a> {
    inner: io::Take<flate2::bufread::DeflateDecoder<&'a [u8]>>,
    hasher: Hasher,
}

impl<'a> Inflate<'a> {
    /// Inflates `compressed`, stopping after `size` bytes.
    pub(crate) fn new(compressed: &'a [u8], size: u64) -> Self {
        Inflate { inner: flate2::bufread::DeflateDecoder::new(compressed).take(size), hasher: Hasher::new() }
    }

    /// The CRC-32 of the bytes read, if they are all the declared bytes.
    pub(crate) fn crc_of_all(&self) -> Option<u32> {
        (self.inner.limit() == 0).then(|| self.hasher.clone().finalize())
    }
}

impl Read for Inflate<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

impl Source for Inflate<'_> {
    fn skip(&mut self, n: usize) -> io::Result<()> {
        let skipped = io::copy(&mut self.by_ref().take(n as u64), &mut io::sink())?;
        if skipped < n as u64 { Err(io::ErrorKind::UnexpectedEof.into()) } else { Ok(()) }
    }

    fn fill(&mut self, buf: &mut [u8]) -> io::Result<()> {
        self.read_exact(buf)
    }
}

/// Maps an error met while reading a member.
pub(crate) fn data_error(e: io::Error) -> NpzErrorKind {
    match e.kind() {
        io::ErrorKind::UnexpectedEof => NpzErrorKind::Truncated,
        io::ErrorKind::InvalidInput | io::ErrorKind::InvalidData => NpzErrorKind::Corrupt(e.to_string()),
        _ => NpzErrorKind::Io(e),
    }
}

/// Reverses the bytes of each `component`-byte scalar of `bytes` (big-endian to native).
pub(crate) fn swap_bytes(bytes: &mut [u8], component: usize) {
    for c in bytes.chunks_exact_mut(component) {
        c.reverse();
    }
}
