//! A minimal SMTP server on loopback for the tests: accepts every message and keeps it, so a
//! test can read the links Keel mailed.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

#[derive(Clone, Default)]
pub struct Mailbox {
    messages: Arc<Mutex<Vec<String>>>,
    /// Messages still to refuse with a transient error (451) before accepting.
    refusals: Arc<AtomicUsize>,
    /// Messages whose data arrived, answered or not.
    received: Arc<AtomicUsize>,
    /// How long the server takes to answer a message's data, in milliseconds.
    answer_delay_ms: Arc<AtomicUsize>,
}

impl Mailbox {
    /// Starts a server; answers its `smtp://` URL and the mailbox it fills.
    pub async fn start() -> (String, Mailbox) {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("SMTP listener");
        let url = format!("smtp://{}", listener.local_addr().expect("address"));
        let mailbox = Mailbox::default();
        let serving = mailbox.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let mailbox = serving.clone();
                tokio::spawn(async move {
                    let _ = mailbox.session(stream).await;
                });
            }
        });
        (url, mailbox)
    }

    async fn session(&self, stream: TcpStream) -> std::io::Result<()> {
        let (reader, mut writer) = stream.into_split();
        let mut lines = BufReader::new(reader).lines();
        writer.write_all(b"220 keel-test ESMTP\r\n").await?;
        while let Some(line) = lines.next_line().await? {
            let command = line.to_ascii_uppercase();
            if command.starts_with("EHLO") {
                writer
                    .write_all(b"250-keel-test\r\n250 8BITMIME\r\n")
                    .await?;
            } else if command.starts_with("DATA") {
                writer.write_all(b"354 go ahead\r\n").await?;
                let mut message = String::new();
                while let Some(data) = lines.next_line().await? {
                    if data == "." {
                        break;
                    }
                    message.push_str(&data);
                    message.push_str("\r\n");
                }
                self.received.fetch_add(1, Ordering::SeqCst);
                let delay = self.answer_delay_ms.load(Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(delay as u64)).await;
                let refuse = self
                    .refusals
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| {
                        left.checked_sub(1)
                    })
                    .is_ok();
                if refuse {
                    writer.write_all(b"451 try again later\r\n").await?;
                } else {
                    self.messages.lock().unwrap().push(message);
                    writer.write_all(b"250 queued\r\n").await?;
                }
            } else if command.starts_with("QUIT") {
                writer.write_all(b"221 bye\r\n").await?;
                return Ok(());
            } else {
                writer.write_all(b"250 ok\r\n").await?;
            }
        }
        Ok(())
    }

    /// Takes `delay` to answer each message's data from now on: a sender is busy with it.
    pub fn answer_after(&self, delay: Duration) {
        let millis = usize::try_from(delay.as_millis()).unwrap_or(usize::MAX);
        self.answer_delay_ms.store(millis, Ordering::SeqCst);
    }

    /// Waits until the data of `count` messages arrived (answered or not).
    pub async fn wait_received(&self, count: usize) {
        for _ in 0..400 {
            if self.received.load(Ordering::SeqCst) >= count {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("the data of {count} messages never arrived");
    }

    /// Refuses the next `count` messages with a transient error.
    pub fn refuse_next(&self, count: usize) {
        self.refusals.store(count, Ordering::SeqCst);
    }

    /// Messages to `to` so far.
    pub fn messages_to(&self, to: &str) -> Vec<String> {
        let needle = format!("To: {to}");
        self.messages
            .lock()
            .unwrap()
            .iter()
            .filter(|message| {
                message
                    .lines()
                    .any(|line| line.eq_ignore_ascii_case(&needle))
            })
            .cloned()
            .collect()
    }

    /// Waits for the `count`-th message to `to` and answers the token of its link.
    pub async fn token(&self, to: &str, count: usize) -> String {
        for _ in 0..200 {
            if let Some(message) = self.messages_to(to).get(count - 1) {
                return link_token(message);
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("no message number {count} to {to} arrived");
    }
}

impl Mailbox {
    /// Waits until `count` messages to `to` contain `needle`; answers how many did.
    pub async fn wait_for(&self, to: &str, needle: &str, count: usize) -> usize {
        let mut found = 0;
        for _ in 0..200 {
            found = self
                .messages_to(to)
                .iter()
                .filter(|message| message.contains(needle))
                .count();
            if found >= count {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        found
    }

    /// Waits for a message to `to` with a link to `page` (`reset-password`, `magic-link`…) and
    /// answers the token of the newest such link, whatever mail came before or between.
    pub async fn link_token(&self, to: &str, page: &str) -> String {
        let needle = format!("/{page}?token=");
        for _ in 0..200 {
            let newest = self
                .messages_to(to)
                .iter()
                .rev()
                .map(|message| message.replace("=\r\n", "").replace("=3D", "="))
                .find(|decoded| decoded.contains(&needle))
                .map(|decoded| link_token(&decoded[decoded.find(&needle).unwrap()..]));
            if let Some(token) = newest {
                return token;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("no link to {page} arrived for {to}");
    }
}

/// The `token=` parameter of the first link in a message, quoted-printable decoded.
fn link_token(message: &str) -> String {
    let decoded = message.replace("=\r\n", "").replace("=3D", "=");
    let start = decoded.find("token=").expect("a link with a token") + "token=".len();
    decoded[start..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .collect()
}
