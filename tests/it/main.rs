//! Integration tests: the real server on an ephemeral port, through the doors users use.

mod harness;
mod smtp;

mod accounts;
mod admin;
mod aliases;
mod api_keys;
mod audit;
mod cache_races;
mod cli;
mod clients;
mod contract;
mod dead_letters;
mod dependencies;
mod device_sessions;
mod fuzzing;
mod hardening;
mod invitations;
mod isolation;
mod jobs;
mod mail_flows;
mod notifications;
mod operations;
mod organizations;
mod quotas;
mod realtime;
mod rest_errors;
mod roles;
mod sessions;
mod surface;
mod teams;
mod throttling;
mod totp;
mod users;
mod validation;
mod webhooks;
