//! `keel.realtime.v1.RealtimeService`: the hub's stream over gRPC.

use super::{id, json_to_struct, principal, timestamp};
use crate::api::pb::keel::realtime::v1::realtime_service_server::RealtimeService as RealtimeRpc;
use crate::api::pb::keel::realtime::v1::*;
use crate::domain::error::{Error, ErrorKind};
use crate::domain::realtime::{self, Channel, CloseReason, Hub, Outgoing};
use futures_util::stream::{self, Stream, StreamExt};
use std::pin::Pin;
use std::sync::Arc;
use tonic::{Request, Response, Status};

pub struct RealtimeApi {
    hub: Arc<Hub>,
}

impl RealtimeApi {
    pub fn new(hub: Arc<Hub>) -> Self {
        Self { hub }
    }
}

fn subscribed(subscribed: realtime::Subscribed) -> SubscribeResponse {
    SubscribeResponse {
        message: Some(subscribe_response::Message::Subscribed(Subscribed {
            channel: subscribed.channel.name(),
            recovered: subscribed.recovered,
        })),
    }
}

fn outgoing_to_proto(outgoing: Outgoing) -> SubscribeResponse {
    let message = match outgoing {
        Outgoing::Event { channel, event } => {
            let mut value = event.value();
            let object =
                |field: &str, value: &mut serde_json::Map<String, serde_json::Value>| match value
                    .remove(field)
                {
                    Some(serde_json::Value::Object(object)) => Some(json_to_struct(object)),
                    _ => None,
                };
            subscribe_response::Message::Event(RealtimeEvent {
                channel: channel.name(),
                id: event.id.to_string(),
                r#type: event.kind.name().to_owned(),
                occurred_at: Some(timestamp(event.occurred_at)),
                organization_id: event
                    .organization_id
                    .map(|id| id.to_string())
                    .unwrap_or_default(),
                actor: object("actor", &mut value),
                data: object("data", &mut value),
            })
        }
        Outgoing::Unsubscribed { channel, reason } => {
            subscribe_response::Message::Unsubscribed(Unsubscribed {
                channel: channel.name(),
                reason: reason.to_owned(),
            })
        }
    };
    SubscribeResponse {
        message: Some(message),
    }
}

fn closed(reason: CloseReason) -> Status {
    let kind = match reason {
        CloseReason::CredentialRevoked => ErrorKind::Unauthenticated,
        CloseReason::SlowConsumer => ErrorKind::ResourceExhausted,
        CloseReason::ShuttingDown => ErrorKind::Unavailable,
    };
    Error::new(kind, reason.code(), reason.message()).into()
}

type Messages = Pin<Box<dyn Stream<Item = Result<SubscribeResponse, Status>> + Send>>;

#[tonic::async_trait]
impl RealtimeRpc for RealtimeApi {
    type SubscribeStream = Messages;

    async fn subscribe(
        &self,
        request: Request<SubscribeRequest>,
    ) -> Result<Response<Messages>, Status> {
        let principal = principal(&request)?;
        let body = request.into_inner();
        let channels: Vec<Channel> = body
            .channels
            .iter()
            .map(|channel| Channel::parse(channel))
            .collect::<Result<_, _>>()?;
        let since = match body.last_event_id.as_str() {
            "" => None,
            raw => Some(id("last_event_id", raw)?),
        };
        let mut connection = self.hub.connect(principal)?;
        let mut opening = Vec::new();
        for channel in channels {
            opening.push(Ok(subscribed(connection.subscribe(channel, since).await?)));
        }
        let live = stream::unfold(Some(connection), |connection| async move {
            let mut connection = connection?;
            match connection.next().await {
                Some(outgoing) => Some((Ok(outgoing_to_proto(outgoing)), Some(connection))),
                None => {
                    let reason = connection
                        .close_reason()
                        .unwrap_or(CloseReason::ShuttingDown);
                    Some((Err(closed(reason)), None))
                }
            }
        });
        Ok(Response::new(Box::pin(stream::iter(opening).chain(live))))
    }
}
