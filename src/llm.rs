//! `LlmClient` on reqwest: OpenAI's chat completions API (and Azure OpenAI's form of it),
//! whole or streamed as Server-Sent Events.
//!
//! Endpoints an organization named go through the SSRF guard (`crate::outbound`) unless
//! `allow_private`; the instance's endpoint is the operator's and may be anywhere (a vLLM on
//! the same host). The SSE framing is read here by hand: it is a dozen lines, and a crate for
//! it would want reqwest's byte stream where `chunk()` serves.

use crate::domain::llm::{
    Chunk, Completion, Endpoint, LlmClient, ProviderKind, TokenUsage, UpstreamFailure,
    UpstreamRequest, UpstreamResult,
};
use crate::outbound::{GuardedResolver, check_literal, refused_by_guard};
use futures_util::stream::BoxStream;
use serde::Deserialize;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

/// The most of an answer read: a whole completion's JSON, or one streamed event.
const MAX_ANSWER_BYTES: usize = 8 * 1024 * 1024;

pub struct HttpLlmClient {
    /// For organizations' endpoints: through the guard.
    guarded: reqwest::Client,
    /// For the instance's endpoint.
    trusted: reqwest::Client,
    allow_private: bool,
    timeout: Duration,
}

impl HttpLlmClient {
    pub fn new(allow_private: bool, timeout: Duration) -> anyhow::Result<Self> {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let builder = || {
            reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .no_proxy()
                .connect_timeout(Duration::from_secs(10))
                .read_timeout(timeout)
                .user_agent(concat!("Keel/", env!("CARGO_PKG_VERSION")))
        };
        Ok(Self {
            guarded: builder()
                .dns_resolver(Arc::new(GuardedResolver::new(allow_private)))
                .build()?,
            trusted: builder().build()?,
            allow_private,
            timeout,
        })
    }

    fn request(
        &self,
        endpoint: &Endpoint,
        upstream: &UpstreamRequest<'_>,
        stream: bool,
    ) -> UpstreamResult<reqwest::RequestBuilder> {
        let base = endpoint.base_url.trim_end_matches('/');
        let url = match endpoint.kind {
            ProviderKind::OpenAi => format!("{base}/chat/completions"),
            ProviderKind::AzureOpenAi => format!(
                "{base}/openai/deployments/{}/chat/completions",
                urlencoding_path(upstream.model)
            ),
        };
        let mut url = reqwest::Url::parse(&url)
            .map_err(|error| UpstreamFailure::Refused(format!("not a URL: {error}")))?;
        if endpoint.kind == ProviderKind::AzureOpenAi {
            url.query_pairs_mut()
                .append_pair("api-version", &endpoint.api_version);
        }
        let client = if endpoint.guarded {
            if !self.allow_private {
                check_literal(&url)
                    .map_err(|refused| UpstreamFailure::Refused(refused.to_string()))?;
            }
            &self.guarded
        } else {
            &self.trusted
        };
        let request = upstream.request;
        let mut body = serde_json::Map::new();
        body.insert("model".into(), json!(upstream.model));
        let messages: Vec<serde_json::Value> = (request.messages.iter())
            .map(|message| json!({ "role": message.role.as_str(), "content": message.content }))
            .collect();
        body.insert("messages".into(), json!(messages));
        body.insert("stream".into(), json!(stream));
        if let Some(temperature) = request.temperature {
            body.insert("temperature".into(), json!(temperature));
        }
        if let Some(top_p) = request.top_p {
            body.insert("top_p".into(), json!(top_p));
        }
        if let Some(max_tokens) = request.max_tokens {
            body.insert("max_tokens".into(), json!(max_tokens));
        }
        if !request.stop.is_empty() {
            body.insert("stop".into(), json!(request.stop));
        }
        if stream {
            body.insert("stream_options".into(), json!({ "include_usage": true }));
        }
        let builder = client.post(url).json(&body);
        Ok(match (endpoint.kind, endpoint.api_key.as_str()) {
            (_, "") => builder,
            (ProviderKind::OpenAi, key) => builder.bearer_auth(key),
            (ProviderKind::AzureOpenAi, key) => builder.header("api-key", key),
        })
    }

    /// Sends; a status other than 2xx becomes its failure, with the provider's message.
    async fn send(&self, request: reqwest::RequestBuilder) -> UpstreamResult<reqwest::Response> {
        let response = request
            .send()
            .await
            .map_err(|error| match refused_by_guard(&error) {
                Some(refused) => UpstreamFailure::Refused(refused),
                None => UpstreamFailure::Unavailable(format!("{error:#}")),
            })?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let body = read_bounded(response, 64 * 1024).await.unwrap_or_default();
        let message = serde_json::from_slice::<ErrorBody>(&body)
            .map(|body| body.error.message)
            .unwrap_or_else(|_| String::from_utf8_lossy(&body).chars().take(500).collect());
        let why = format!("{status}: {message}");
        Err(match status.as_u16() {
            401 | 403 => UpstreamFailure::Unauthorized(why),
            429 => UpstreamFailure::RateLimited(why),
            400..=499 => UpstreamFailure::Rejected(why),
            _ => UpstreamFailure::Unavailable(why),
        })
    }
}

/// A model name as one path segment.
fn urlencoding_path(text: &str) -> String {
    text.bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (byte as char).to_string()
            }
            other => format!("%{other:02X}"),
        })
        .collect()
}

async fn read_bounded(mut response: reqwest::Response, limit: usize) -> UpstreamResult<Vec<u8>> {
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|error| UpstreamFailure::Unavailable(format!("{error:#}")))?
    {
        body.extend_from_slice(&chunk);
        if body.len() > limit {
            return Err(UpstreamFailure::Unavailable(format!(
                "the answer exceeds {limit} bytes"
            )));
        }
    }
    Ok(body)
}

#[derive(Deserialize)]
struct ErrorBody {
    error: ErrorMessage,
}

#[derive(Deserialize)]
struct ErrorMessage {
    message: String,
}

#[derive(Deserialize, Default)]
struct Usage {
    #[serde(default)]
    prompt_tokens: u32,
    #[serde(default)]
    completion_tokens: u32,
}

impl From<Usage> for TokenUsage {
    fn from(usage: Usage) -> Self {
        TokenUsage {
            prompt_tokens: usage.prompt_tokens,
            completion_tokens: usage.completion_tokens,
        }
    }
}

#[derive(Deserialize)]
struct CompletionBody {
    #[serde(default)]
    id: String,
    #[serde(default)]
    model: String,
    choices: Vec<CompletionChoice>,
    #[serde(default)]
    usage: Option<Usage>,
}

#[derive(Deserialize)]
struct CompletionChoice {
    message: ChoiceMessage,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct ChoiceMessage {
    #[serde(default)]
    content: Option<String>,
}

#[derive(Deserialize)]
struct ChunkBody {
    #[serde(default)]
    id: String,
    #[serde(default)]
    model: String,
    #[serde(default)]
    choices: Vec<ChunkChoice>,
    #[serde(default)]
    usage: Option<Usage>,
}

#[derive(Deserialize)]
struct ChunkChoice {
    #[serde(default)]
    delta: Delta,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Deserialize, Default)]
struct Delta {
    #[serde(default)]
    content: Option<String>,
}

fn malformed(error: serde_json::Error) -> UpstreamFailure {
    UpstreamFailure::Unavailable(format!(
        "an answer that is not the chat completions API's: {error}"
    ))
}

/// The `data` of one SSE event (its `data:` lines joined), or `None` for an event without.
fn event_data(event: &str) -> Option<String> {
    let lines: Vec<&str> = event
        .lines()
        .filter_map(|line| line.strip_prefix("data:"))
        .map(|data| data.strip_prefix(' ').unwrap_or(data))
        .collect();
    (!lines.is_empty()).then(|| lines.join("\n"))
}

/// The chunk an upstream event carries, if it carries anything.
fn chunk_of(data: &str) -> UpstreamResult<Option<Chunk>> {
    let body: ChunkBody = serde_json::from_str(data).map_err(malformed)?;
    let choice = body.choices.into_iter().next();
    let (delta, finish_reason) = match choice {
        Some(choice) => (
            choice.delta.content.unwrap_or_default(),
            choice.finish_reason,
        ),
        None => (String::new(), None),
    };
    let usage = body.usage.map(TokenUsage::from);
    if delta.is_empty() && finish_reason.is_none() && usage.is_none() {
        return Ok(None);
    }
    Ok(Some(Chunk {
        id: body.id,
        provider: String::new(),
        model: body.model,
        delta,
        finish_reason,
        usage,
    }))
}

/// Reads SSE events off the response as they arrive.
struct Events {
    response: reqwest::Response,
    /// Bytes received and not yet read as events, without carriage returns (so CRLF lines
    /// end as LF ones do).
    buffer: Vec<u8>,
    done: bool,
}

impl Events {
    /// The next event's data; `None` after `[DONE]` or the end.
    async fn next(&mut self) -> Option<UpstreamResult<String>> {
        loop {
            if self.done {
                return None;
            }
            if let Some(end) = self.buffer.windows(2).position(|pair| pair == b"\n\n") {
                let event: Vec<u8> = self.buffer.drain(..end + 2).collect();
                match event_data(&String::from_utf8_lossy(&event)) {
                    Some(data) if data.trim() == "[DONE]" => {
                        self.done = true;
                        return None;
                    }
                    Some(data) => return Some(Ok(data)),
                    None => continue,
                }
            }
            if self.buffer.len() > MAX_ANSWER_BYTES {
                self.done = true;
                return Some(Err(UpstreamFailure::Unavailable(
                    "an event exceeds 8 MiB".to_owned(),
                )));
            }
            match self.response.chunk().await {
                Ok(Some(bytes)) => self
                    .buffer
                    .extend(bytes.iter().copied().filter(|byte| *byte != b'\r')),
                Ok(None) => {
                    self.done = true;
                    // A last event without its blank line still counts.
                    let rest = String::from_utf8_lossy(&self.buffer).into_owned();
                    return event_data(&rest)
                        .filter(|data| data.trim() != "[DONE]")
                        .map(Ok);
                }
                Err(error) => {
                    self.done = true;
                    return Some(Err(UpstreamFailure::Unavailable(format!("{error:#}"))));
                }
            }
        }
    }
}

#[async_trait::async_trait]
impl LlmClient for HttpLlmClient {
    async fn complete(
        &self,
        endpoint: &Endpoint,
        request: UpstreamRequest<'_>,
    ) -> UpstreamResult<Completion> {
        let built = self
            .request(endpoint, &request, false)?
            .timeout(self.timeout);
        let response = self.send(built).await?;
        let body = read_bounded(response, MAX_ANSWER_BYTES).await?;
        let body: CompletionBody = serde_json::from_slice(&body).map_err(malformed)?;
        let choice =
            body.choices.into_iter().next().ok_or_else(|| {
                UpstreamFailure::Unavailable("an answer without a choice".to_owned())
            })?;
        Ok(Completion {
            id: body.id,
            provider: String::new(),
            model: body.model,
            content: choice.message.content.unwrap_or_default(),
            finish_reason: choice.finish_reason.unwrap_or_default(),
            usage: body.usage.unwrap_or_default().into(),
            created_at: chrono::Utc::now(),
        })
    }

    async fn stream(
        &self,
        endpoint: &Endpoint,
        request: UpstreamRequest<'_>,
    ) -> UpstreamResult<BoxStream<'static, UpstreamResult<Chunk>>> {
        let response = self.send(self.request(endpoint, &request, true)?).await?;
        let events = Events {
            response,
            buffer: Vec::new(),
            done: false,
        };
        Ok(Box::pin(futures_util::stream::unfold(
            events,
            |mut events| async move {
                loop {
                    match events.next().await? {
                        Ok(data) => match chunk_of(&data) {
                            Ok(Some(chunk)) => return Some((Ok(chunk), events)),
                            Ok(None) => continue,
                            Err(failure) => {
                                events.done = true;
                                return Some((Err(failure), events));
                            }
                        },
                        Err(failure) => return Some((Err(failure), events)),
                    }
                }
            },
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_carry_their_data_lines() {
        assert_eq!(event_data("data: {\"a\":1}"), Some("{\"a\":1}".to_owned()));
        assert_eq!(
            event_data("event: x\ndata:one\ndata: two"),
            Some("one\ntwo".to_owned())
        );
        assert_eq!(event_data(": a comment"), None);
    }

    #[test]
    fn chunks_take_content_finish_and_usage() {
        let content = chunk_of(
            r#"{"id":"c1","model":"m","choices":[{"index":0,"delta":{"content":"Hel"},"finish_reason":null}]}"#,
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            (content.delta.as_str(), content.finish_reason),
            ("Hel", None)
        );
        let role_only =
            chunk_of(r#"{"id":"c1","choices":[{"index":0,"delta":{"role":"assistant"}}]}"#)
                .unwrap();
        assert_eq!(role_only, None);
        let usage = chunk_of(
            r#"{"id":"c1","choices":[],"usage":{"prompt_tokens":7,"completion_tokens":2,"total_tokens":9}}"#,
        )
        .unwrap()
        .unwrap();
        assert_eq!(usage.usage.map(TokenUsage::total), Some(9));
        assert!(chunk_of("not json").is_err());
    }

    #[test]
    fn model_names_are_one_path_segment() {
        assert_eq!(urlencoding_path("gpt-4o"), "gpt-4o");
        assert_eq!(urlencoding_path("a/b c"), "a%2Fb%20c");
    }
}
