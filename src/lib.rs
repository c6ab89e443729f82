//! meiro-gate: an authenticating gateway for Meiro.
//!
//! Two planes share one listener. The **auth API** (`api` over `auth` over `store`) serves
//! the Meiro Authentication API; the **data plane** (`proxy`) takes every other request,
//! checks its token against the moka cache in `auth::cache` and forwards it upstream.
//! `app` wires them, `server` owns sockets, `config` loads settings, `mail` sends invitations
//! and resets, `telemetry` logs and counts, `request_id` names requests. Two leaves every
//! module may use: `types` (ids, roles, secrets, the signing algorithm) and `email` (the one
//! rule for addresses). Dependencies point `api → auth → store → config → types` and
//! `proxy → auth`; nothing depends on `server`, `api` or `app`, and no two top-level modules
//! depend on each other (`tests/layout.rs` checks it).

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
pub mod types;

pub use app::{App, ReloadError, ReloadReport, RunningApp};
pub use config::Config;
