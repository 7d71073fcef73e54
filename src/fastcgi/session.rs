//! The application side of one FastCGI connection, as a state machine over records.
//!
//! It answers management records itself, rejects what a non-multiplexing responder cannot
//! serve, gathers params, and tells the caller about the request, its body and aborts.
//! Replies it writes go into the caller's output buffer; it never touches a socket.

use super::params::{Limits, Params, decode_pairs};
use super::record::{
    BeginRequest, NULL_REQUEST_ID, ProtocolError, ProtocolStatus, Record, RecordType, Role,
    write_end_request, write_record, write_unknown_type,
};

/// What GET_VALUES reports about us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerValues {
    pub max_conns: u32,
    pub max_reqs: u32,
}

/// A request whose params are complete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub id: u16,
    pub keep_conn: bool,
    pub params: Params,
}

/// What one record meant for the caller.
#[derive(Debug, PartialEq, Eq)]
pub enum Event<'a> {
    /// Nothing for the caller to do (a reply may have been written).
    None,
    /// A request's params are complete: run it.
    Request(Request),
    /// Body bytes for the active request.
    Stdin(&'a [u8]),
    /// The body of the active request is complete.
    StdinEnd,
    /// The web server abandoned the active request.
    Abort,
    /// A BEGIN_REQUEST was refused (END_REQUEST already written); when `keep_conn` is false
    /// the connection should be closed after the reply is sent.
    Rejected { keep_conn: bool },
}

#[derive(Debug)]
enum State {
    Idle,
    Params {
        id: u16,
        keep_conn: bool,
        data: Vec<u8>,
    },
    Running {
        id: u16,
        stdin_done: bool,
    },
}

#[derive(Debug)]
pub struct Session {
    state: State,
    limits: Limits,
    values: ServerValues,
}

impl Session {
    pub fn new(values: ServerValues, limits: Limits) -> Session {
        Session {
            state: State::Idle,
            limits,
            values,
        }
    }

    /// True between requests: no request is being read or run.
    pub fn is_idle(&self) -> bool {
        matches!(self.state, State::Idle)
    }

    /// The id of the request being read or run.
    pub fn active_id(&self) -> Option<u16> {
        match self.state {
            State::Idle => None,
            State::Params { id, .. } | State::Running { id, .. } => Some(id),
        }
    }

    /// Whether the active request's body has been received completely.
    pub fn stdin_done(&self) -> bool {
        matches!(
            self.state,
            State::Running {
                stdin_done: true,
                ..
            }
        )
    }

    /// The active request has been answered: accept the next BEGIN_REQUEST.
    pub fn finish(&mut self) {
        self.state = State::Idle;
    }

    /// Interpret one record, writing any protocol-level reply into `out`.
    pub fn on_record<'a>(
        &mut self,
        record: Record<'a>,
        out: &mut Vec<u8>,
    ) -> Result<Event<'a>, ProtocolError> {
        if record.request_id == NULL_REQUEST_ID {
            self.on_management(record, out)?;
            return Ok(Event::None);
        }
        let active = self.active_id() == Some(record.request_id);
        match record.record_type {
            RecordType::BeginRequest => self.on_begin(record, out),
            // The spec has applications ignore records for requests that are not active.
            _ if !active => Ok(Event::None),
            RecordType::Params => self.on_params(record),
            RecordType::Stdin => self.on_stdin(record),
            RecordType::AbortRequest => Ok(Event::Abort),
            // DATA belongs to the filter role, which we never accept; records only an
            // application sends mean a confused peer, and ignoring them loses nothing.
            _ => Ok(Event::None),
        }
    }

    fn on_management(&self, record: Record<'_>, out: &mut Vec<u8>) -> Result<(), ProtocolError> {
        if record.record_type != RecordType::GetValues {
            write_unknown_type(out, record.record_type.as_u8());
            return Ok(());
        }
        let pairs = decode_pairs(record.content, self.limits.max_params)?;
        let mut body = Vec::new();
        for (name, _) in pairs {
            let name = &record.content[name];
            let value = match name {
                b"FCGI_MAX_CONNS" => self.values.max_conns.to_string(),
                b"FCGI_MAX_REQS" => self.values.max_reqs.to_string(),
                b"FCGI_MPXS_CONNS" => "0".to_string(),
                // Unknown names are left out of the result, as the spec says.
                _ => continue,
            };
            super::params::write_pair(&mut body, name, value.as_bytes());
        }
        write_record(out, RecordType::GetValuesResult, NULL_REQUEST_ID, &body);
        Ok(())
    }

    fn on_begin<'a>(
        &mut self,
        record: Record<'a>,
        out: &mut Vec<u8>,
    ) -> Result<Event<'a>, ProtocolError> {
        let begin = BeginRequest::parse(record.content)?;
        match self.active_id() {
            None => {}
            Some(id) if id == record.request_id => {
                return Err(ProtocolError::Unexpected {
                    record_type: record.record_type,
                    request_id: id,
                });
            }
            Some(_) => {
                // One request at a time per connection; say so instead of queueing it.
                write_end_request(out, record.request_id, 0, ProtocolStatus::CantMpxConn);
                return Ok(Event::None);
            }
        }
        if begin.role != Role::Responder {
            write_end_request(out, record.request_id, 0, ProtocolStatus::UnknownRole);
            return Ok(Event::Rejected {
                keep_conn: begin.keep_conn(),
            });
        }
        self.state = State::Params {
            id: record.request_id,
            keep_conn: begin.keep_conn(),
            data: Vec::new(),
        };
        Ok(Event::None)
    }

    fn on_params<'a>(&mut self, record: Record<'a>) -> Result<Event<'a>, ProtocolError> {
        let State::Params {
            id,
            keep_conn,
            data,
        } = &mut self.state
        else {
            return Err(ProtocolError::Unexpected {
                record_type: record.record_type,
                request_id: record.request_id,
            });
        };
        if !record.content.is_empty() {
            if data.len() + record.content.len() > self.limits.max_params_bytes {
                return Err(ProtocolError::ParamsTooLarge {
                    limit: self.limits.max_params_bytes,
                });
            }
            data.extend_from_slice(record.content);
            return Ok(Event::None);
        }
        let (id, keep_conn) = (*id, *keep_conn);
        let params = Params::decode(std::mem::take(data), &self.limits)?;
        self.state = State::Running {
            id,
            stdin_done: false,
        };
        Ok(Event::Request(Request {
            id,
            keep_conn,
            params,
        }))
    }

    fn on_stdin<'a>(&mut self, record: Record<'a>) -> Result<Event<'a>, ProtocolError> {
        let State::Running { stdin_done, .. } = &mut self.state else {
            return Err(ProtocolError::Unexpected {
                record_type: record.record_type,
                request_id: record.request_id,
            });
        };
        if *stdin_done {
            // Extra empty records after the end are harmless; data after it is not.
            return if record.content.is_empty() {
                Ok(Event::None)
            } else {
                Err(ProtocolError::Unexpected {
                    record_type: record.record_type,
                    request_id: record.request_id,
                })
            };
        }
        if record.content.is_empty() {
            *stdin_done = true;
            Ok(Event::StdinEnd)
        } else {
            Ok(Event::Stdin(record.content))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::params::write_pair;
    use super::super::record::{
        EndRequest, FCGI_KEEP_CONN, parse_record, write_begin_request, write_stream,
        write_stream_end,
    };
    use super::*;

    fn session() -> Session {
        Session::new(
            ServerValues {
                max_conns: 5,
                max_reqs: 5,
            },
            Limits::default(),
        )
    }

    /// Feed every record in `bytes`; return the events as owned descriptions and the replies.
    fn feed(s: &mut Session, bytes: &[u8]) -> (Vec<String>, Vec<u8>) {
        let mut out = Vec::new();
        let mut events = Vec::new();
        let mut rest = bytes;
        while let Some((rec, used)) = parse_record(rest).unwrap() {
            let description = match s.on_record(rec, &mut out).unwrap() {
                Event::None => None,
                Event::Request(r) => Some(format!(
                    "request {} keep={} params={}",
                    r.id,
                    r.keep_conn,
                    r.params.len()
                )),
                Event::Stdin(d) => Some(format!("stdin {}", String::from_utf8_lossy(d))),
                Event::StdinEnd => Some("stdin-end".into()),
                Event::Abort => Some("abort".into()),
                Event::Rejected { keep_conn } => Some(format!("rejected keep={keep_conn}")),
            };
            events.extend(description);
            rest = &rest[used..];
        }
        (events, out)
    }

    fn request_bytes(id: u16, flags: u8, body: &[u8]) -> Vec<u8> {
        let mut b = Vec::new();
        write_begin_request(&mut b, id, Role::Responder, flags);
        let mut p = Vec::new();
        write_pair(&mut p, b"REQUEST_METHOD", b"POST");
        write_pair(&mut p, b"SCRIPT_FILENAME", b"/srv/x.sh");
        write_stream(&mut b, RecordType::Params, id, &p);
        write_stream_end(&mut b, RecordType::Params, id);
        write_stream(&mut b, RecordType::Stdin, id, body);
        write_stream_end(&mut b, RecordType::Stdin, id);
        b
    }

    #[test]
    fn a_whole_request() {
        let mut s = session();
        let (events, out) = feed(&mut s, &request_bytes(1, FCGI_KEEP_CONN, b"abc"));
        assert_eq!(
            events,
            vec!["request 1 keep=true params=2", "stdin abc", "stdin-end"]
        );
        assert!(out.is_empty());
        assert!(s.stdin_done());
        s.finish();
        assert!(s.is_idle());
        // The same id is reused for the next request on a kept connection, as nginx does.
        let (events, _) = feed(&mut s, &request_bytes(1, 0, b""));
        assert_eq!(events, vec!["request 1 keep=false params=2", "stdin-end"]);
    }

    #[test]
    fn params_split_across_records_reassemble() {
        let mut s = session();
        let mut b = Vec::new();
        write_begin_request(&mut b, 2, Role::Responder, 0);
        let mut p = Vec::new();
        write_pair(&mut p, b"QUERY_STRING", &[b'q'; 1000]);
        for chunk in p.chunks(3) {
            write_record(&mut b, RecordType::Params, 2, chunk);
        }
        write_stream_end(&mut b, RecordType::Params, 2);
        let mut rest = &b[..];
        let mut out = Vec::new();
        let mut got = None;
        while let Some((rec, used)) = parse_record(rest).unwrap() {
            if let Event::Request(r) = s.on_record(rec, &mut out).unwrap() {
                got = Some(r);
            }
            rest = &rest[used..];
        }
        let r = got.expect("request event");
        assert_eq!(r.params.get("QUERY_STRING").map(<[u8]>::len), Some(1000));
    }

    #[test]
    fn get_values_reports_limits_and_no_multiplexing() {
        let mut s = session();
        let mut q = Vec::new();
        for name in [
            &b"FCGI_MAX_CONNS"[..],
            b"FCGI_MAX_REQS",
            b"FCGI_MPXS_CONNS",
            b"X",
        ] {
            write_pair(&mut q, name, b"");
        }
        let mut b = Vec::new();
        write_record(&mut b, RecordType::GetValues, 0, &q);
        let (_, out) = feed(&mut s, &b);
        let (rec, _) = parse_record(&out).unwrap().unwrap();
        assert_eq!(rec.record_type, RecordType::GetValuesResult);
        assert_eq!(rec.request_id, 0);
        let p = Params::decode(rec.content.to_vec(), &Limits::default()).unwrap();
        assert_eq!(p.get_str("FCGI_MAX_CONNS"), Some("5"));
        assert_eq!(p.get_str("FCGI_MAX_REQS"), Some("5"));
        assert_eq!(p.get_str("FCGI_MPXS_CONNS"), Some("0"));
        assert_eq!(p.len(), 3, "unknown names are omitted");
    }

    #[test]
    fn unknown_management_type_gets_unknown_type() {
        let mut s = session();
        let mut b = Vec::new();
        write_record(&mut b, RecordType::Other(42), 0, b"whatever");
        let (_, out) = feed(&mut s, &b);
        let (rec, _) = parse_record(&out).unwrap().unwrap();
        assert_eq!(rec.record_type, RecordType::UnknownType);
        assert_eq!(rec.content[0], 42);
    }

    #[test]
    fn other_roles_get_unknown_role() {
        for role in [Role::Authorizer, Role::Filter, Role::Other(9)] {
            let mut s = session();
            let mut b = Vec::new();
            write_begin_request(&mut b, 4, role, 0);
            let (events, out) = feed(&mut s, &b);
            assert_eq!(events, vec!["rejected keep=false"]);
            let (rec, _) = parse_record(&out).unwrap().unwrap();
            assert_eq!(rec.request_id, 4);
            let end = EndRequest::parse(rec.content).unwrap();
            assert_eq!(end.protocol_status, ProtocolStatus::UnknownRole);
            assert!(s.is_idle());
        }
    }

    #[test]
    fn a_second_request_id_is_refused_while_one_is_active() {
        let mut s = session();
        let mut b = Vec::new();
        write_begin_request(&mut b, 1, Role::Responder, FCGI_KEEP_CONN);
        write_begin_request(&mut b, 2, Role::Responder, FCGI_KEEP_CONN);
        let (_, out) = feed(&mut s, &b);
        let (rec, _) = parse_record(&out).unwrap().unwrap();
        assert_eq!(rec.request_id, 2);
        assert_eq!(
            EndRequest::parse(rec.content).unwrap().protocol_status,
            ProtocolStatus::CantMpxConn
        );
        assert_eq!(s.active_id(), Some(1));
    }

    #[test]
    fn abort_is_reported_only_for_the_active_request() {
        let mut s = session();
        let mut b = request_bytes(1, 0, b"");
        write_record(&mut b, RecordType::AbortRequest, 9, &[]);
        write_record(&mut b, RecordType::AbortRequest, 1, &[]);
        let (events, _) = feed(&mut s, &b);
        assert_eq!(events.last().map(String::as_str), Some("abort"));
        assert_eq!(events.iter().filter(|e| *e == "abort").count(), 1);
    }

    #[test]
    fn params_over_the_size_limit_are_refused() {
        let mut s = Session::new(
            ServerValues {
                max_conns: 1,
                max_reqs: 1,
            },
            Limits {
                max_params: 10,
                max_params_bytes: 100,
            },
        );
        let mut b = Vec::new();
        write_begin_request(&mut b, 1, Role::Responder, 0);
        write_record(&mut b, RecordType::Params, 1, &[0u8; 60]);
        write_record(&mut b, RecordType::Params, 1, &[0u8; 60]);
        let mut out = Vec::new();
        let mut rest = &b[..];
        let mut result = Ok(Event::None);
        while let Some((rec, used)) = parse_record(rest).unwrap() {
            result = s.on_record(rec, &mut out);
            if result.is_err() {
                break;
            }
            rest = &rest[used..];
        }
        assert_eq!(result, Err(ProtocolError::ParamsTooLarge { limit: 100 }));
    }

    #[test]
    fn stdin_before_params_end_is_a_protocol_error() {
        let mut s = session();
        let mut b = Vec::new();
        write_begin_request(&mut b, 1, Role::Responder, 0);
        write_record(&mut b, RecordType::Stdin, 1, b"early");
        let mut out = Vec::new();
        let (rec, used) = parse_record(&b).unwrap().unwrap();
        s.on_record(rec, &mut out).unwrap();
        let (rec, _) = parse_record(&b[used..]).unwrap().unwrap();
        assert!(matches!(
            s.on_record(rec, &mut out),
            Err(ProtocolError::Unexpected { .. })
        ));
    }
}
