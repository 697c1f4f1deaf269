#![forbid(unsafe_code)]
//! deploytrack: reports which container images run where.
//!
//! The binary (`src/main.rs`) is a thin command line over these modules; they are a library
//! so that the fuzz targets (`fuzz/`) and property tests reach the parsers directly.

pub mod admin;
pub mod agent;
pub mod backoff;
pub mod cli;
pub mod clock;
pub mod commands;
pub mod config;
pub mod deliver;
pub mod deployment;
pub mod engine;
pub mod error;
pub mod evidence;
pub mod key_settings;
pub mod observe;
pub mod outbox;
pub mod reference;
pub mod telemetry;
