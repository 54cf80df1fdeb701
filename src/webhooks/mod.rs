//! Webhook delivery over HTTP (reqwest): each message signed per Standard Webhooks
//! (`webhook-id`, `webhook-timestamp`, `webhook-signature: v1,<base64 HMAC-SHA256>`), posted
//! without following redirects or proxies, with a bounded time and a bounded read of the
//! answer.
//!
//! Targets must be public addresses (`crate::outbound`): IP literals are checked before
//! sending, names in the resolver. `allow_private` lifts the guard for development and tests.

use crate::domain::webhooks::{Answer, EXCERPT_BYTES, Outgoing, SendFailure, WebhookSender};
use crate::outbound::{GuardedResolver, check_literal, refused_by_guard};
use aws_lc_rs::hmac;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub struct HttpSender {
    client: reqwest::Client,
    allow_private: bool,
}

impl HttpSender {
    pub fn new(allow_private: bool, timeout: Duration) -> anyhow::Result<Self> {
        // reqwest's TLS takes the process-wide provider (aws-lc-rs, as everywhere in Keel).
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            .user_agent(concat!("Keel-Webhooks/", env!("CARGO_PKG_VERSION")))
            .dns_resolver(Arc::new(GuardedResolver::new(allow_private)))
            .build()?;
        Ok(Self {
            client,
            allow_private,
        })
    }

    /// Refuses a URL whose scheme is not http(s) or whose host is a private IP literal.
    fn check(&self, url: &str) -> Result<reqwest::Url, SendFailure> {
        let parsed = reqwest::Url::parse(url)
            .map_err(|error| SendFailure::Refused(format!("not a URL: {error}")))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(SendFailure::Refused("only http and https URLs".to_owned()));
        }
        if parsed.host_str().is_none() {
            return Err(SendFailure::Refused("the URL names no host".to_owned()));
        }
        if !self.allow_private {
            check_literal(&parsed).map_err(|refused| SendFailure::Refused(refused.to_string()))?;
        }
        Ok(parsed)
    }
}

/// `v1,<signature>` for each secret, space-separated: what `webhook-signature` carries.
pub fn signatures(message_id: &str, timestamp: i64, body: &str, secrets: &[Vec<u8>]) -> String {
    let content = format!("{message_id}.{timestamp}.{body}");
    secrets
        .iter()
        .map(|secret| {
            let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
            format!(
                "v1,{}",
                STANDARD.encode(hmac::sign(&key, content.as_bytes()))
            )
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[async_trait::async_trait]
impl WebhookSender for HttpSender {
    async fn send(&self, outgoing: Outgoing<'_>) -> Result<Answer, SendFailure> {
        let url = self.check(outgoing.url)?;
        let message_id = outgoing.message_id.to_string();
        let timestamp = chrono::Utc::now().timestamp();
        let started = Instant::now();
        let mut request = self.client.post(url);
        if let Some(request_id) = outgoing.request_id {
            request = request.header("x-request-id", request_id);
        }
        let sent = request
            .header("content-type", "application/json")
            .header("webhook-id", &message_id)
            .header("webhook-timestamp", timestamp.to_string())
            .header(
                "webhook-signature",
                signatures(&message_id, timestamp, outgoing.body, outgoing.secrets),
            )
            .body(outgoing.body.to_owned())
            .send()
            .await;
        let mut response = match sent {
            Ok(response) => response,
            Err(error) => {
                return Err(match refused_by_guard(&error) {
                    Some(refused) => SendFailure::Refused(refused),
                    None => SendFailure::Failed(format!("{error:#}")),
                });
            }
        };
        let status = response.status().as_u16();
        let mut excerpt = Vec::new();
        while excerpt.len() < EXCERPT_BYTES {
            match response.chunk().await {
                Ok(Some(chunk)) => excerpt.extend_from_slice(&chunk),
                Ok(None) | Err(_) => break,
            }
        }
        excerpt.truncate(EXCERPT_BYTES);
        Ok(Answer {
            status,
            excerpt: String::from_utf8_lossy(&excerpt).into_owned(),
            latency: started.elapsed(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_spellings_are_refused_before_sending() {
        let sender = HttpSender::new(false, Duration::from_secs(1)).unwrap();
        for url in [
            "http://127.0.0.1/hook",
            "http://127.1/hook",
            "http://2130706433/hook",
            "http://0x7f000001/hook",
            "http://[::1]/hook",
            "http://[::ffff:127.0.0.1]/hook",
            "ftp://example.com/hook",
        ] {
            assert!(
                matches!(sender.check(url), Err(SendFailure::Refused(_))),
                "{url}"
            );
        }
        assert!(sender.check("https://hooks.example.com/keel").is_ok());
        let open = HttpSender::new(true, Duration::from_secs(1)).unwrap();
        assert!(open.check("http://127.0.0.1:9000/hook").is_ok());
    }

    /// The signature of the Standard Webhooks specification's example.
    #[test]
    fn signatures_follow_the_specification() {
        let secret = STANDARD.decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        assert_eq!(
            signatures(
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                1614265330,
                r#"{"test": 2432232314}"#,
                &[secret]
            ),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }
}
