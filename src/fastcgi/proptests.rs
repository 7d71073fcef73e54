//! Property tests: encoding round-trips, stream splits, and hostile bytes.

use super::params::{Limits, Params, write_pair};
use super::record::{RecordType, parse_record, write_record};
use super::session::{ServerValues, Session};
use proptest::prelude::*;

fn record_strategy() -> impl Strategy<Value = (u8, u16, Vec<u8>)> {
    (
        1u8..=11,
        any::<u16>(),
        prop::collection::vec(any::<u8>(), 0..2000),
    )
}

/// Decode a whole buffer into owned records, the way a reader with a growing buffer does.
fn decode_all(bytes: &[u8]) -> Vec<(u8, u16, Vec<u8>)> {
    let mut rest = bytes;
    let mut out = Vec::new();
    while let Some((rec, used)) = parse_record(rest).expect("valid stream") {
        out.push((
            rec.record_type.as_u8(),
            rec.request_id,
            rec.content.to_vec(),
        ));
        rest = &rest[used..];
    }
    assert!(rest.is_empty(), "{} trailing bytes", rest.len());
    out
}

proptest! {
    #[test]
    fn records_round_trip(records in prop::collection::vec(record_strategy(), 0..20)) {
        let mut bytes = Vec::new();
        for (t, id, content) in &records {
            write_record(&mut bytes, RecordType::from_u8(*t), *id, content);
        }
        prop_assert_eq!(decode_all(&bytes), records);
    }

    #[test]
    fn any_split_decodes_the_same(
        records in prop::collection::vec(record_strategy(), 1..10),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..20),
    ) {
        let mut bytes = Vec::new();
        for (t, id, content) in &records {
            write_record(&mut bytes, RecordType::from_u8(*t), *id, content);
        }
        // Feed the stream in pieces cut at arbitrary points, keeping the unparsed tail.
        let mut points: Vec<usize> = cuts.iter().map(|i| i.index(bytes.len() + 1)).collect();
        points.push(bytes.len());
        points.sort_unstable();
        let mut buffer = Vec::new();
        let mut decoded = Vec::new();
        let mut from = 0;
        for to in points {
            buffer.extend_from_slice(&bytes[from..to]);
            from = to;
            let mut consumed = 0;
            while let Some((rec, used)) = parse_record(&buffer[consumed..]).expect("valid") {
                decoded.push((rec.record_type.as_u8(), rec.request_id, rec.content.to_vec()));
                consumed += used;
            }
            buffer.drain(..consumed);
        }
        prop_assert!(buffer.is_empty());
        prop_assert_eq!(decoded, records);
    }

    #[test]
    fn params_round_trip(pairs in prop::collection::vec(
        (prop::collection::vec(any::<u8>(), 0..300), prop::collection::vec(any::<u8>(), 0..300)),
        0..30,
    )) {
        let mut data = Vec::new();
        for (n, v) in &pairs {
            write_pair(&mut data, n, v);
        }
        let params = Params::decode(data, &Limits::default()).expect("decodes");
        let got: Vec<(Vec<u8>, Vec<u8>)> =
            params.iter().map(|(n, v)| (n.to_vec(), v.to_vec())).collect();
        prop_assert_eq!(got, pairs);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..4096)) {
        let _ = Params::decode(bytes.clone(), &Limits::default());
        let mut session = Session::new(ServerValues { max_conns: 1, max_reqs: 1 }, Limits::default());
        let mut out = Vec::new();
        let mut rest = &bytes[..];
        while let Ok(Some((rec, used))) = parse_record(rest) {
            if session.on_record(rec, &mut out).is_err() {
                break;
            }
            rest = &rest[used..];
        }
    }

    /// Well-framed records with arbitrary types, ids and bodies: the session must never
    /// panic, whatever order they come in.
    #[test]
    fn arbitrary_records_never_panic_the_session(
        records in prop::collection::vec((0u8..=12, 0u16..4, prop::collection::vec(any::<u8>(), 0..64)), 0..40)
    ) {
        let mut session = Session::new(ServerValues { max_conns: 1, max_reqs: 1 }, Limits::default());
        let mut bytes = Vec::new();
        for (t, id, content) in &records {
            write_record(&mut bytes, RecordType::from_u8(*t), *id, content);
        }
        let mut out = Vec::new();
        let mut rest = &bytes[..];
        while let Ok(Some((rec, used))) = parse_record(rest) {
            let _ = session.on_record(rec, &mut out);
            rest = &rest[used..];
        }
    }
}
