//! FastCGI name-value pairs (PARAMS, GET_VALUES, GET_VALUES_RESULT bodies).
//!
//! Each length is one byte when below 128, otherwise four bytes with the top bit set.

use super::record::ProtocolError;
use std::ops::Range;

/// Limits on what a peer may make us hold in memory for one request's params.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_params: usize,
    pub max_params_bytes: usize,
}

impl Default for Limits {
    /// nginx's default header buffers cap a request's headers near 32 KiB; these leave ample
    /// room for long cookies and many headers while keeping a hostile peer's cost bounded.
    fn default() -> Self {
        Limits {
            max_params: 4096,
            max_params_bytes: 1 << 20,
        }
    }
}

fn write_len(out: &mut Vec<u8>, len: usize) {
    if len < 128 {
        out.push(len as u8);
    } else {
        out.extend_from_slice(&((len as u32) | 0x8000_0000).to_be_bytes());
    }
}

/// Append one name-value pair.
pub fn write_pair(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    write_len(out, name.len());
    write_len(out, value.len());
    out.extend_from_slice(name);
    out.extend_from_slice(value);
}

/// Read one length at `*pos`, advancing it; `None` when the data ends first.
fn read_len(data: &[u8], pos: &mut usize) -> Option<usize> {
    let first = *data.get(*pos)?;
    if first & 0x80 == 0 {
        *pos += 1;
        return Some(first as usize);
    }
    let bytes = data.get(*pos..*pos + 4)?;
    *pos += 4;
    Some((u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) & 0x7fff_ffff) as usize)
}

/// Where one pair's name and value lie in the encoded data.
pub type PairRanges = (Range<usize>, Range<usize>);

/// Decode the name and value ranges of every pair in `data`.
pub fn decode_pairs(data: &[u8], max_pairs: usize) -> Result<Vec<PairRanges>, ProtocolError> {
    // Room for pairs of 16 bytes on average (nginx's are about 22), so that a usual
    // request's pairs need one allocation, not one per doubling.
    let mut pairs = Vec::with_capacity((data.len() / 16 + 1).min(max_pairs));
    let mut pos = 0;
    while pos < data.len() {
        if pairs.len() == max_pairs {
            return Err(ProtocolError::TooManyParams { limit: max_pairs });
        }
        let name_len = read_len(data, &mut pos).ok_or(ProtocolError::TruncatedNameValue)?;
        let value_len = read_len(data, &mut pos).ok_or(ProtocolError::TruncatedNameValue)?;
        let name_end = pos
            .checked_add(name_len)
            .ok_or(ProtocolError::TruncatedNameValue)?;
        let value_end = name_end
            .checked_add(value_len)
            .ok_or(ProtocolError::TruncatedNameValue)?;
        if value_end > data.len() {
            return Err(ProtocolError::TruncatedNameValue);
        }
        pairs.push((pos..name_end, name_end..value_end));
        pos = value_end;
    }
    Ok(pairs)
}

/// A request's params: the raw PARAMS stream plus the position of each pair in it, so
/// that decoding copies nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Params {
    data: Vec<u8>,
    pairs: Vec<PairRanges>,
}

impl Params {
    pub fn decode(data: Vec<u8>, limits: &Limits) -> Result<Params, ProtocolError> {
        let pairs = decode_pairs(&data, limits.max_params)?;
        Ok(Params { data, pairs })
    }

    /// Build params from pairs (tests, clients and internally generated requests).
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a [u8], &'a [u8])>) -> Params {
        let mut data = Vec::new();
        for (name, value) in pairs {
            write_pair(&mut data, name, value);
        }
        // Our own encoding always decodes.
        let pairs = decode_pairs(&data, usize::MAX).unwrap_or_default();
        Params { data, pairs }
    }

    pub fn len(&self) -> usize {
        self.pairs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }

    /// Pairs in the order the peer sent them (duplicates included).
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.pairs
            .iter()
            .map(|(n, v)| (&self.data[n.clone()], &self.data[v.clone()]))
    }

    /// The value of the last pair with this name: a later duplicate overrides, as it would
    /// in an environment built from the pairs in order.
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.pairs
            .iter()
            .rev()
            .find(|(n, _)| &self.data[n.clone()] == name.as_bytes())
            .map(|(_, v)| &self.data[v.clone()])
    }

    /// The value as UTF-8 text, if present and valid.
    pub fn get_str(&self, name: &str) -> Option<&str> {
        self.get(name).and_then(|v| std::str::from_utf8(v).ok())
    }

    /// The encoded PARAMS stream.
    pub fn encoded(&self) -> &[u8] {
        &self.data
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_and_long_lengths() {
        let long_value = vec![b'x'; 300];
        let mut data = Vec::new();
        write_pair(&mut data, b"A", b"1");
        write_pair(&mut data, b"LONG", &long_value);
        // 1-byte lengths for the first pair, a 4-byte one for the 300-byte value.
        assert_eq!(&data[..4], &[1, 1, b'A', b'1']);
        assert_eq!(&data[4..9], &[4, 0x80, 0, 1, 44]);
        let p = Params::decode(data, &Limits::default()).unwrap();
        assert_eq!(p.len(), 2);
        assert_eq!(p.get("A"), Some(&b"1"[..]));
        assert_eq!(p.get("LONG"), Some(&long_value[..]));
        assert_eq!(p.get("MISSING"), None);
    }

    #[test]
    fn boundary_127_and_128() {
        for len in [127usize, 128] {
            let v = vec![b'v'; len];
            let p = Params::from_pairs([(&b"N"[..], &v[..])]);
            assert_eq!(p.get("N").map(<[u8]>::len), Some(len));
            let expected_header = if len < 128 { 2 } else { 5 };
            assert_eq!(p.encoded().len(), expected_header + 1 + len);
        }
    }

    #[test]
    fn last_duplicate_wins() {
        let p = Params::from_pairs([(&b"X"[..], &b"1"[..]), (b"X", b"2")]);
        assert_eq!(p.get_str("X"), Some("2"));
        assert_eq!(p.iter().count(), 2);
    }

    #[test]
    fn truncated_pairs_are_errors() {
        let mut data = Vec::new();
        write_pair(&mut data, b"NAME", b"VALUE");
        for cut in 1..data.len() {
            assert_eq!(
                Params::decode(data[..cut].to_vec(), &Limits::default()),
                Err(ProtocolError::TruncatedNameValue),
                "cut at {cut}"
            );
        }
        // A 4-byte length claiming 2 GiB must not be trusted.
        let huge = [0xff, 0xff, 0xff, 0xff, 0, b'a'];
        assert_eq!(
            Params::decode(huge.to_vec(), &Limits::default()),
            Err(ProtocolError::TruncatedNameValue)
        );
    }

    #[test]
    fn count_limit() {
        let mut data = Vec::new();
        for _ in 0..5 {
            write_pair(&mut data, b"A", b"");
        }
        let limits = Limits {
            max_params: 4,
            max_params_bytes: 1 << 20,
        };
        assert_eq!(
            Params::decode(data, &limits),
            Err(ProtocolError::TooManyParams { limit: 4 })
        );
    }

    #[test]
    fn empty_names_and_values_are_allowed() {
        let p = Params::from_pairs([(&b""[..], &b""[..]), (b"E", b"")]);
        assert_eq!(p.len(), 2);
        assert_eq!(p.get("E"), Some(&b""[..]));
    }
}
