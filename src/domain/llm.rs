//! The LLM gateway (seed 000's "LLM provider abstraction"): chat completions for an
//! organization's members against OpenAI-compatible endpoints, with keys the callers never
//! see, metered in the organization's monthly token quota.
//!
//! A request names one of the organization's providers, or none for its default; an
//! organization without providers is served by the instance's (from the settings). Provider
//! keys are sealed with the instance key. Endpoints an organization names are users' input and
//! go through the SSRF guard; the instance's is the operator's and does not.

use super::clock::{Clock, truncate_to_micros};
use super::error::{Error, ErrorKind, FieldViolation, Missing, Result, Violations};
use super::events::{Event, EventKind, LlmProviderData};
use super::secret::Keyring;
use super::tenancy::access::Access;
use super::tenancy::quotas::QuotaService;
use super::text::http_url;
use chrono::{DateTime, Utc};
use futures_util::stream::BoxStream;
use futures_util::{Stream, StreamExt};
use std::sync::Arc;
use uuid::Uuid;

const KEY_PURPOSE: &str = "llm-provider-key";
const MAX_PROVIDERS: usize = 10;

/// The API a provider speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProviderKind {
    /// OpenAI and compatible servers (vLLM, Ollama, LiteLLM…): `{base}/chat/completions`,
    /// `Authorization: Bearer`.
    OpenAi,
    /// Azure OpenAI: `{base}/openai/deployments/{model}/chat/completions?api-version=`,
    /// `api-key`.
    AzureOpenAi,
}

impl ProviderKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::OpenAi => "openai",
            Self::AzureOpenAi => "azure_openai",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [Self::OpenAi, Self::AzureOpenAi]
            .into_iter()
            .find(|kind| kind.as_str() == text)
    }
}

/// An organization's provider, as shown (never its key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LlmProvider {
    pub organization_id: Uuid,
    pub name: String,
    pub kind: ProviderKind,
    pub base_url: String,
    pub api_version: String,
    /// The models callers may ask for; empty for any.
    pub models: Vec<String>,
    pub default_model: String,
    pub is_default: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Where a completion is sent and how.
#[derive(Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub kind: ProviderKind,
    pub base_url: String,
    pub api_key: String,
    pub api_version: String,
    /// Named by an organization: checked by the SSRF guard.
    pub guarded: bool,
}

/// The instance's provider, from the settings.
#[derive(Clone)]
pub struct InstanceProvider {
    pub base_url: String,
    /// Empty for a server that wants none (a local vLLM).
    pub api_key: String,
    /// The model when a request names none.
    pub default_model: String,
}

impl std::fmt::Debug for InstanceProvider {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("InstanceProvider")
            .field("base_url", &self.base_url)
            .field("default_model", &self.default_model)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    System,
    User,
    Assistant,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::System => "system",
            Self::User => "user",
            Self::Assistant => "assistant",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [Self::System, Self::User, Self::Assistant]
            .into_iter()
            .find(|role| role.as_str() == text)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ChatMessage {
    pub role: Role,
    pub content: String,
}

/// What a caller asks.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ChatRequest {
    /// Empty for the default provider.
    pub provider: String,
    /// Empty for the provider's default model.
    pub model: String,
    pub messages: Vec<ChatMessage>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub max_tokens: Option<u32>,
    pub stop: Vec<String>,
}

/// What is sent upstream: the request with its model settled.
#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamRequest<'a> {
    pub model: &'a str,
    pub request: &'a ChatRequest,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TokenUsage {
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
}

impl TokenUsage {
    pub fn total(self) -> u32 {
        self.prompt_tokens.saturating_add(self.completion_tokens)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    pub id: String,
    pub provider: String,
    pub model: String,
    pub content: String,
    pub finish_reason: String,
    pub usage: TokenUsage,
    pub created_at: DateTime<Utc>,
}

/// A piece of a streamed completion.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Chunk {
    pub id: String,
    pub provider: String,
    pub model: String,
    pub delta: String,
    /// Set on the last chunk.
    pub finish_reason: Option<String>,
    /// Set on the last chunk.
    pub usage: Option<TokenUsage>,
}

/// Why an upstream call failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpstreamFailure {
    /// The endpoint is not allowed (a private address).
    Refused(String),
    /// 401 or 403: the provider refused the key.
    Unauthorized(String),
    /// 400-class: the provider refused the request (its reason).
    Rejected(String),
    /// 429.
    RateLimited(String),
    /// 5xx, a timeout, a connection error, an answer that is not what the API says.
    Unavailable(String),
}

impl From<UpstreamFailure> for Error {
    fn from(failure: UpstreamFailure) -> Self {
        match failure {
            UpstreamFailure::Refused(why) => Error::new(
                ErrorKind::FailedPrecondition,
                "LLM_ENDPOINT_REFUSED",
                format!("the provider's address is not allowed: {why}"),
            ),
            UpstreamFailure::Unauthorized(why) => Error::new(
                ErrorKind::FailedPrecondition,
                "LLM_PROVIDER_REJECTED",
                format!(
                    "the provider refused the configured key ({why}); an admin can set a new one"
                ),
            ),
            UpstreamFailure::Rejected(why) => Error::invalid_argument(
                "LLM_REQUEST_REJECTED",
                format!("the provider refused the request: {why}"),
            ),
            UpstreamFailure::RateLimited(why) => Error::new(
                ErrorKind::ResourceExhausted,
                "LLM_PROVIDER_RATE_LIMITED",
                format!("the provider is limiting requests: {why}"),
            ),
            UpstreamFailure::Unavailable(why) => Error::new(
                ErrorKind::Unavailable,
                "LLM_PROVIDER_UNAVAILABLE",
                format!("the provider did not answer properly: {why}"),
            ),
        }
    }
}

pub type UpstreamResult<T> = std::result::Result<T, UpstreamFailure>;

/// An OpenAI-compatible chat completions API.
#[async_trait::async_trait]
pub trait LlmClient: Send + Sync {
    async fn complete(
        &self,
        endpoint: &Endpoint,
        request: UpstreamRequest<'_>,
    ) -> UpstreamResult<Completion>;
    /// The completion as chunks; the last carries the usage when the provider reports it.
    async fn stream(
        &self,
        endpoint: &Endpoint,
        request: UpstreamRequest<'_>,
    ) -> UpstreamResult<BoxStream<'static, UpstreamResult<Chunk>>>;
}

#[async_trait::async_trait]
pub trait LlmProviderStore: Send + Sync {
    /// Inserts or replaces the provider (and, when `is_default`, makes it the only default),
    /// with its sealed key and `events`, in one transaction.
    async fn save_llm_provider(
        &self,
        provider: &LlmProvider,
        sealed_key: &[u8],
        events: &[Event],
    ) -> Result<()>;
    /// A provider with its sealed key.
    async fn find_llm_provider(
        &self,
        organization_id: Uuid,
        name: &str,
    ) -> Result<Option<(LlmProvider, Vec<u8>)>>;
    /// The organization's providers, by name.
    async fn list_llm_providers(&self, organization_id: Uuid) -> Result<Vec<LlmProvider>>;
    /// Answers whether there was one.
    async fn delete_llm_provider(
        &self,
        organization_id: Uuid,
        name: &str,
        events: &[Event],
    ) -> Result<bool>;
}

/// What `LlmService` works through.
pub struct LlmPorts {
    pub store: Arc<dyn LlmProviderStore>,
    pub client: Arc<dyn LlmClient>,
    pub quotas: Arc<QuotaService>,
    pub keyring: Arc<dyn Keyring>,
    pub clock: Arc<dyn Clock>,
}

/// A provider as an admin sets it.
#[derive(Debug, Clone, Copy)]
pub struct ProviderSettings<'a> {
    pub name: &'a str,
    pub kind: &'a str,
    pub base_url: &'a str,
    /// Empty keeps the stored key.
    pub api_key: &'a str,
    pub api_version: &'a str,
    pub models: &'a [String],
    pub default_model: &'a str,
    pub is_default: bool,
}

pub struct LlmService {
    store: Arc<dyn LlmProviderStore>,
    client: Arc<dyn LlmClient>,
    quotas: Arc<QuotaService>,
    keyring: Arc<dyn Keyring>,
    clock: Arc<dyn Clock>,
    instance: Option<InstanceProvider>,
}

/// The name requests and answers give the instance's provider.
const INSTANCE_PROVIDER: &str = "default";

fn provider_missing() -> Error {
    Missing::LlmProvider.into()
}

/// A provider and model settled for a request.
struct Route {
    endpoint: Endpoint,
    provider: String,
    model: String,
}

impl LlmService {
    pub fn new(ports: LlmPorts, instance: Option<InstanceProvider>) -> Self {
        Self {
            store: ports.store,
            client: ports.client,
            quotas: ports.quotas,
            keyring: ports.keyring,
            clock: ports.clock,
            instance,
        }
    }

    pub async fn list_providers(&self, access: &Access) -> Result<Vec<LlmProvider>> {
        self.store.list_llm_providers(access.organization_id).await
    }

    /// Creates or replaces a provider.
    pub async fn set_provider(
        &self,
        access: &Access,
        settings: ProviderSettings<'_>,
    ) -> Result<LlmProvider> {
        let existing = self
            .store
            .find_llm_provider(access.organization_id, settings.name)
            .await?;
        let mut violations = Violations::default();
        let kind = ProviderKind::parse(settings.kind);
        if kind.is_none() {
            violations.push(FieldViolation::new(
                "kind",
                "INVALID_KIND",
                "must be openai or azure_openai",
            ));
        }
        let base_url = violations.check(http_url("base_url", settings.base_url));
        if kind == Some(ProviderKind::AzureOpenAi) && settings.api_version.trim().is_empty() {
            violations.push(FieldViolation::new(
                "api_version",
                "API_VERSION_REQUIRED",
                "Azure OpenAI needs its api-version (2024-10-21, say)",
            ));
        }
        let sealed_key = match (settings.api_key.trim(), &existing) {
            ("", Some((_, sealed))) => Some(sealed.clone()),
            ("", None) => {
                violations.push(FieldViolation::new(
                    "api_key",
                    "API_KEY_REQUIRED",
                    "a new provider needs its API key",
                ));
                None
            }
            (key, _) => Some(self.keyring.seal(KEY_PURPOSE, key.as_bytes())?),
        };
        let (Some(kind), Some(base_url), Some(sealed_key)) = (kind, base_url, sealed_key) else {
            return Err(violations.into_error());
        };
        violations.finish()?;
        if existing.is_none()
            && self
                .store
                .list_llm_providers(access.organization_id)
                .await?
                .len()
                >= MAX_PROVIDERS
        {
            return Err(Error::new(
                ErrorKind::ResourceExhausted,
                "TOO_MANY_LLM_PROVIDERS",
                format!("an organization has at most {MAX_PROVIDERS} providers; delete one first"),
            ));
        }
        let now = truncate_to_micros(self.clock.now());
        let mut models: Vec<String> = Vec::new();
        for model in settings.models.iter().map(|model| model.trim()) {
            if !model.is_empty() && !models.iter().any(|known| known == model) {
                models.push(model.to_owned());
            }
        }
        let provider = LlmProvider {
            organization_id: access.organization_id,
            name: settings.name.to_owned(),
            kind,
            base_url: base_url.trim_end_matches('/').to_owned(),
            api_version: settings.api_version.trim().to_owned(),
            models,
            default_model: settings.default_model.trim().to_owned(),
            is_default: settings.is_default,
            created_at: existing
                .as_ref()
                .map_or(now, |(provider, _)| provider.created_at),
            updated_at: now,
        };
        let event = Event::new(
            EventKind::LlmProviderSet,
            &access.origin(),
            self.clock.as_ref(),
            &LlmProviderData::from(&provider),
        );
        self.store
            .save_llm_provider(&provider, &sealed_key, &[event])
            .await?;
        Ok(provider)
    }

    pub async fn delete_provider(&self, access: &Access, name: &str) -> Result<()> {
        let (provider, _) = self
            .store
            .find_llm_provider(access.organization_id, name)
            .await?
            .ok_or_else(provider_missing)?;
        let event = Event::new(
            EventKind::LlmProviderDeleted,
            &access.origin(),
            self.clock.as_ref(),
            &LlmProviderData::from(&provider),
        );
        if self
            .store
            .delete_llm_provider(access.organization_id, name, &[event])
            .await?
        {
            Ok(())
        } else {
            Err(provider_missing())
        }
    }

    /// The provider and model that serve `request` in the caller's organization.
    async fn route(&self, access: &Access, request: &ChatRequest) -> Result<Route> {
        let organization = access.organization_id;
        let named = match request.provider.as_str() {
            "" => {
                let providers = self.store.list_llm_providers(organization).await?;
                let default = match providers.as_slice() {
                    [only] => Some(only),
                    several => several.iter().find(|provider| provider.is_default),
                };
                match default {
                    Some(provider) => Some(provider.name.clone()),
                    None if !providers.is_empty() => {
                        return Err(Error::invalid_argument(
                            "PROVIDER_REQUIRED",
                            "the organization has several providers and none is the default: name one",
                        ));
                    }
                    None => None,
                }
            }
            name => Some(name.to_owned()),
        };
        let (endpoint, provider, default_model, models) = match named {
            Some(name) => {
                let (provider, sealed) = self
                    .store
                    .find_llm_provider(organization, &name)
                    .await?
                    .ok_or_else(provider_missing)?;
                let key = self.keyring.open(KEY_PURPOSE, &sealed)?;
                let endpoint = Endpoint {
                    kind: provider.kind,
                    base_url: provider.base_url,
                    api_key: String::from_utf8(key).map_err(Error::internal)?,
                    api_version: provider.api_version,
                    guarded: true,
                };
                (endpoint, name, provider.default_model, provider.models)
            }
            None => {
                let instance = self.instance.as_ref().ok_or_else(|| {
                    Error::new(
                        ErrorKind::FailedPrecondition,
                        "NO_LLM_PROVIDER",
                        "no LLM provider is configured: an admin can add one \
                         (PUT /api/v1/organizations/{organization_id}/llm/providers/{name})",
                    )
                })?;
                let endpoint = Endpoint {
                    kind: ProviderKind::OpenAi,
                    base_url: instance.base_url.clone(),
                    api_key: instance.api_key.clone(),
                    api_version: String::new(),
                    guarded: false,
                };
                let name = INSTANCE_PROVIDER.to_owned();
                (endpoint, name, instance.default_model.clone(), Vec::new())
            }
        };
        let model = match request.model.trim() {
            "" => default_model,
            model => model.to_owned(),
        };
        if model.is_empty() {
            return Err(Error::invalid_fields(vec![FieldViolation::new(
                "model",
                "MODEL_REQUIRED",
                "name a model: the provider has no default model",
            )]));
        }
        if !models.is_empty() && !models.contains(&model) {
            return Err(Error::invalid_fields(vec![FieldViolation::new(
                "model",
                "MODEL_NOT_ALLOWED",
                format!("the provider offers {}", models.join(", ")),
            )]));
        }
        Ok(Route {
            endpoint,
            provider,
            model,
        })
    }

    /// A whole completion; its tokens count against the organization's quota.
    pub async fn complete(&self, access: &Access, request: &ChatRequest) -> Result<Completion> {
        let route = self.route(access, request).await?;
        self.quotas.check_llm_tokens(access).await?;
        let upstream = UpstreamRequest {
            model: &route.model,
            request,
        };
        let mut completion = self.client.complete(&route.endpoint, upstream).await?;
        self.quotas
            .count_llm_tokens(access, u64::from(completion.usage.total()))
            .await?;
        completion.provider = route.provider;
        Ok(completion)
    }

    /// A completion as it is written. Its prompt's tokens (estimated) count against the quota
    /// before the first chunk, so a caller who drops the stream early still pays for them; the
    /// rest when it ends, as the provider reports them (else estimated at four characters a
    /// token).
    pub async fn stream(
        self: &Arc<Self>,
        access: &Access,
        request: &ChatRequest,
    ) -> Result<impl Stream<Item = Result<Chunk>> + Send + 'static> {
        let route = self.route(access, request).await?;
        self.quotas.check_llm_tokens(access).await?;
        let upstream = UpstreamRequest {
            model: &route.model,
            request,
        };
        let chunks = self.client.stream(&route.endpoint, upstream).await?;
        let prompt_chars: usize = request
            .messages
            .iter()
            .map(|message| message.content.chars().count())
            .sum();
        let prepaid = estimate_tokens(prompt_chars);
        self.quotas
            .count_llm_tokens(access, u64::from(prepaid))
            .await?;
        let metering = Metering {
            service: self.clone(),
            access: access.clone(),
            provider: route.provider,
            prepaid,
            completion_chars: 0,
            reported: None,
            metered: false,
        };
        Ok(futures_util::stream::unfold(
            (chunks, metering),
            |(mut chunks, mut metering)| async move {
                if metering.metered {
                    return None;
                }
                match chunks.next().await {
                    Some(Ok(mut chunk)) => {
                        metering.completion_chars += chunk.delta.chars().count();
                        if chunk.usage.is_some() {
                            metering.reported = chunk.usage;
                        }
                        chunk.provider = metering.provider.clone();
                        Some((Ok(chunk), (chunks, metering)))
                    }
                    Some(Err(failure)) => {
                        let metered = metering.meter().await;
                        Some((metered.and(Err(failure.into())), (chunks, metering)))
                    }
                    None => match metering.meter().await {
                        Ok(()) => None,
                        Err(error) => Some((Err(error), (chunks, metering))),
                    },
                }
            },
        ))
    }
}

/// ~4 characters a token: OpenAI's rule of thumb for English, for providers that stream
/// without reporting usage.
fn estimate_tokens(chars: usize) -> u32 {
    u32::try_from(chars.div_ceil(4)).unwrap_or(u32::MAX)
}

/// Counts a stream's tokens beyond those prepaid, once, when it ends.
struct Metering {
    service: Arc<LlmService>,
    access: Access,
    provider: String,
    /// The prompt's estimated tokens, counted before the stream began.
    prepaid: u32,
    completion_chars: usize,
    reported: Option<TokenUsage>,
    metered: bool,
}

impl Metering {
    async fn meter(&mut self) -> Result<()> {
        self.metered = true;
        let rest = match self.reported {
            Some(usage) => usage.total().saturating_sub(self.prepaid),
            None => estimate_tokens(self.completion_chars),
        };
        self.service
            .quotas
            .count_llm_tokens(&self.access, u64::from(rest))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_estimated_at_four_characters() {
        assert_eq!(estimate_tokens(0), 0);
        assert_eq!(estimate_tokens(1), 1);
        assert_eq!(estimate_tokens(8), 2);
        assert_eq!(estimate_tokens(9), 3);
    }
}
