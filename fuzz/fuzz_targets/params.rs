//! FastCGI name-value pairs: arbitrary bytes either fail to decode, or decode to pairs
//! that lie within the data and survive re-encoding unchanged.
#![no_main]

use cgi_fpm::fastcgi::params::write_pair;
use cgi_fpm::fastcgi::{Limits, Params};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let limits = Limits {
        max_params: 64,
        max_params_bytes: usize::MAX,
    };
    let Ok(params) = Params::decode(data.to_vec(), &limits) else {
        return;
    };
    assert!(params.len() <= limits.max_params);
    let mut total = 0;
    let mut again = Vec::new();
    for (name, value) in params.iter() {
        total += name.len() + value.len();
        write_pair(&mut again, name, value);
    }
    assert!(total <= data.len());
    let decoded = Params::decode(again, &limits).expect("our own encoding decodes");
    assert!(
        decoded.iter().eq(params.iter()),
        "pairs change through re-encoding"
    );
    for (name, _) in params.iter() {
        if let Ok(name) = std::str::from_utf8(name) {
            // The last pair of that name wins a lookup, as in an environment.
            let last = params
                .iter()
                .filter(|(n, _)| *n == name.as_bytes())
                .last()
                .map(|(_, v)| v);
            assert_eq!(params.get(name), last);
        }
    }
});
