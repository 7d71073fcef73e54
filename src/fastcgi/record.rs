//! FastCGI 1.0 records: the 8-byte header, record types, and parsing one record out of a
//! byte buffer. No I/O: callers read bytes however they like and hand them over.

use std::fmt;

pub const VERSION_1: u8 = 1;
pub const HEADER_LEN: usize = 8;
/// The largest content a single record can carry.
pub const MAX_CONTENT_LEN: usize = 65535;
/// The management request id.
pub const NULL_REQUEST_ID: u16 = 0;

/// BEGIN_REQUEST flag: the application keeps the connection open after the response.
pub const FCGI_KEEP_CONN: u8 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordType {
    BeginRequest,
    AbortRequest,
    EndRequest,
    Params,
    Stdin,
    Stdout,
    Stderr,
    Data,
    GetValues,
    GetValuesResult,
    UnknownType,
    /// Any other type byte; management ones are answered with UNKNOWN_TYPE.
    Other(u8),
}

impl RecordType {
    pub fn from_u8(b: u8) -> RecordType {
        match b {
            1 => RecordType::BeginRequest,
            2 => RecordType::AbortRequest,
            3 => RecordType::EndRequest,
            4 => RecordType::Params,
            5 => RecordType::Stdin,
            6 => RecordType::Stdout,
            7 => RecordType::Stderr,
            8 => RecordType::Data,
            9 => RecordType::GetValues,
            10 => RecordType::GetValuesResult,
            11 => RecordType::UnknownType,
            other => RecordType::Other(other),
        }
    }

    pub fn as_u8(self) -> u8 {
        match self {
            RecordType::BeginRequest => 1,
            RecordType::AbortRequest => 2,
            RecordType::EndRequest => 3,
            RecordType::Params => 4,
            RecordType::Stdin => 5,
            RecordType::Stdout => 6,
            RecordType::Stderr => 7,
            RecordType::Data => 8,
            RecordType::GetValues => 9,
            RecordType::GetValuesResult => 10,
            RecordType::UnknownType => 11,
            RecordType::Other(b) => b,
        }
    }
}

/// BEGIN_REQUEST roles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Responder,
    Authorizer,
    Filter,
    Other(u16),
}

impl Role {
    pub fn from_u16(v: u16) -> Role {
        match v {
            1 => Role::Responder,
            2 => Role::Authorizer,
            3 => Role::Filter,
            other => Role::Other(other),
        }
    }

    pub fn as_u16(self) -> u16 {
        match self {
            Role::Responder => 1,
            Role::Authorizer => 2,
            Role::Filter => 3,
            Role::Other(v) => v,
        }
    }
}

/// END_REQUEST protocol status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProtocolStatus {
    RequestComplete,
    CantMpxConn,
    Overloaded,
    UnknownRole,
    Other(u8),
}

impl ProtocolStatus {
    pub fn from_u8(b: u8) -> ProtocolStatus {
        match b {
            0 => ProtocolStatus::RequestComplete,
            1 => ProtocolStatus::CantMpxConn,
            2 => ProtocolStatus::Overloaded,
            3 => ProtocolStatus::UnknownRole,
            other => ProtocolStatus::Other(other),
        }
    }

    pub fn as_u8(self) -> u8 {
        match self {
            ProtocolStatus::RequestComplete => 0,
            ProtocolStatus::CantMpxConn => 1,
            ProtocolStatus::Overloaded => 2,
            ProtocolStatus::UnknownRole => 3,
            ProtocolStatus::Other(b) => b,
        }
    }
}

/// A record whose content borrows from the caller's buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record<'a> {
    pub record_type: RecordType,
    pub request_id: u16,
    pub content: &'a [u8],
}

/// The peer broke the protocol; the connection cannot be trusted any further.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProtocolError {
    UnsupportedVersion(u8),
    /// A record body is shorter than its type requires.
    ShortBody {
        record_type: RecordType,
        len: usize,
    },
    /// A name-value pair runs past the end of its data.
    TruncatedNameValue,
    TooManyParams {
        limit: usize,
    },
    ParamsTooLarge {
        limit: usize,
    },
    /// A stream or request record arrived where the protocol does not allow it.
    Unexpected {
        record_type: RecordType,
        request_id: u16,
    },
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProtocolError::UnsupportedVersion(v) => {
                write!(f, "unsupported FastCGI version {v} (only 1 exists)")
            }
            ProtocolError::ShortBody { record_type, len } => write!(
                f,
                "record type {} has a {len}-byte body, too short",
                record_type.as_u8()
            ),
            ProtocolError::TruncatedNameValue => {
                f.write_str("name-value pair runs past the end of its record stream")
            }
            ProtocolError::TooManyParams { limit } => {
                write!(f, "more than {limit} FastCGI params")
            }
            ProtocolError::ParamsTooLarge { limit } => {
                write!(f, "FastCGI params larger than {limit} bytes")
            }
            ProtocolError::Unexpected {
                record_type,
                request_id,
            } => write!(
                f,
                "unexpected record type {} for request id {request_id}",
                record_type.as_u8()
            ),
        }
    }
}

impl std::error::Error for ProtocolError {}

/// Parse one record from the front of `buf`.
///
/// Returns the record and how many bytes it used (header, content and padding), or `None`
/// when `buf` does not hold a whole record yet. Any split of a byte stream therefore decodes
/// the same as long as the caller keeps the unconsumed tail.
pub fn parse_record(buf: &[u8]) -> Result<Option<(Record<'_>, usize)>, ProtocolError> {
    if buf.len() < HEADER_LEN {
        // A bad version is reported as soon as its byte is in, not after a whole header.
        if let Some(&v) = buf.first()
            && v != VERSION_1
        {
            return Err(ProtocolError::UnsupportedVersion(v));
        }
        return Ok(None);
    }
    if buf[0] != VERSION_1 {
        return Err(ProtocolError::UnsupportedVersion(buf[0]));
    }
    let record_type = RecordType::from_u8(buf[1]);
    let request_id = u16::from_be_bytes([buf[2], buf[3]]);
    let content_len = u16::from_be_bytes([buf[4], buf[5]]) as usize;
    let padding_len = buf[6] as usize;
    let total = HEADER_LEN + content_len + padding_len;
    if buf.len() < total {
        return Ok(None);
    }
    let record = Record {
        record_type,
        request_id,
        content: &buf[HEADER_LEN..HEADER_LEN + content_len],
    };
    Ok(Some((record, total)))
}

/// The header for a record with `content_len` bytes of content, padded to a multiple of 8
/// as the specification recommends. Returns the header and the padding length.
pub fn header(record_type: RecordType, request_id: u16, content_len: usize) -> ([u8; 8], usize) {
    debug_assert!(content_len <= MAX_CONTENT_LEN);
    let padding = (8 - content_len % 8) % 8;
    let id = request_id.to_be_bytes();
    let len = (content_len as u16).to_be_bytes();
    (
        [
            VERSION_1,
            record_type.as_u8(),
            id[0],
            id[1],
            len[0],
            len[1],
            padding as u8,
            0,
        ],
        padding,
    )
}

const PADDING: [u8; 8] = [0; 8];

/// Append one record (at most [`MAX_CONTENT_LEN`] bytes of content) to `out`.
pub fn write_record(out: &mut Vec<u8>, record_type: RecordType, request_id: u16, content: &[u8]) {
    let (head, padding) = header(record_type, request_id, content.len());
    out.extend_from_slice(&head);
    out.extend_from_slice(content);
    out.extend_from_slice(&PADDING[..padding]);
}

/// Append `data` as one or more records of a stream type. Empty `data` appends nothing:
/// the empty record ends a stream, so write it with [`write_stream_end`] on purpose.
pub fn write_stream(out: &mut Vec<u8>, record_type: RecordType, request_id: u16, data: &[u8]) {
    for chunk in data.chunks(MAX_CONTENT_LEN) {
        write_record(out, record_type, request_id, chunk);
    }
}

/// Append the empty record that ends a stream.
pub fn write_stream_end(out: &mut Vec<u8>, record_type: RecordType, request_id: u16) {
    write_record(out, record_type, request_id, &[]);
}

pub fn write_begin_request(out: &mut Vec<u8>, request_id: u16, role: Role, flags: u8) {
    let r = role.as_u16().to_be_bytes();
    write_record(
        out,
        RecordType::BeginRequest,
        request_id,
        &[r[0], r[1], flags, 0, 0, 0, 0, 0],
    );
}

pub fn write_end_request(
    out: &mut Vec<u8>,
    request_id: u16,
    app_status: u32,
    protocol_status: ProtocolStatus,
) {
    let s = app_status.to_be_bytes();
    write_record(
        out,
        RecordType::EndRequest,
        request_id,
        &[s[0], s[1], s[2], s[3], protocol_status.as_u8(), 0, 0, 0],
    );
}

pub fn write_unknown_type(out: &mut Vec<u8>, unknown: u8) {
    write_record(
        out,
        RecordType::UnknownType,
        NULL_REQUEST_ID,
        &[unknown, 0, 0, 0, 0, 0, 0, 0],
    );
}

/// The body of a BEGIN_REQUEST record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BeginRequest {
    pub role: Role,
    pub flags: u8,
}

impl BeginRequest {
    pub fn parse(content: &[u8]) -> Result<BeginRequest, ProtocolError> {
        if content.len() < 8 {
            return Err(ProtocolError::ShortBody {
                record_type: RecordType::BeginRequest,
                len: content.len(),
            });
        }
        Ok(BeginRequest {
            role: Role::from_u16(u16::from_be_bytes([content[0], content[1]])),
            flags: content[2],
        })
    }

    pub fn keep_conn(&self) -> bool {
        self.flags & FCGI_KEEP_CONN != 0
    }
}

/// The body of an END_REQUEST record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EndRequest {
    pub app_status: u32,
    pub protocol_status: ProtocolStatus,
}

impl EndRequest {
    pub fn parse(content: &[u8]) -> Result<EndRequest, ProtocolError> {
        if content.len() < 8 {
            return Err(ProtocolError::ShortBody {
                record_type: RecordType::EndRequest,
                len: content.len(),
            });
        }
        Ok(EndRequest {
            app_status: u32::from_be_bytes([content[0], content[1], content[2], content[3]]),
            protocol_status: ProtocolStatus::from_u8(content[4]),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_pads_to_multiple_of_eight() {
        for len in 0..40 {
            let (_, pad) = header(RecordType::Stdout, 1, len);
            assert_eq!((len + pad) % 8, 0, "len {len}");
            assert!(pad < 8);
        }
    }

    #[test]
    fn parse_needs_whole_record() {
        let mut out = Vec::new();
        write_record(&mut out, RecordType::Stdin, 7, b"hello");
        assert_eq!(out.len(), 16);
        for cut in 0..out.len() {
            assert_eq!(parse_record(&out[..cut]), Ok(None), "cut at {cut}");
        }
        let (rec, used) = parse_record(&out).unwrap().unwrap();
        assert_eq!(used, 16);
        assert_eq!(rec.record_type, RecordType::Stdin);
        assert_eq!(rec.request_id, 7);
        assert_eq!(rec.content, b"hello");
    }

    #[test]
    fn bad_version_is_an_error_from_the_first_byte() {
        assert_eq!(
            parse_record(&[2]),
            Err(ProtocolError::UnsupportedVersion(2))
        );
        assert_eq!(
            parse_record(b"GET / HTTP/1.1\r\n"),
            Err(ProtocolError::UnsupportedVersion(b'G'))
        );
    }

    #[test]
    fn write_stream_splits_at_max_content() {
        let data = vec![7u8; MAX_CONTENT_LEN * 2 + 10];
        let mut out = Vec::new();
        write_stream(&mut out, RecordType::Stdout, 1, &data);
        let mut rest = &out[..];
        let mut lens = Vec::new();
        while let Some((rec, used)) = parse_record(rest).unwrap() {
            lens.push(rec.content.len());
            rest = &rest[used..];
        }
        assert_eq!(lens, vec![MAX_CONTENT_LEN, MAX_CONTENT_LEN, 10]);
    }

    #[test]
    fn begin_and_end_request_round_trip() {
        let mut out = Vec::new();
        write_begin_request(&mut out, 3, Role::Authorizer, FCGI_KEEP_CONN);
        let (rec, _) = parse_record(&out).unwrap().unwrap();
        let begin = BeginRequest::parse(rec.content).unwrap();
        assert_eq!(begin.role, Role::Authorizer);
        assert!(begin.keep_conn());

        out.clear();
        write_end_request(&mut out, 3, 0xdead_beef, ProtocolStatus::UnknownRole);
        let (rec, _) = parse_record(&out).unwrap().unwrap();
        assert_eq!(rec.record_type, RecordType::EndRequest);
        let end = EndRequest::parse(rec.content).unwrap();
        assert_eq!(end.app_status, 0xdead_beef);
        assert_eq!(end.protocol_status, ProtocolStatus::UnknownRole);
    }

    #[test]
    fn short_bodies_are_errors() {
        assert!(matches!(
            BeginRequest::parse(&[0, 1, 0]),
            Err(ProtocolError::ShortBody { .. })
        ));
        assert!(matches!(
            EndRequest::parse(&[]),
            Err(ProtocolError::ShortBody { .. })
        ));
    }

    #[test]
    fn type_and_role_numbers_round_trip() {
        for b in 0..=255u8 {
            assert_eq!(RecordType::from_u8(b).as_u8(), b);
            assert_eq!(ProtocolStatus::from_u8(b).as_u8(), b);
        }
        for v in [0u16, 1, 2, 3, 4, 65535] {
            assert_eq!(Role::from_u16(v).as_u16(), v);
        }
    }
}
