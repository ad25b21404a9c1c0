//! The `.npy` header of a member: its preamble, a guard, then npyz's parse.
//!
//! npyz ([`npyz::NpyHeader`]) parses the header dict with py_literal, whose time grows
//! exponentially with the nesting depth of its input (a value nested 10 levels deep takes
//! seconds, 12 levels minutes), and allocates as many bytes as the preamble declares. So npyz
//! only sees text that passed this module's guard:
//! - [`preamble`]: the magic, a known version, and a declared length within numpy's limit for
//!   untrusted input ([`MAX_HEADER_LEN`], `np.load`'s `max_header_size`) and within the member,
//!   checked before a byte of the dict is read;
//! - [`scan`], one linear pass over the dict refusing what no header of a dtype this crate
//!   reads holds: anything but a dict of the keys `descr`, `fortran_order` and `shape` (each at
//!   most once), a value nested deeper than a tuple in the dict, a shape of more than
//!   [`MAX_DIMS`] dimensions or of anything but decimal integers, a shape whose size overflows
//!   64 bits (npyz multiplies the dimensions unchecked), escape sequences. A structured dtype
//!   (`descr` a list of fields) is named in the error without being parsed.
//!
//! npyz then parses the dict, the dtype (a [`TypeStr`]: kind, size, byte order) and the order,
//! and [`parse`] keeps numpy's rule where npyz is laxer: the shape must be a tuple (numpy
//! refuses a list; npyz reads both). The last few parses are kept by their text ([`memo`]):
//! npyz's parse costs tens of microseconds a header, many times the scan.

use npyz::{DType, Endianness, NpyHeader, TypeChar, TypeStr};

use super::IndexDtype;
use super::NpzErrorKind;
use crate::Dtype;

/// numpy's limit on the header's length for untrusted input (`np.load`'s `max_header_size`).
pub(crate) const MAX_HEADER_LEN: usize = 10_000;

/// The most dimensions an array can have (numpy 2's `NPY_MAXDIMS`).
pub(crate) const MAX_DIMS: usize = 64;

/// The length of the preamble (magic, version, header length) and the header's declared
/// length, from the first bytes of a member.
///
/// `prefix` may be shorter than the preamble: then `Ok(None)` means "read more" when `prefix`
/// is still a prefix of a valid preamble.
pub(crate) fn preamble(prefix: &[u8]) -> Result<Option<(usize, usize)>, NpzErrorKind> {
    const MAGIC: &[u8] = b"\x93NUMPY";
    let n = prefix.len().min(MAGIC.len());
    if prefix[..n] != MAGIC[..n] {
        return Err(NpzErrorKind::BadHeader("not a .npy member: no \\x93NUMPY magic".into()));
    }
    if prefix.len() < 8 {
        return Ok(None);
    }
    let len_bytes = match (prefix[6], prefix[7]) {
        (1, 0) => 2,
        (2 | 3, 0) => 4,
        (major, minor) => {
            return Err(NpzErrorKind::BadHeader(format!("unknown .npy format version {major}.{minor}")));
        }
    };
    let Some(len) = prefix.get(8..8 + len_bytes) else { return Ok(None) };
    let declared = len.iter().rev().fold(0usize, |acc, &b| acc << 8 | b as usize);
    if declared > MAX_HEADER_LEN {
        return Err(NpzErrorKind::BadHeader(format!(
            "the header declares {declared} bytes, more than numpy's limit of {MAX_HEADER_LEN} for untrusted \
             input (max_header_size)"
        )));
    }
    Ok(Some((8 + len_bytes, declared)))
}

/// The element types this module recognizes in a header's `descr`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Elem {
    /// float32, float64, complex64, complex128.
    Scalar(Dtype),
    /// int32 or int64 (a sparse file's `indices` and `indptr`, its `shape`).
    Int(IndexDtype),
    /// Bytes of this length (`'|S3'`: a sparse file's `format`).
    Bytes(usize),
}

impl Elem {
    /// The size of one element in bytes.
    pub(crate) fn size(self) -> usize {
        match self {
            Elem::Scalar(d) => d.size(),
            Elem::Int(i) => i.size(),
            Elem::Bytes(n) => n,
        }
    }

    /// The size of the parts whose bytes a big-endian member swaps.
    pub(crate) fn component_size(self) -> usize {
        match self {
            Elem::Scalar(d) => d.component_size(),
            Elem::Int(i) => i.size(),
            Elem::Bytes(_) => 1,
        }
    }
}

/// What a valid header says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Header {
    /// The element type, `None` for another dtype (named by `descr`).
    pub elem: Option<Elem>,
    /// The dtype as numpy writes it (e.g. `'<i8'`).
    pub descr: String,
    /// Whether the elements are big-endian.
    pub big_endian: bool,
    pub fortran_order: bool,
    pub shape: Vec<u64>,
}

fn bad(why: impl Into<String>) -> NpzErrorKind {
    NpzErrorKind::BadHeader(why.into())
}

/// The keys of a header dict, in the order [`scan`] numbers them.
const KEYS: [&str; 3] = ["descr", "fortran_order", "shape"];

/// What [`scan`] found: the text npyz is to parse and what npyz does not tell.
#[derive(Debug)]
struct Scanned {
    /// The dict, with the `L` suffixes of Python 2's long integers dropped (as numpy's own
    /// reader drops them for format 1.0 and 2.0 headers).
    text: Vec<u8>,
    /// Whether the shape is written as a list.
    list_shape: bool,
}

/// A token of the dict: a string (its contents), a word (a name or a number: letters,
/// digits, `_ . + -`), a punctuation byte, or the end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Token<'a> {
    Str(&'a [u8]),
    Word(&'a [u8]),
    Punct(u8),
    End,
}

/// A cursor over the dict's tokens.
struct Tokens<'a> {
    text: &'a [u8],
    pos: usize,
}

impl<'a> Tokens<'a> {
    /// The next token, and the position where it starts.
    fn next(&mut self) -> Result<(Token<'a>, usize), NpzErrorKind> {
        let text = self.text;
        while text.get(self.pos).is_some_and(|b| matches!(b, b' ' | b'\t' | b'\x0c' | b'\r' | b'\n')) {
            self.pos += 1;
        }
        let start = self.pos;
        let Some(&c) = text.get(start) else { return Ok((Token::End, start)) };
        let word = |b: &u8| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'+' | b'-');
        let token = match c {
            b'\'' | b'"' => {
                // One line, no escapes: numpy writes none in a header this crate reads, and a
                // reader that skipped them differently from py_literal could hide nesting.
                let len = text[start + 1..].iter().position(|&b| b == c || b == b'\\' || b == b'\n');
                match len.map(|n| (n, text[start + 1 + n])) {
                    Some((n, b)) if b == c => {
                        self.pos = start + n + 2;
                        Token::Str(&text[start + 1..start + 1 + n])
                    }
                    Some((_, b'\\')) => return Err(bad("an escape sequence in the header dict")),
                    _ => return Err(bad("a string in the header dict is not closed")),
                }
            }
            _ if word(&c) => {
                let n = text[start..].iter().position(|b| !word(b)).unwrap_or(text.len() - start);
                self.pos = start + n;
                Token::Word(&text[start..start + n])
            }
            _ => {
                self.pos = start + 1;
                Token::Punct(c)
            }
        };
        Ok((token, start))
    }
}

/// Why `token` at byte `at` is out of place.
fn unexpected(token: Token<'_>, at: usize) -> String {
    match token {
        Token::End => "the header dict ends early".into(),
        Token::Str(s) | Token::Word(s) => {
            format!("unexpected {:?} at byte {at} of the header dict", String::from_utf8_lossy(s))
        }
        Token::Punct(c) => format!("unexpected {:?} at byte {at} of the header dict", c as char),
    }
}

/// Checks, in one pass, that `text` (the bytes after the preamble) is a dict of numpy's keys
/// whose values are scalars or, for the shape, one flat tuple or list of decimal integers whose
/// product fits 64 bits (see the module's documentation).
///
/// # Errors
/// [`NpzErrorKind::BadHeader`] for what no such header holds, and
/// [`NpzErrorKind::UnsupportedDtype`] for a structured dtype.
fn scan(text: &[u8]) -> Result<Scanned, NpzErrorKind> {
    let mut tokens = Tokens { text, pos: 0 };
    let mut dropped = Vec::new();
    let mut seen = [false; 3];
    let (mut list_shape, mut structured) = (false, None);
    if tokens.next()?.0 != Token::Punct(b'{') {
        return Err(bad("the header is not a dict"));
    }
    loop {
        let key = match tokens.next()? {
            (Token::Punct(b'}'), _) => break,
            (Token::Str(s), _) => match KEYS.iter().position(|k| k.as_bytes() == s) {
                Some(k) if seen[k] => return Err(bad(format!("the key '{}' is given twice", KEYS[k]))),
                Some(k) => k,
                None => {
                    let key = String::from_utf8_lossy(s);
                    return Err(bad(format!("the header has an extra key '{key}' (numpy refuses it)")));
                }
            },
            (token, at) => return Err(bad(format!("a key that is not a string: {}", unexpected(token, at)))),
        };
        seen[key] = true;
        match tokens.next()? {
            (Token::Punct(b':'), _) => {}
            (token, at) => return Err(bad(unexpected(token, at))),
        }
        match tokens.next()? {
            (Token::Str(_) | Token::Word(_), _) => {}
            (Token::Punct(b'['), at) if KEYS[key] == "descr" => {
                // A structured dtype: skip its fields (counting brackets), to name it.
                let mut depth = 1;
                while depth > 0 {
                    match tokens.next()? {
                        (Token::Punct(b'[' | b'(' | b'{'), _) => depth += 1,
                        (Token::Punct(b']' | b')' | b'}'), _) => depth -= 1,
                        (Token::End, _) => return Err(bad("the header dict ends early")),
                        _ => {}
                    }
                }
                structured = Some(at..tokens.pos);
            }
            (Token::Punct(open @ (b'(' | b'[')), _) => {
                let close = if open == b'(' { b')' } else { b']' };
                let is_shape = KEYS[key] == "shape";
                list_shape |= is_shape && open == b'[';
                let (mut items, mut size) = (0, 1u64);
                loop {
                    let (item, at) = match tokens.next()? {
                        (Token::Punct(c), _) if c == close => break,
                        (Token::Str(s) | Token::Word(s), at) => (s, at),
                        (Token::Punct(b'(' | b'[' | b'{'), _) => {
                            return Err(bad(format!("'{}' holds values nested more than a tuple deep", KEYS[key])));
                        }
                        (token, at) => return Err(bad(unexpected(token, at))),
                    };
                    items += 1;
                    if items > MAX_DIMS {
                        return Err(bad(format!("'{}' holds more than {MAX_DIMS} values", KEYS[key])));
                    }
                    if is_shape {
                        // A decimal integer as Python 3 writes it, or Python 2's `3L`.
                        let digits = item.strip_suffix(b"L").or_else(|| item.strip_suffix(b"l")).unwrap_or(item);
                        if digits.len() < item.len() {
                            dropped.push(at + digits.len());
                        }
                        let decimal = !digits.is_empty()
                            && digits.iter().all(u8::is_ascii_digit)
                            && (digits.len() == 1 || digits[0] != b'0');
                        if !decimal {
                            return Err(bad(format!(
                                "'shape' holds {:?}: not a tuple of non-negative integers (numpy refuses anything else)",
                                String::from_utf8_lossy(item)
                            )));
                        }
                        // Dimensions of 0 are left out: npyz multiplies the others in any order.
                        let dim = std::str::from_utf8(digits).ok().and_then(|d| d.parse::<u64>().ok());
                        size = match dim {
                            Some(0) => size,
                            Some(d) => size.checked_mul(d).ok_or_else(|| bad("the shape's size overflows 64 bits"))?,
                            None => {
                                return Err(bad(format!(
                                    "the integer {} is too large",
                                    String::from_utf8_lossy(digits)
                                )));
                            }
                        };
                    }
                    match tokens.next()? {
                        (Token::Punct(b','), _) => {}
                        (Token::Punct(c), _) if c == close => break,
                        (token, at) => return Err(bad(unexpected(token, at))),
                    }
                }
            }
            (token @ Token::Punct(b'{'), at) => {
                return Err(bad(format!("'{}' holds a dict or set ({})", KEYS[key], unexpected(token, at))));
            }
            (token, at) => return Err(bad(unexpected(token, at))),
        }
        match tokens.next()? {
            (Token::Punct(b','), _) => {}
            (Token::Punct(b'}'), _) => break,
            (token, at) => return Err(bad(unexpected(token, at))),
        }
    }
    if let (token @ (Token::Str(_) | Token::Word(_) | Token::Punct(_)), at) = tokens.next()? {
        return Err(bad(format!("text after the header dict: {}", unexpected(token, at))));
    }
    if let Some(span) = structured {
        // No structured dtype is read: name it (numpy writes it as a list of fields).
        let descr = String::from_utf8_lossy(&text[span]);
        let descr: String = if descr.chars().count() > 200 {
            descr.chars().take(200).chain("…".chars()).collect()
        } else {
            descr.into_owned()
        };
        return Err(NpzErrorKind::UnsupportedDtype(format!("{descr} (a structured dtype)")));
    }
    let mut out = text.to_vec();
    for at in dropped.into_iter().rev() {
        out.remove(at);
    }
    Ok(Scanned { text: out, list_shape })
}

/// The element type of a dtype this module reads, with whether it is big-endian.
fn elem_of(t: &TypeStr) -> Option<(Elem, bool)> {
    let elem = match (t.type_char(), t.size_field()) {
        (TypeChar::Float, 4) => Elem::Scalar(Dtype::Float32),
        (TypeChar::Float, 8) => Elem::Scalar(Dtype::Float64),
        (TypeChar::Complex, 8) => Elem::Scalar(Dtype::Complex64),
        (TypeChar::Complex, 16) => Elem::Scalar(Dtype::Complex128),
        (TypeChar::Int, 4) => Elem::Int(IndexDtype::Int32),
        (TypeChar::Int, 8) => Elem::Int(IndexDtype::Int64),
        // `S<n>`: n bytes (numpy writes `|S3`), at most five digits' worth: a small member
        // such as `format` is read whole.
        (TypeChar::ByteStr, n) if n < 100_000 => Elem::Bytes(n as usize),
        _ => return None,
    };
    Some((elem, t.endianness() == Endianness::Big))
}

/// Parses the header dict `text` (the bytes after the preamble, at most [`MAX_HEADER_LEN`]):
/// [`scan`], then npyz, then numpy's rule on the shape.
pub(crate) fn parse(text: &[u8]) -> Result<Header, NpzErrorKind> {
    debug_assert!(text.len() <= MAX_HEADER_LEN);
    let scanned = scan(text)?;
    if let Some(header) = memo().iter().find(|(t, _)| *t == scanned.text).map(|(_, h)| h.clone()) {
        return Ok(header);
    }
    // npyz reads a whole `.npy` preamble and header: format 2.0 holds any length.
    let mut npy = b"\x93NUMPY\x02\x00".to_vec();
    npy.extend_from_slice(&(scanned.text.len() as u32).to_le_bytes());
    npy.extend_from_slice(&scanned.text);
    let header = NpyHeader::from_reader(npy.as_slice()).map_err(|e| bad(e.to_string()))?;
    if scanned.list_shape {
        return Err(bad(format!(
            "'shape' is the list {:?}, not a tuple of non-negative integers (numpy refuses anything else)",
            header.shape()
        )));
    }
    let dtype = header.dtype();
    let (elem, big_endian) = match &dtype {
        DType::Plain(t) => elem_of(t).map_or((None, false), |(e, big)| (Some(e), big)),
        _ => (None, false),
    };
    let fortran_order = header.order() == npyz::Order::Fortran;
    let header = Header { elem, descr: dtype.descr(), big_endian, fortran_order, shape: header.shape().to_vec() };
    let mut memo = memo();
    if memo.len() == MEMO_LEN {
        memo.pop_front();
    }
    memo.push_back((scanned.text, header.clone()));
    Ok(header)
}

/// How many parsed headers [`memo`] keeps.
const MEMO_LEN: usize = 8;

/// The last headers npyz parsed, by their text after [`scan`] (at most [`MEMO_LEN`], each at
/// most [`MAX_HEADER_LEN`] bytes). npyz's parse, through py_literal's grammar, costs about
/// 18 µs for the header numpy writes for a 2-D array (4.5 µs for an empty dict, 3 to 6 µs for
/// each integer); the scan is one pass over the bytes. A file opened again, or many files
/// of one dtype and shape (a simulation's snapshots), pay only the scan. Only successful
/// parses are kept, and the same text always parses to the same header.
fn memo() -> std::sync::MutexGuard<'static, std::collections::VecDeque<(Vec<u8>, Header)>> {
    static PARSED: std::sync::Mutex<std::collections::VecDeque<(Vec<u8>, Header)>> =
        std::sync::Mutex::new(std::collections::VecDeque::new());
    // A panic cannot leave the deque half-changed: its contents stay valid.
    PARSED.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;

    #[test]
    fn memo_gives_what_npyz_gives_and_stays_bounded() {
        let texts: Vec<String> = (0..3 * MEMO_LEN)
            .map(|i| format!("{{'descr': '<f8', 'fortran_order': False, 'shape': ({i}, 4), }}"))
            .collect();
        for round in 0..2 {
            for (i, t) in texts.iter().enumerate() {
                let h = parse(t.as_bytes()).unwrap();
                assert_eq!(h.shape, [i as u64, 4], "round {round}");
                assert!(memo().len() <= MEMO_LEN);
            }
        }
        // A text in the memo parses as it did: the same header, and again after eviction.
        let t = texts[0].as_bytes();
        let first = parse(t).unwrap();
        assert_eq!(parse(t).unwrap(), first);
        // A refused text is refused every time (never kept).
        let bad = b"{'descr': '<f8', 'fortran_order': False, 'shape': [3, 4]}";
        assert!(parse(bad).is_err() && parse(bad).is_err());
    }

    #[test]
    fn parses_what_numpy_writes() {
        let h = parse(b"{'descr': '<f8', 'fortran_order': False, 'shape': (3, 4), }          \n").unwrap();
        let f8 = Some(Elem::Scalar(Dtype::Float64));
        assert_eq!((h.elem, h.big_endian, h.fortran_order, h.shape), (f8, false, false, vec![3, 4]));
        let h = parse(b"{'descr': '>c16', 'fortran_order': True, 'shape': (5,), }").unwrap();
        let c16 = Some(Elem::Scalar(Dtype::Complex128));
        assert_eq!((h.elem, h.big_endian, h.fortran_order, h.shape), (c16, true, true, vec![5]));
        let h = parse(b"{'descr': '|S3', 'fortran_order': False, 'shape': (), }").unwrap();
        assert_eq!((h.elem, h.shape.len()), (Some(Elem::Bytes(3)), 0));
        let h = parse(b"{'descr': '>i8', 'fortran_order': False, 'shape': (2,), }").unwrap();
        assert_eq!((h.elem, h.big_endian), (Some(Elem::Int(IndexDtype::Int64)), true));
        let h = parse(b"{'descr': '|i1', 'fortran_order': False, 'shape': (2,), }").unwrap();
        assert_eq!((h.elem, h.descr.as_str()), (None, "'|i1'"));
        // Python 2's long integers, as numpy on Python 2 wrote them.
        let h = parse(b"{'descr': '<f4', 'fortran_order': False, 'shape': (3L, 4L)}").unwrap();
        assert_eq!(h.shape, [3, 4]);
        let h = parse(b"{'descr': '<f4', 'fortran_order': False, 'shape': ()}").unwrap();
        assert!(h.shape.is_empty());
        // npyz's writer: a space before the tuple's closing parenthesis.
        let h = parse(b"{'descr': '<f8', 'fortran_order': True, 'shape': (3, 4, ), }").unwrap();
        assert_eq!((h.fortran_order, h.shape), (true, vec![3, 4]));
        let h = parse(b"{'descr': '<f8', 'fortran_order': False, 'shape': (0, 4611686018427387904, 3)}").unwrap();
        assert_eq!(h.shape, [0, 1 << 62, 3]);
    }

    #[test]
    fn names_structured_dtypes_without_parsing_them() {
        let text = b"{'descr': [('x', '<f8'), ('y', '<f8', (2,))], 'fortran_order': False, 'shape': (2,)}";
        let err = parse(text).unwrap_err();
        assert!(
            matches!(&err, NpzErrorKind::UnsupportedDtype(d) if d.starts_with("[('x', '<f8'), ('y', '<f8', (2,))]")),
            "{err:?}"
        );
    }

    #[test]
    fn refuses_what_numpy_refuses() {
        for text in [
            &b"{'descr': '<f8', 'fortran_order': False, 'shape': (3)}"[..],
            b"{'descr': '<f8', 'fortran_order': False, 'shape': (True, 3)}",
            b"{'descr': '<f8', 'fortran_order': False, 'shape': (3, 4), 1: 2}",
            b"{'descr': '<f8', 'fortran_order': None, 'shape': (3, 4)}",
            b"{'descr': '<f8', 'fortran_order': False, 'shape': (03, 4)}",
            b"{'descr': '<f8', 'fortran_order': False, 'shape': (3e2, 4)}",
            b"{'descr': '<f8', 'fortran_order': False, 'shape': (-3, 4)}",
            b"{'descr': '<f8', 'fortran_order': False, 'shape': (0x10, 4)}",
            b"{'descr': '<f8', 'fortran_order': False, 'shape': (3, 4)",
            b"{'descr': '<f8' 'fortran_order': False, 'shape': (3, 4)}",
            b"{'descr': '<f8', 'fortran_order': False, 'shape': (99999999999999999999999999999999999999999, 4)}",
            b"{'descr': '<f8', 'fortran_order': False, 'shape': [3, 4]}",
            b"{'descr': '<f8', 'fortran_order': False}",
            b"{'descr': '<f8', 'fortran_order': False, 'shape': (3, 4), 'shape': (3, 4)}",
            b"{'descr': '<f8', 'fortran_order': False, 'shape': (3, 4)} x",
            b"{'descr': '<\\x66\\x38', 'fortran_order': False, 'shape': (3, 4)}",
            b"{'descr': '<f8', 'fortran_order': (False,), 'shape': (3, 4)}",
            b"['descr', '<f8']",
            b"",
        ] {
            assert!(matches!(parse(text), Err(NpzErrorKind::BadHeader(_))), "{}", String::from_utf8_lossy(text));
        }
    }

    #[test]
    fn refuses_shapes_whose_size_overflows_before_npyz_multiplies_them() {
        // npyz computes the size and strides with unchecked multiplications (a panic in a
        // debug build): the scan refuses first, whatever the order of the dimensions.
        for shape in ["(4294967296, 4294967296)", "(0, 4294967296, 4294967296)", "(4294967296, 4294967296, 0)"] {
            let text = format!("{{'descr': '<f8', 'fortran_order': False, 'shape': {shape}}}");
            let err = parse(text.as_bytes()).unwrap_err();
            assert!(matches!(&err, NpzErrorKind::BadHeader(w) if w.contains("overflows")), "{shape}: {err:?}");
        }
    }

    #[test]
    fn npyz_only_parses_shallow_bounded_text() {
        // What would take py_literal exponential time is refused by the scan in linear time;
        // what passes is bounded (at most 64 values in one tuple, no nesting below it).
        let nested = |open: &str, close: &str, depth: usize| {
            format!(
                "{{'descr': '<f8', 'fortran_order': False, 'shape': {}1{}}}",
                open.repeat(depth),
                close.repeat(depth)
            )
        };
        let mut worst = Duration::ZERO;
        for text in [
            nested("{", "}", 40),
            nested("[", "]", 40),
            nested("(", ",)", 40),
            format!(
                "{{'descr': {}'<f8'{}, 'fortran_order': False, 'shape': (2,)}}",
                "[".repeat(4000),
                "]".repeat(4000)
            ),
            format!("{{'descr': '<f8', 'fortran_order': False, 'shape': ({})}}", "1, ".repeat(3000)),
            format!("{{'descr': '<f8', 'fortran_order': ({}), 'shape': (2,)}}", "1, ".repeat(64)),
            format!("{{'descr': '<f8', 'fortran_order': False, 'shape': ({})}}", "1, ".repeat(64)),
            format!("{{'descr': '{}', 'fortran_order': False, 'shape': (2,)}}", "f".repeat(9900)),
        ] {
            let start = Instant::now();
            let _ = parse(text.as_bytes());
            worst = worst.max(start.elapsed());
        }
        assert!(worst < Duration::from_millis(500), "{worst:?}");
    }

    #[test]
    fn preamble_is_bounded() {
        assert!(matches!(preamble(b"\x93NUM"), Ok(None)));
        assert!(matches!(preamble(b"\x93NUMPY\x02\x00\x10\x27"), Ok(None)));
        assert_eq!(preamble(b"\x93NUMPY\x02\x00\x10\x27\x00\x00").unwrap(), Some((12, 10_000)));
        assert!(matches!(preamble(b"\x93NUMPY\x02\x00\x11\x27\x00\x00"), Err(NpzErrorKind::BadHeader(_))));
        assert!(matches!(preamble(b"\x93NUMPY\x04\x00"), Err(NpzErrorKind::BadHeader(_))));
        assert!(matches!(preamble(b"PK"), Err(NpzErrorKind::BadHeader(_))));
        assert_eq!(preamble(b"\x93NUMPY\x03\x00\x40\x00\x00\x00").unwrap(), Some((12, 64)));
    }
}
