//! cgi-fpm: a FastCGI process manager that runs CGI scripts in any language.

pub mod config;
pub mod fastcgi;
