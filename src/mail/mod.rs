//! Mail delivery, for the mail jobs (`crate::jobs`): over SMTP (lettre) or, on the embedded
//! defaults, to a development outbox that logs that each message went and keeps the newest
//! for operators.

use crate::domain::mail::{KeptMail, Outbox, OutgoingMail};
use lettre::message::{Mailbox, MultiPart};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

const OUTBOX_CAPACITY: usize = 100;

pub enum Delivery {
    Smtp {
        transport: AsyncSmtpTransport<Tokio1Executor>,
        from: Mailbox,
    },
    /// The embedded default: each message goes to the outbox, and a line saying so to the log.
    Outbox(Arc<MemoryOutbox>),
}

impl Delivery {
    /// SMTP from `smtp://host:port` or `smtps://user:password@host:port`.
    pub fn smtp(url: &str, from: &str) -> anyhow::Result<Self> {
        let transport = AsyncSmtpTransport::<Tokio1Executor>::from_url(url)
            .map_err(|error| anyhow::anyhow!("KEEL_SMTP_URL: {error}"))?
            .build();
        let from = from
            .parse()
            .map_err(|error| anyhow::anyhow!("KEEL_MAIL_FROM: {error}"))?;
        Ok(Delivery::Smtp { transport, from })
    }

    pub async fn deliver(&self, mail: &OutgoingMail) -> Result<(), DeliveryError> {
        match self {
            Delivery::Outbox(outbox) => {
                outbox.keep(mail.clone());
                Ok(())
            }
            Delivery::Smtp { transport, from } => {
                let to: Mailbox = mail
                    .to
                    .parse()
                    .map_err(|error| DeliveryError::Permanent(format!("recipient: {error}")))?;
                let message = Message::builder()
                    .from(from.clone())
                    .to(to)
                    .subject(&mail.subject)
                    .multipart(MultiPart::alternative_plain_html(
                        mail.text.clone(),
                        mail.html.clone(),
                    ))
                    .map_err(|error| DeliveryError::Permanent(error.to_string()))?;
                transport.send(message).await.map(|_| ()).map_err(|error| {
                    if error.is_permanent() {
                        DeliveryError::Permanent(error.to_string())
                    } else {
                        DeliveryError::Transient(error.to_string())
                    }
                })
            }
        }
    }
}

pub enum DeliveryError {
    /// Worth another attempt (the server was unreachable or answered 4xx).
    Transient(String),
    /// Never deliverable as it is (a bad address, a 5xx answer).
    Permanent(String),
}

/// The development outbox: logs that a message went (never its body: its links are
/// credentials) and keeps the newest ones for `AdminService/ListOutboxMessages`.
#[derive(Default)]
pub struct MemoryOutbox {
    messages: Mutex<VecDeque<KeptMail>>,
}

impl MemoryOutbox {
    fn keep(&self, mail: OutgoingMail) {
        tracing::info!(
            to = %mail.to,
            subject = %mail.subject,
            "mail not sent (no KEEL_SMTP_URL): kept in the outbox"
        );
        let mut messages = self
            .messages
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if messages.len() == OUTBOX_CAPACITY {
            messages.pop_back();
        }
        messages.push_front(KeptMail {
            mail,
            created_at: chrono::Utc::now(),
        });
    }
}

impl Outbox for MemoryOutbox {
    fn recent(&self) -> Vec<KeptMail> {
        self.messages
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .iter()
            .cloned()
            .collect()
    }
}
