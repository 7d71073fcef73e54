//! Running one request as a CGI child (RFC 3875): which script, its environment, and the
//! process itself.

pub mod env;
pub mod headers;
pub mod php;
pub mod proxy_path;
pub mod resolve;
pub mod response;
pub mod spawn;

pub use env::{EnvPolicy, build_env};
pub use resolve::{Refusal, Resolved, ScriptRequest, resolve};
pub use spawn::{CgiChild, Usage, reap, spawn};
