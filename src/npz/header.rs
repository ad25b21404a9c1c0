//! The `.npy` header: its preamble (magic, version, length) and a strict parser of its dict.
//!
//! numpy reads the dict with `ast.literal_eval` and then requires exactly the keys `descr`,
//! `fortran_order` and `shape`, a boolean order and a tuple of integers for the shape. This
//! parser accepts the Python literals such a dict can hold (strings, integers, `True`, `False`,
//! `None`, tuples, lists, dicts) and nothing else, in one pass: its time is linear in the
//! header's length, which is bounded by [`MAX_HEADER_LEN`] before anything is parsed, and its
//! nesting by [`MAX_DEPTH`]. It is stricter than numpy in two places, where a file would read
//! differently in different tools: a key given twice and a dict nested deeper than
//! [`MAX_DEPTH`] are refused.

use std::fmt;

use super::IndexDtype;
use super::NpzErrorKind;
use crate::Dtype;

/// numpy's limit on the header's length for untrusted input (`np.load`'s `max_header_size`).
pub(crate) const MAX_HEADER_LEN: usize = 10_000;

/// The deepest nesting accepted: the dict, a structured dtype's list of fields, a field's
/// tuple, its sub-array shape, and some room for nested structured dtypes (refused later as
/// unsupported, but named in the error).
pub(crate) const MAX_DEPTH: usize = 16;

/// The length of the preamble (magic, version, header length), the header's declared length
/// and whether it is UTF-8 (format 3.0) rather than latin-1, from the first bytes of a member.
///
/// `prefix` may be shorter than the preamble: then `Ok(None)` means "read more" when `prefix`
/// is still a prefix of a valid preamble.
pub(crate) fn preamble(prefix: &[u8]) -> Result<Option<(usize, usize, bool)>, NpzErrorKind> {
    const MAGIC: &[u8] = b"\x93NUMPY";
    let n = prefix.len().min(MAGIC.len());
    if prefix[..n] != MAGIC[..n] {
        return Err(NpzErrorKind::BadHeader("not a .npy member: no \\x93NUMPY magic".into()));
    }
    if prefix.len() < 8 {
        return Ok(None);
    }
    let (len_bytes, utf8) = match (prefix[6], prefix[7]) {
        (1, 0) => (2, false),
        (2, 0) => (4, false),
        (3, 0) => (4, true),
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
    Ok(Some((8 + len_bytes, declared, utf8)))
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
#[derive(Debug)]
pub(crate) struct Header {
    /// The element type, `None` for another dtype (named by `descr`).
    pub elem: Option<Elem>,
    /// The `descr` value, as Python's `repr` writes it (e.g. `'<i8'`).
    pub descr: String,
    /// Whether the elements are big-endian.
    pub big_endian: bool,
    pub fortran_order: bool,
    pub shape: Vec<u64>,
}

/// A Python literal.
#[derive(Debug, PartialEq)]
enum Value {
    Str(String),
    Int(i128),
    Bool(bool),
    None,
    Tuple(Vec<Value>),
    List(Vec<Value>),
    Dict(Vec<(Value, Value)>),
}

/// Writes a value as Python's `repr` would.
impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let seq = |f: &mut fmt::Formatter<'_>, items: &[Value]| {
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    f.write_str(", ")?;
                }
                write!(f, "{v}")?;
            }
            Ok(())
        };
        match self {
            Value::Str(s) => write!(f, "'{}'", s.escape_default()),
            Value::Int(i) => write!(f, "{i}"),
            Value::Bool(b) => f.write_str(if *b { "True" } else { "False" }),
            Value::None => f.write_str("None"),
            Value::Tuple(items) => {
                f.write_str("(")?;
                seq(f, items)?;
                f.write_str(if items.len() == 1 { ",)" } else { ")" })
            }
            Value::List(items) => {
                f.write_str("[")?;
                seq(f, items)?;
                f.write_str("]")
            }
            Value::Dict(items) => {
                f.write_str("{")?;
                for (i, (k, v)) in items.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{k}: {v}")?;
                }
                f.write_str("}")
            }
        }
    }
}

/// A recursive-descent parser over the header's bytes.
struct Parser<'a> {
    bytes: &'a [u8],
    pos: usize,
    utf8: bool,
}

fn bad(why: impl Into<String>) -> NpzErrorKind {
    NpzErrorKind::BadHeader(why.into())
}

impl Parser<'_> {
    fn skip_space(&mut self) {
        while self.bytes.get(self.pos).is_some_and(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r' | b'\x0c')) {
            self.pos += 1;
        }
    }

    fn peek(&mut self) -> Option<u8> {
        self.skip_space();
        self.bytes.get(self.pos).copied()
    }

    fn unexpected(&self) -> NpzErrorKind {
        match self.bytes.get(self.pos) {
            Some(&b) => bad(format!("unexpected {:?} at byte {} of the header dict", b as char, self.pos)),
            None => bad("the header dict ends early"),
        }
    }

    fn value(&mut self, depth: usize) -> Result<Value, NpzErrorKind> {
        if depth > MAX_DEPTH {
            return Err(bad(format!("values nested more than {MAX_DEPTH} levels deep")));
        }
        match self.peek() {
            Some(b'{') => {
                self.pos += 1;
                let mut items = Vec::new();
                loop {
                    if self.peek() == Some(b'}') {
                        self.pos += 1;
                        return Ok(Value::Dict(items));
                    }
                    let key = match self.peek() {
                        Some(b'\'' | b'"' | b'u' | b'U') => self.value(depth + 1)?,
                        _ => return Err(bad(format!("a key that is not a string, at byte {}", self.pos))),
                    };
                    if self.peek() != Some(b':') {
                        return Err(self.unexpected());
                    }
                    self.pos += 1;
                    let value = self.value(depth + 1)?;
                    if items.iter().any(|(k, _)| *k == key) {
                        return Err(bad(format!("the key {key} is given twice")));
                    }
                    items.push((key, value));
                    match self.peek() {
                        Some(b',') => self.pos += 1,
                        Some(b'}') => {}
                        _ => return Err(self.unexpected()),
                    }
                }
            }
            Some(open @ (b'(' | b'[')) => {
                self.pos += 1;
                let close = if open == b'(' { b')' } else { b']' };
                let mut items = Vec::new();
                let mut comma = false;
                loop {
                    if self.peek() == Some(close) {
                        self.pos += 1;
                        break;
                    }
                    items.push(self.value(depth + 1)?);
                    match self.peek() {
                        Some(b',') => {
                            self.pos += 1;
                            comma = true;
                        }
                        Some(c) if c == close => {}
                        _ => return Err(self.unexpected()),
                    }
                }
                Ok(match (open, items.len(), comma) {
                    // `(x)` is `x` in Python, not a tuple.
                    (b'(', 1, false) => items.pop().unwrap_or(Value::None),
                    (b'(', ..) => Value::Tuple(items),
                    _ => Value::List(items),
                })
            }
            Some(b'u' | b'U') if matches!(self.bytes.get(self.pos + 1), Some(b'\'' | b'"')) => {
                self.pos += 1;
                self.string()
            }
            Some(b'\'' | b'"') => self.string(),
            Some(b'-' | b'+' | b'0'..=b'9') => self.int(),
            Some(b'A'..=b'Z' | b'a'..=b'z') => {
                let start = self.pos;
                while self.bytes.get(self.pos).is_some_and(u8::is_ascii_alphanumeric) {
                    self.pos += 1;
                }
                match &self.bytes[start..self.pos] {
                    b"True" => Ok(Value::Bool(true)),
                    b"False" => Ok(Value::Bool(false)),
                    b"None" => Ok(Value::None),
                    word => Err(bad(format!("unexpected name {:?} in the header dict", String::from_utf8_lossy(word)))),
                }
            }
            _ => Err(self.unexpected()),
        }
    }

    fn string(&mut self) -> Result<Value, NpzErrorKind> {
        let quote = self.bytes[self.pos];
        self.pos += 1;
        let mut raw = Vec::new();
        loop {
            match self.bytes.get(self.pos) {
                None | Some(b'\n') => return Err(bad("a string in the header dict is not closed")),
                Some(&b) if b == quote => break,
                Some(b'\\') => {
                    let escaped = match self.bytes.get(self.pos + 1) {
                        Some(&c @ (b'\\' | b'\'' | b'"')) => c,
                        _ => return Err(bad("an escape sequence in the header dict")),
                    };
                    raw.push(escaped);
                    self.pos += 2;
                }
                Some(&b) => {
                    raw.push(b);
                    self.pos += 1;
                }
            }
        }
        self.pos += 1;
        let s = if self.utf8 {
            String::from_utf8(raw).map_err(|_| bad("a string of the header dict is not UTF-8"))?
        } else {
            raw.iter().map(|&b| b as char).collect()
        };
        Ok(Value::Str(s))
    }

    fn int(&mut self) -> Result<Value, NpzErrorKind> {
        let start = self.pos;
        if matches!(self.bytes[self.pos], b'-' | b'+') {
            self.pos += 1;
        }
        let digits = self.pos;
        while self.bytes.get(self.pos).is_some_and(u8::is_ascii_digit) {
            self.pos += 1;
        }
        let text = std::str::from_utf8(&self.bytes[start..self.pos]).unwrap_or_default();
        let body = &self.bytes[digits..self.pos];
        if body.is_empty() || (body.len() > 1 && body[0] == b'0') {
            return Err(bad(format!("{text:?} is not an integer")));
        }
        // Python 2's long integers, as old numpy wrote shapes: `(3L, 4L)`.
        if matches!(self.bytes.get(self.pos), Some(b'L' | b'l')) {
            self.pos += 1;
        }
        if self.bytes.get(self.pos).is_some_and(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_')) {
            return Err(bad(format!("a number other than an integer at byte {start} of the header dict")));
        }
        text.parse::<i128>().map(Value::Int).map_err(|_| bad(format!("the integer {text} is too large")))
    }
}

/// The element type of a plain descr such as `'<f8'` this module reads, with whether it is
/// big-endian (`'|'`: no byte order, for one-byte elements).
fn elem_of(descr: &str) -> Option<(Elem, bool)> {
    let (big_endian, rest) = match descr.as_bytes().first()? {
        b'<' | b'|' => (false, &descr[1..]),
        b'>' => (true, &descr[1..]),
        b'=' => (cfg!(target_endian = "big"), &descr[1..]),
        _ => (cfg!(target_endian = "big"), descr),
    };
    let elem = match rest {
        "f4" => Elem::Scalar(Dtype::Float32),
        "f8" => Elem::Scalar(Dtype::Float64),
        "c8" => Elem::Scalar(Dtype::Complex64),
        "c16" => Elem::Scalar(Dtype::Complex128),
        "i4" => Elem::Int(IndexDtype::Int32),
        "i8" => Elem::Int(IndexDtype::Int64),
        _ => {
            // `S<n>`: n bytes (numpy writes `|S3`), at most a header's worth.
            let n = rest.strip_prefix('S')?;
            if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) || n.len() > 5 {
                return None;
            }
            Elem::Bytes(n.parse().ok()?)
        }
    };
    // `'|'` (no byte order) only for elements without one.
    if descr.starts_with('|') && matches!(elem, Elem::Scalar(_) | Elem::Int(_)) {
        return None;
    }
    Some((elem, big_endian))
}

/// Parses the header dict `text` (the bytes after the preamble), as numpy validates it.
pub(crate) fn parse(text: &[u8], utf8: bool) -> Result<Header, NpzErrorKind> {
    let mut p = Parser { bytes: text, pos: 0, utf8 };
    let value = p.value(0)?;
    if p.peek().is_some() {
        return Err(p.unexpected());
    }
    let Value::Dict(items) = value else {
        return Err(bad(format!("the header is {value}, not a dict")));
    };
    let (mut descr, mut fortran_order, mut shape) = (None, None, None);
    for (key, value) in items {
        let slot = match &key {
            Value::Str(k) if k == "descr" => &mut descr,
            Value::Str(k) if k == "fortran_order" => &mut fortran_order,
            Value::Str(k) if k == "shape" => &mut shape,
            _ => return Err(bad(format!("the header has an extra key {key} (numpy refuses it)"))),
        };
        *slot = Some(value);
    }
    let missing = |key: &str| bad(format!("the header has no key '{key}'"));
    let (descr, fortran_order, shape) = (
        descr.ok_or_else(|| missing("descr"))?,
        fortran_order.ok_or_else(|| missing("fortran_order"))?,
        shape.ok_or_else(|| missing("shape"))?,
    );
    let Value::Bool(fortran_order) = fortran_order else {
        return Err(bad(format!("'fortran_order' is {fortran_order}, not True or False")));
    };
    let shape_error =
        || bad(format!("'shape' is {shape}, not a tuple of non-negative integers (numpy refuses anything else)"));
    let Value::Tuple(dims) = &shape else { return Err(shape_error()) };
    let dims = dims
        .iter()
        .map(|d| match d {
            Value::Int(n) => u64::try_from(*n).map_err(|_| shape_error()),
            _ => Err(shape_error()),
        })
        .collect::<Result<Vec<u64>, _>>()?;
    let plain = match &descr {
        Value::Str(s) => elem_of(s),
        _ => None,
    };
    let (elem, big_endian) = match plain {
        Some((elem, big_endian)) => (Some(elem), big_endian),
        None => (None, false),
    };
    Ok(Header { elem, descr: descr.to_string(), big_endian, fortran_order, shape: dims })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_numpy_writes() {
        let h = parse(b"{'descr': '<f8', 'fortran_order': False, 'shape': (3, 4), }          \n", false).unwrap();
        let f8 = Some(Elem::Scalar(Dtype::Float64));
        assert_eq!((h.elem, h.big_endian, h.fortran_order, h.shape), (f8, false, false, vec![3, 4]));
        let h = parse(b"{'descr': '>c16', 'fortran_order': True, 'shape': (5,), }", false).unwrap();
        let c16 = Some(Elem::Scalar(Dtype::Complex128));
        assert_eq!((h.elem, h.big_endian, h.fortran_order, h.shape), (c16, true, true, vec![5]));
        let h = parse(b"{'descr': '|S3', 'fortran_order': False, 'shape': (), }", false).unwrap();
        assert_eq!((h.elem, h.shape.len()), (Some(Elem::Bytes(3)), 0));
        let h = parse(b"{'descr': '>i8', 'fortran_order': False, 'shape': (2,), }", false).unwrap();
        assert_eq!((h.elem, h.big_endian), (Some(Elem::Int(IndexDtype::Int64)), true));
        let h = parse(b"{'descr': '|i1', 'fortran_order': False, 'shape': (2,), }", false).unwrap();
        assert_eq!((h.elem, h.descr.as_str()), (None, "'|i1'"));
        let h = parse(b"{'descr': '<f4', 'fortran_order': False, 'shape': (3L, 4L)}", false).unwrap();
        assert_eq!(h.shape, [3, 4]);
        let h = parse(b"{'descr': '<f4', 'fortran_order': False, 'shape': ()}", false).unwrap();
        assert!(h.shape.is_empty());
    }

    #[test]
    fn names_unsupported_descrs_as_python_does() {
        let text = b"{'descr': [('x', '<f8'), ('y', '<f8', (2,))], 'fortran_order': False, 'shape': (2,)}";
        let h = parse(text, false).unwrap();
        assert_eq!((h.elem, h.descr.as_str()), (None, "[('x', '<f8'), ('y', '<f8', (2,))]"));
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
            b"{'descr': '<f8', 'fortran_order': False, 'shape': (3, 4)",
            b"{'descr': '<f8' 'fortran_order': False, 'shape': (3, 4)}",
            b"{'descr': '<f8', 'fortran_order': False, 'shape': (99999999999999999999999999999999999999999, 4)}",
            b"",
        ] {
            assert!(matches!(parse(text, false), Err(NpzErrorKind::BadHeader(_))), "{}", String::from_utf8_lossy(text));
        }
    }

    #[test]
    fn preamble_is_bounded() {
        assert!(matches!(preamble(b"\x93NUM"), Ok(None)));
        assert!(matches!(preamble(b"\x93NUMPY\x02\x00\x10\x27"), Ok(None)));
        assert_eq!(preamble(b"\x93NUMPY\x02\x00\x10\x27\x00\x00").unwrap(), Some((12, 10_000, false)));
        assert!(matches!(preamble(b"\x93NUMPY\x02\x00\x11\x27\x00\x00"), Err(NpzErrorKind::BadHeader(_))));
        assert!(matches!(preamble(b"\x93NUMPY\x04\x00"), Err(NpzErrorKind::BadHeader(_))));
        assert!(matches!(preamble(b"PK"), Err(NpzErrorKind::BadHeader(_))));
        assert_eq!(preamble(b"\x93NUMPY\x03\x00\x40\x00\x00\x00").unwrap(), Some((12, 64, true)));
    }
}
