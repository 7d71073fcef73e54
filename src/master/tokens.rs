//! The master's event tokens: one range per kind of source, all in this one place, so
//! that none can be taken for another. In order: signals; ondemand pools' listening
//! sockets (by pool index); the doorbell; catch_workers_output pipes; parking channels
//! (by pool index); parked connections; the endpoint's listener and its connections.

use mio::Token;
use std::ops::Range;

pub(super) const SIGNALS: Token = Token(0);
/// Token of an ondemand pool's listening socket: this plus the pool's index.
pub(super) const LISTENER_BASE: usize = 1;
/// The eventfd workers ring when they get busy while the master sleeps with nothing due.
pub(super) const DOORBELL: Token = Token(CAPTURE_TOKENS.start - 1);
pub(super) const CAPTURE_TOKENS: Range<usize> = 1 << 20..1 << 30;
pub(super) const CHANNEL_TOKENS: Range<usize> = 1 << 30..1 << 31;
pub(super) const PARKED_TOKENS: Range<usize> = 1 << 31..1 << 62;
/// The endpoint's listening socket (`metrics.listen`); its connections take the ones above.
pub(super) const ENDPOINT_LISTENER: Token = Token(1 << 62);
pub(super) const ENDPOINT_CONNECTIONS: Range<usize> = (1 << 62) + 1..1 << 63;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_of_source_has_a_range_of_its_own() {
        let one = |token: Token| token.0..token.0 + 1;
        let ranges = [
            one(SIGNALS),
            LISTENER_BASE..DOORBELL.0,
            one(DOORBELL),
            CAPTURE_TOKENS,
            CHANNEL_TOKENS,
            PARKED_TOKENS,
            one(ENDPOINT_LISTENER),
            ENDPOINT_CONNECTIONS,
        ];
        for range in &ranges {
            assert!(!range.is_empty(), "{range:?} holds no token");
        }
        for pair in ranges.windows(2) {
            assert!(
                pair[0].end <= pair[1].start,
                "{:?} and {:?} overlap or are out of order",
                pair[0],
                pair[1]
            );
        }
    }
}
