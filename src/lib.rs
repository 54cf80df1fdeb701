//! Keel: a gRPC-first SaaS backend. See `README.md` for use and `docs/` for architecture.

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod api;
pub mod app;
pub mod build_info;
pub mod cache;
pub mod config;
pub mod dns;
pub mod domain;
pub mod jobs;
pub mod llm;
pub mod mail;
pub mod oauth;
pub mod objects;
pub mod outbound;
pub mod registry;
pub mod security;
pub mod store;
pub mod telemetry;
pub mod webhooks;
