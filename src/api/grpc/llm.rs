//! `keel.llm.v1.LlmService`.

use super::{access, count_i32, timestamp};
use crate::api::pb::keel::llm::v1::llm_service_server::LlmService as LlmRpc;
use crate::api::pb::keel::llm::v1::*;
use crate::domain::Error;
use crate::domain::llm::{self, ChatRequest, LlmService, ProviderSettings, Role, TokenUsage};
use futures_util::stream::{Stream, StreamExt};
use std::pin::Pin;
use std::sync::Arc;
use tonic::{Request, Response, Status};

pub struct LlmApi {
    llm: Arc<LlmService>,
}

impl LlmApi {
    pub fn new(llm: Arc<LlmService>) -> Self {
        Self { llm }
    }
}

type Chunks = Pin<Box<dyn Stream<Item = Result<StreamChatCompletionResponse, Status>> + Send>>;

/// The request's fields, as the domain takes them; both completion RPCs carry the same.
macro_rules! chat_request {
    ($body:expr) => {{
        let body = $body;
        ChatRequest {
            provider: body.provider,
            model: body.model,
            messages: body
                .messages
                .into_iter()
                .map(|message| {
                    Ok(llm::ChatMessage {
                        // The contract's pattern admits these three only.
                        role: Role::parse(&message.role).ok_or_else(|| {
                            Error::invalid_argument(
                                "INVALID_ROLE",
                                "role: system, user or assistant",
                            )
                        })?,
                        content: message.content,
                    })
                })
                .collect::<Result<_, Error>>()?,
            temperature: body.temperature,
            top_p: body.top_p,
            max_tokens: body
                .max_tokens
                .and_then(|tokens| u32::try_from(tokens).ok()),
            stop: body.stop,
        }
    }};
}

fn usage_to_proto(usage: TokenUsage) -> crate::api::pb::keel::llm::v1::TokenUsage {
    crate::api::pb::keel::llm::v1::TokenUsage {
        prompt_tokens: count_i32(usage.prompt_tokens),
        completion_tokens: count_i32(usage.completion_tokens),
        total_tokens: count_i32(usage.total()),
    }
}

fn provider_to_proto(provider: llm::LlmProvider) -> LlmProvider {
    LlmProvider {
        name: provider.name,
        kind: provider.kind.as_str().to_owned(),
        base_url: provider.base_url,
        api_version: provider.api_version,
        models: provider.models,
        default_model: provider.default_model,
        is_default: provider.is_default,
        created_at: Some(timestamp(provider.created_at)),
        updated_at: Some(timestamp(provider.updated_at)),
    }
}

#[tonic::async_trait]
impl LlmRpc for LlmApi {
    async fn create_chat_completion(
        &self,
        request: Request<CreateChatCompletionRequest>,
    ) -> Result<Response<CreateChatCompletionResponse>, Status> {
        let access = access(&request)?;
        let body = request.into_inner();
        if body.stream {
            return Err(Error::invalid_argument(
                "USE_STREAMING",
                "stream: true is served by StreamChatCompletion (over REST, on this route as Server-Sent Events)",
            )
            .into());
        }
        let completion = self.llm.complete(&access, &chat_request!(body)).await?;
        Ok(Response::new(CreateChatCompletionResponse {
            completion: Some(ChatCompletion {
                id: completion.id,
                provider: completion.provider,
                model: completion.model,
                message: Some(ChatMessage {
                    role: Role::Assistant.as_str().to_owned(),
                    content: completion.content,
                }),
                finish_reason: completion.finish_reason,
                usage: Some(usage_to_proto(completion.usage)),
                created_at: Some(timestamp(completion.created_at)),
            }),
        }))
    }

    type StreamChatCompletionStream = Chunks;

    async fn stream_chat_completion(
        &self,
        request: Request<StreamChatCompletionRequest>,
    ) -> Result<Response<Chunks>, Status> {
        let access = access(&request)?;
        let chunks = self
            .llm
            .stream(&access, &chat_request!(request.into_inner()))
            .await?;
        Ok(Response::new(Box::pin(chunks.map(|chunk| {
            chunk
                .map(|chunk| StreamChatCompletionResponse {
                    id: chunk.id,
                    provider: chunk.provider,
                    model: chunk.model,
                    delta: chunk.delta,
                    finish_reason: chunk.finish_reason.unwrap_or_default(),
                    usage: chunk.usage.map(usage_to_proto),
                })
                .map_err(Status::from)
        }))))
    }

    async fn list_llm_providers(
        &self,
        request: Request<ListLlmProvidersRequest>,
    ) -> Result<Response<ListLlmProvidersResponse>, Status> {
        let access = access(&request)?;
        let providers = self.llm.list_providers(&access).await?;
        Ok(Response::new(ListLlmProvidersResponse {
            providers: providers.into_iter().map(provider_to_proto).collect(),
        }))
    }

    async fn set_llm_provider(
        &self,
        request: Request<SetLlmProviderRequest>,
    ) -> Result<Response<SetLlmProviderResponse>, Status> {
        let access = access(&request)?;
        let body = request.into_inner();
        let provider = self
            .llm
            .set_provider(
                &access,
                ProviderSettings {
                    name: &body.name,
                    kind: &body.kind,
                    base_url: &body.base_url,
                    api_key: &body.api_key,
                    api_version: &body.api_version,
                    models: &body.models,
                    default_model: &body.default_model,
                    is_default: body.is_default,
                },
            )
            .await?;
        Ok(Response::new(SetLlmProviderResponse {
            provider: Some(provider_to_proto(provider)),
        }))
    }

    async fn delete_llm_provider(
        &self,
        request: Request<DeleteLlmProviderRequest>,
    ) -> Result<Response<DeleteLlmProviderResponse>, Status> {
        let access = access(&request)?;
        self.llm
            .delete_provider(&access, &request.get_ref().name)
            .await?;
        Ok(Response::new(DeleteLlmProviderResponse {}))
    }
}
