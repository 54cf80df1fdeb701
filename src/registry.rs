//! The `Registry` port on a Cargo sparse index (crates.io's is `https://index.crates.io`): one
//! file per crate, a JSON line per published version.

use crate::domain::dependencies::Registry;
use crate::domain::error::{Error, Result};
use std::time::Duration;

pub struct SparseIndex {
    base_url: String,
    client: reqwest::Client,
}

impl SparseIndex {
    pub fn new(base_url: &str) -> anyhow::Result<Self> {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .user_agent(concat!(
                "keel/",
                env!("CARGO_PKG_VERSION"),
                " (dependency update check)"
            ))
            .build()?;
        Ok(Self {
            base_url: base_url.trim_end_matches('/').to_owned(),
            client,
        })
    }
}

/// Where the index keeps a crate: `1/a`, `2/ab`, `3/a/abc`, `ab/cd/abcd…`.
fn index_path(name: &str) -> String {
    let name = name.to_ascii_lowercase();
    match name.len() {
        1 => format!("1/{name}"),
        2 => format!("2/{name}"),
        3 => format!("3/{}/{name}", &name[..1]),
        _ => format!("{}/{}/{name}", &name[..2], &name[2..4]),
    }
}

/// The newest version of an index file that is neither yanked nor a pre-release.
fn newest(index_file: &str) -> Option<String> {
    index_file
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|release| !release["yanked"].as_bool().unwrap_or(false))
        .filter_map(|release| semver::Version::parse(release["vers"].as_str()?).ok())
        .filter(|version| version.pre.is_empty())
        .max()
        .map(|version| version.to_string())
}

#[async_trait::async_trait]
impl Registry for SparseIndex {
    async fn newest_version(&self, name: &str) -> Result<Option<String>> {
        let url = format!("{}/{}", self.base_url, index_path(name));
        let unavailable = |error: reqwest::Error| Error::unavailable("REGISTRY_UNAVAILABLE", error);
        let response = self.client.get(&url).send().await.map_err(unavailable)?;
        if response.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let response = response.error_for_status().map_err(unavailable)?;
        let index_file = response.text().await.map_err(unavailable)?;
        Ok(newest(&index_file))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_follow_the_sparse_index_layout() {
        assert_eq!(index_path("a"), "1/a");
        assert_eq!(index_path("ab"), "2/ab");
        assert_eq!(index_path("abc"), "3/a/abc");
        assert_eq!(index_path("Tokio"), "to/ki/tokio");
    }

    #[test]
    fn the_newest_release_skips_yanked_and_pre_releases() {
        let file = [
            r#"{"name":"x","vers":"1.2.0","yanked":false}"#,
            r#"{"name":"x","vers":"1.10.0","yanked":false}"#,
            r#"{"name":"x","vers":"1.11.0","yanked":true}"#,
            r#"{"name":"x","vers":"2.0.0-rc.1","yanked":false}"#,
        ]
        .join("\n");
        assert_eq!(newest(&file), Some("1.10.0".to_owned()));
        assert_eq!(newest(""), None);
    }
}
