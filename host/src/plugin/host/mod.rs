//! The host side of the `yoi:plugin` imports, one file per interface, each
//! an `impl Host` for [`CallState`](super::call::CallState).

mod context;
mod log;
mod pods;
mod state;

impl super::bindings::types::Host for super::call::CallState {}
