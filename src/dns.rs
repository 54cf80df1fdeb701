//! The `TxtRecords` port on hickory-resolver: the system's resolvers, or the one nameserver of
//! `KEEL_DNS_NAMESERVER`. Nothing is cached: a record just published must count.

use crate::domain::error::{Error, Result};
use crate::domain::tenancy::sso::TxtRecords;
use hickory_resolver::config::{NameServerConfigGroup, ResolverConfig};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::{Resolver, TokioResolver};
use std::net::SocketAddr;
use std::time::Duration;

pub struct DnsTxt {
    resolver: TokioResolver,
}

impl DnsTxt {
    pub fn new(nameserver: Option<SocketAddr>) -> anyhow::Result<Self> {
        let mut builder = match nameserver {
            Some(address) => {
                let servers =
                    NameServerConfigGroup::from_ips_clear(&[address.ip()], address.port(), true);
                Resolver::builder_with_config(
                    ResolverConfig::from_parts(None, Vec::new(), servers),
                    TokioConnectionProvider::default(),
                )
            }
            None => Resolver::builder_tokio()?,
        };
        let options = builder.options_mut();
        options.timeout = Duration::from_secs(3);
        options.attempts = 2;
        options.cache_size = 0;
        Ok(Self {
            resolver: builder.build(),
        })
    }
}

#[async_trait::async_trait]
impl TxtRecords for DnsTxt {
    async fn txt(&self, name: &str) -> Result<Vec<String>> {
        match self.resolver.txt_lookup(name).await {
            Ok(found) => Ok(found
                .iter()
                .map(|record| {
                    record
                        .txt_data()
                        .iter()
                        .map(|chunk| String::from_utf8_lossy(chunk))
                        .collect()
                })
                .collect()),
            Err(error) if error.is_nx_domain() || error.is_no_records_found() => Ok(Vec::new()),
            Err(error) => Err(Error::unavailable("DNS_UNAVAILABLE", error.to_string())),
        }
    }
}
