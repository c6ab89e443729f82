//! meiro-gate: an authenticating gateway for Meiro.
//!
//! Two planes share one listener. The **auth API** (`api` over `auth` over `store`) serves
//! the Meiro Authentication API; the **data plane** (`proxy`) takes every other request,
//! checks its token against the moka cache in `auth::cache` and forwards it upstream.
//! `app` wires them, `server` owns sockets, `config` loads settings; `email` is the one rule
//! for e-mail addresses, a leaf every module may use. Dependencies point `api → auth → store`
//! and `proxy → auth`; nothing depends on `server`, `api` or `app`.

#![forbid(unsafe_code)]

pub mod api;
pub mod app;
pub mod auth;
pub mod config;
pub mod email;
#[doc(hidden)]
pub mod fuzzing;
pub mod mail;
pub mod proxy;
pub mod request_id;
pub mod server;
pub mod store;
pub mod telemetry;

pub use app::{App, ReloadError, ReloadReport, RunningApp};
pub use config::Config;
