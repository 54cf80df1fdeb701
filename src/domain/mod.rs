//! Use cases, models and ports. Nothing here knows about gRPC, HTTP, SQL or Redis: adapters in
//! the sibling modules implement the ports, and `app` wires them together.

pub mod apikey;
pub mod audit;
pub mod auth;
pub mod cache;
pub mod clock;
pub mod dependencies;
pub mod error;
pub mod events;
pub mod files;
pub mod flags;
pub mod health;
pub mod integrations;
pub mod jobs;
pub mod llm;
pub mod mail;
pub mod notifications;
pub mod page;
pub mod password;
pub mod principal;
pub mod rate;
pub mod realtime;
pub mod secret;
pub mod tenancy;
pub mod text;
pub mod totp;
pub mod user;
pub mod webhooks;

pub use error::{Error, ErrorKind, FieldViolation, Violations};
