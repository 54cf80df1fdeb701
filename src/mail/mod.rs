//! The mail adapter: a bounded in-process queue whose worker runs deferred mail jobs and
//! delivers their messages over SMTP (lettre) or, on the embedded defaults, to a development
//! outbox that logs that each message went and keeps the newest for operators. Failed
//! deliveries are retried with backoff; a message that still fails is logged as an error. A
//! full queue refuses new messages (the caller answers UNAVAILABLE). (The jobs capability will
//! move this queue to durable storage.)

use crate::domain::error::{Error, ErrorKind, Result};
use crate::domain::mail::{KeptMail, MailJob, Mailer, Outbox, OutgoingMail};
use lettre::message::{Mailbox, MultiPart};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Semaphore, mpsc};

/// Jobs waiting for the worker; beyond this a new one is refused.
const QUEUE_CAPACITY: usize = 1024;
const CONCURRENT_DELIVERIES: usize = 4;
const ATTEMPTS: u32 = 5;
const FIRST_RETRY_DELAY: Duration = Duration::from_secs(1);
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

    async fn deliver(&self, mail: &OutgoingMail) -> Result<(), DeliveryError> {
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

enum DeliveryError {
    Transient(String),
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

pub struct MailQueue {
    jobs: mpsc::Sender<MailJob>,
}

impl MailQueue {
    /// Starts the worker on the current runtime.
    pub fn start(delivery: Delivery) -> Self {
        let (jobs, mut queued) = mpsc::channel::<MailJob>(QUEUE_CAPACITY);
        let delivery = Arc::new(delivery);
        let slots = Arc::new(Semaphore::new(CONCURRENT_DELIVERIES));
        tokio::spawn(async move {
            while let Some(job) = queued.recv().await {
                let Ok(slot) = slots.clone().acquire_owned().await else {
                    return;
                };
                let delivery = delivery.clone();
                tokio::spawn(async move {
                    run_job(job, &delivery).await;
                    drop(slot);
                });
            }
        });
        Self { jobs }
    }
}

async fn run_job(job: MailJob, delivery: &Delivery) {
    let mail = match job.await {
        Ok(Some(mail)) => mail,
        Ok(None) => return,
        Err(error) => {
            tracing::error!(%error, "preparing a mail failed");
            return;
        }
    };
    let mut delay = FIRST_RETRY_DELAY;
    for attempt in 1..=ATTEMPTS {
        match delivery.deliver(&mail).await {
            Ok(()) => return,
            Err(DeliveryError::Permanent(error)) => {
                tracing::error!(subject = %mail.subject, %error, "mail undeliverable");
                return;
            }
            Err(DeliveryError::Transient(error)) if attempt < ATTEMPTS => {
                tracing::warn!(subject = %mail.subject, attempt, %error, "mail delivery failed, retrying");
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
            Err(DeliveryError::Transient(error)) => {
                tracing::error!(subject = %mail.subject, attempts = ATTEMPTS, %error, "mail undeliverable, giving up");
            }
        }
    }
}

fn queue_full() -> Error {
    Error {
        retry_after: Some(std::time::Duration::from_secs(5)),
        ..Error::new(
            ErrorKind::Unavailable,
            "MAIL_QUEUE_FULL",
            "too much mail is waiting to be sent, try again in a moment",
        )
    }
}

impl Mailer for MailQueue {
    fn admit(&self) -> Result<()> {
        if self.jobs.capacity() == 0 {
            return Err(queue_full());
        }
        Ok(())
    }

    fn send_later(&self, job: MailJob) -> Result<()> {
        self.jobs.try_send(job).map_err(|_| queue_full())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_full_queue_refuses_instead_of_dropping() {
        let queue = MailQueue::start(Delivery::Outbox(Arc::new(MemoryOutbox::default())));
        // Jobs that never finish hold every delivery slot, then fill the queue.
        assert!(queue.admit().is_ok());
        let refused = (0..QUEUE_CAPACITY + CONCURRENT_DELIVERIES + 2)
            .find_map(|_| queue.send_later(Box::pin(std::future::pending())).err())
            .expect("a full queue refuses");
        assert_eq!(refused.reason, "MAIL_QUEUE_FULL");
        assert!(refused.retry_after.is_some());
        assert_eq!(
            queue.admit().map_err(|error| error.reason),
            Err("MAIL_QUEUE_FULL")
        );
    }
}
