//! A bounded reader of a zip archive's central directory and local headers, over the bytes
//! of the mapped file.
//!
//! It reads what an `.npz` needs (member names, compression, sizes, CRC-32, where the data
//! starts), zip64 included, and checks every offset and size against the file's real length
//! before using it: it allocates at most a small multiple of the central directory's size,
//! and its time is linear in the file's size (one end record is looked for, in the last
//! 64 KiB + 22 bytes as Python's `zipfile` does, and the central directory is read once).
//!
//! Why not the `zip` crate's reader (7.3, which the crate uses to write): measured on this
//! module's hostile tests (`tests/npz.rs`), it is not bounded on hostile archives.
//! - Time quadratic in the file's size: it looks for end records anywhere in the file, from the
//!   end, and before each one that fails it searches forward for a central directory header:
//!   the 4.4 MB file of end records of `many_end_records_are_not_each_searched_from` was not
//!   read in 5 s (this reader refuses it in about 50 µs).
//! - Memory unbounded by the file: it reserves room for the declared number of entries (up to
//!   the central directory's offset) before reading one, about 216 bytes each: a peak of 14 MB
//!   for the 640 KB file of `declared_member_count_reserves_nothing_before_the_entries_are_read`
//!   (this reader: 210 bytes), and 139 times the file's size for one flipped bit of a fixture's
//!   end record (`float64_c_stored.npz`, 886 KB for 6.4 KB; the mutation test's bound is 4
//!   times plus 192 KiB).
//! - It keeps the last of two members of one name without a word (a reader taking the first
//!   loads other data; `duplicate_member_names_are_refused`), and it "repairs" an archive whose
//!   offsets are shifted by reading the central directory where it finds one rather than where
//!   the end record says.
//!
//! The data itself is not read here: stored members through the map, deflated ones through
//! [`Inflate`](super::read::Inflate) (flate2, bounded by the declared size, with the CRC-32).

use super::NpzErrorKind;

/// One member of the archive, as its central directory entry describes it.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub name: String,
    /// General purpose flags (bit 0: encrypted).
    pub flags: u16,
    /// Compression method (0: stored, 8: deflated).
    pub method: u16,
    pub crc: u32,
    pub compressed_size: u64,
    pub size: u64,
    /// Offset of the local header in the file.
    pub local_offset: u64,
}

const EOCD: &[u8] = b"PK\x05\x06";
const EOCD_LEN: usize = 22;
const ZIP64_LOCATOR: &[u8] = b"PK\x06\x07";
const ZIP64_EOCD: &[u8] = b"PK\x06\x06";
const CENTRAL: &[u8] = b"PK\x01\x02";
const CENTRAL_LEN: usize = 46;
const LOCAL: &[u8] = b"PK\x03\x04";
const LOCAL_LEN: usize = 30;

fn not_zip(why: impl Into<String>) -> NpzErrorKind {
    NpzErrorKind::NotZip(why.into())
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap_or_default())
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap_or_default())
}

/// `file[start..start + len]`, or `None` if it is not within the file.
fn slice(file: &[u8], start: u64, len: u64) -> Option<&[u8]> {
    let end = start.checked_add(len)?;
    file.get(usize::try_from(start).ok()?..usize::try_from(end).ok()?)
}

/// The members of the zip archive `file`, in central directory order.
pub(crate) fn entries(file: &[u8]) -> Result<Vec<Entry>, NpzErrorKind> {
    if file.is_empty() {
        return Err(not_zip("the file is empty"));
    }
    // The end of central directory record: the last signature within the last 64 KiB + 22
    // bytes (its comment is at most 65535 bytes long).
    let tail = file.len().saturating_sub(EOCD_LEN + u16::MAX as usize);
    let found = file[tail..].windows(4).rposition(|w| w == EOCD).map(|p| tail + p);
    let Some(eocd) = found.filter(|&p| p + EOCD_LEN <= file.len()) else {
        // A local header at the start but no end record: an archive cut short.
        return Err(if file.starts_with(LOCAL) {
            NpzErrorKind::Truncated
        } else {
            not_zip("no end of central directory record")
        });
    };
    let rec = &file[eocd..eocd + EOCD_LEN];
    let (mut disk, mut cd_disk) = (u16_at(rec, 4) as u32, u16_at(rec, 6) as u32);
    let (mut count, mut cd_size, mut cd_offset) =
        (u16_at(rec, 10) as u64, u32_at(rec, 12) as u64, u32_at(rec, 16) as u64);
    // Where the central directory must end: at the zip64 end record if any, else here.
    let mut cd_limit = eocd as u64;
    if eocd >= 20 && &file[eocd - 20..eocd - 16] == ZIP64_LOCATOR {
        let locator = &file[eocd - 20..eocd];
        let at = u64_at(locator, 8);
        let rec = slice(file, at, 56)
            .filter(|r| r.starts_with(ZIP64_EOCD) && at + 56 <= eocd as u64 - 20)
            .ok_or_else(|| not_zip("the zip64 end record is missing or misplaced"))?;
        disk = u32_at(rec, 16);
        cd_disk = u32_at(rec, 20);
        count = u64_at(rec, 32);
        cd_size = u64_at(rec, 40);
        cd_offset = u64_at(rec, 48);
        cd_limit = at;
    }
    if disk != 0 || cd_disk != 0 {
        return Err(not_zip("archives spanning several disks are not supported"));
    }
    let Some(cd_end) = cd_offset.checked_add(cd_size).filter(|&end| end <= cd_limit) else {
        return Err(not_zip(format!(
            "the central directory ({cd_size} bytes at {cd_offset}) does not end before its end record (at {cd_limit})"
        )));
    };
    if count > cd_size / CENTRAL_LEN as u64 {
        return Err(not_zip(format!("{count} members declared in a central directory of {cd_size} bytes")));
    }
    let mut cd = &file[cd_offset as usize..cd_end as usize];
    let mut out = Vec::with_capacity(count as usize);
    for k in 0..count {
        let broken = || not_zip(format!("central directory entry {k} is malformed"));
        if cd.len() < CENTRAL_LEN || !cd.starts_with(CENTRAL) {
            return Err(broken());
        }
        let (name_len, extra_len, comment_len) =
            (u16_at(cd, 28) as usize, u16_at(cd, 30) as usize, u16_at(cd, 32) as usize);
        let total = CENTRAL_LEN + name_len + extra_len + comment_len;
        if cd.len() < total {
            return Err(broken());
        }
        let mut entry = Entry {
            name: String::from_utf8_lossy(&cd[CENTRAL_LEN..CENTRAL_LEN + name_len]).into_owned(),
            flags: u16_at(cd, 8),
            method: u16_at(cd, 10),
            crc: u32_at(cd, 16),
            compressed_size: u32_at(cd, 20) as u64,
            size: u32_at(cd, 24) as u64,
            local_offset: u32_at(cd, 42) as u64,
        };
        // The zip64 extra field holds, in this order, those of the sizes and offset whose
        // 32-bit fields are 0xFFFFFFFF.
        let mut extra = &cd[CENTRAL_LEN + name_len..CENTRAL_LEN + name_len + extra_len];
        while extra.len() >= 4 {
            let (id, len) = (u16_at(extra, 0), u16_at(extra, 2) as usize);
            let Some(data) = extra.get(4..4 + len) else { return Err(broken()) };
            if id == 1 {
                let mut data = data;
                for field in [&mut entry.size, &mut entry.compressed_size, &mut entry.local_offset] {
                    if *field == u32::MAX as u64 {
                        if data.len() < 8 {
                            return Err(broken());
                        }
                        *field = u64_at(data, 0);
                        data = &data[8..];
                    }
                }
            }
            extra = &extra[4 + len..];
        }
        out.push(entry);
        cd = &cd[total..];
    }
    Ok(out)
}

/// The offset in the file of `entry`'s data, after checking its local header (which must name
/// the same member) and that its compressed data lies within the file.
pub(crate) fn data_start(file: &[u8], entry: &Entry) -> Result<u64, NpzErrorKind> {
    let local = slice(file, entry.local_offset, LOCAL_LEN as u64).ok_or(NpzErrorKind::Truncated)?;
    if !local.starts_with(LOCAL) {
        return Err(not_zip("no local header where the central directory says"));
    }
    let (name_len, extra_len) = (u16_at(local, 26) as u64, u16_at(local, 28) as u64);
    let name_at = entry.local_offset + LOCAL_LEN as u64;
    let name = slice(file, name_at, name_len).ok_or(NpzErrorKind::Truncated)?;
    if name != entry.name.as_bytes() && String::from_utf8_lossy(name) != entry.name {
        return Err(not_zip("the local header names another member than the central directory"));
    }
    let start = name_at + name_len + extra_len;
    slice(file, start, entry.compressed_size).ok_or(NpzErrorKind::Truncated)?;
    Ok(start)
}
