//! The master's own HTTP endpoint (`metrics.listen`): the protocol and the pages, pure.
//! The master's socket plumbing lives in `master::endpoint`.

pub mod exposition;
pub mod http;

use exposition::{MasterView, OPENMETRICS_TYPE, PoolView};
use http::{Head, Route};

/// The whole answer to what a client sent, or `None` while its head is incomplete.
/// `figures` is called only for a page that needs them.
pub fn answer<'a, F>(buf: &[u8], figures: F) -> Option<Vec<u8>>
where
    F: FnOnce(&mut dyn FnMut(&[PoolView<'_>], &MasterView) -> Vec<u8>) -> Vec<u8>,
    F: 'a,
{
    let request = match http::parse(buf) {
        Head::Incomplete => return None,
        Head::Refused(status) => return Some(http::error(status, false)),
        Head::Complete(request) => request,
    };
    let head_only = request.method == http::Method::Head;
    let route = match http::route(&request) {
        Ok(route) => route,
        Err(status) => return Some(http::error(status, head_only)),
    };
    Some(match route {
        Route::Ping => http::response(200, "text/plain", "pong\n", head_only),
        Route::Metrics => figures(&mut |pools, master| {
            http::response(
                200,
                OPENMETRICS_TYPE,
                &exposition::openmetrics(pools, master),
                head_only,
            )
        }),
        Route::Status { full } => figures(&mut |pools, master| {
            http::response(
                200,
                "application/json",
                &exposition::status_json(pools, master, full),
                head_only,
            )
        }),
    })
}
