//! Tenant isolation. Organization A is set up with a member, a viewer, a team, a custom role,
//! an invitation and an organization-bound API key. Then every organization-scoped RPC of the
//! contract (the test fails if a new one is not listed here) is tried against A's resources,
//! on gRPC and on REST:
//! - by the owner of organization B, who must get NOT_FOUND (existence does not leak), also
//!   when addressing A's resources through B's own organization id, and with B's bound key;
//! - by A's viewer, for every RPC whose permission a viewer lacks: PERMISSION_DENIED.
//!
//! A's realtime channel is tried the same way on its three doors (WebSocket, SSE, gRPC).
//!
//! Afterwards everything A owns reads exactly as before.

use crate::backend_tests;
use crate::files::upload;
use crate::harness::{Backend, TestApp, Tokens, with_token};
use crate::invitations::verified_user;
use crate::organizations::{add_member, create_organization, user};
use crate::resumable::{organization_metadata, tus_status};
use bytes::{Buf, BufMut};
use keel::api::contract::{BodyRule, Contract, HttpBinding, Rpc};
use keel::api::pb::keel::file::v1::DownloadFileRequest;
use keel::api::pb::keel::file::v1::file_service_client::FileServiceClient;
use keel::api::pb::keel::realtime::v1::SubscribeRequest;
use keel::api::pb::keel::realtime::v1::realtime_service_client::RealtimeServiceClient;
use keel::api::rest::path_template::Segment;
use keel::domain::tenancy::permissions::SystemRole;
use prost::Message;
use prost_reflect::DynamicMessage;
use reqwest::Method;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use tonic::Code;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::transport::Channel;

backend_tests!(no_tenant_reaches_another);

/// Request templates per RPC; `{org}`, `{team}`, `{role}`, `{invitation}`, `{owner}` and
/// `{attacker}` are replaced by the ids of the scenario.
fn templates() -> BTreeMap<&'static str, Value> {
    let org = json!("{org}");
    let team = json!("{team}");
    BTreeMap::from([
        (
            "keel.organization.v1.OrganizationService/GetOrganization",
            json!({ "organization_id": org }),
        ),
        (
            "keel.organization.v1.OrganizationService/UpdateOrganization",
            json!({ "organization_id": org, "name": "Pwned" }),
        ),
        (
            "keel.organization.v1.OrganizationService/DeleteOrganization",
            json!({ "organization_id": org }),
        ),
        (
            "keel.organization.v1.OrganizationService/GetIpRestrictions",
            json!({ "organization_id": org }),
        ),
        (
            "keel.organization.v1.OrganizationService/SetIpRestrictions",
            json!({ "organization_id": org, "deny": ["0.0.0.0/0", "::/0"] }),
        ),
        (
            "keel.organization.v1.OrganizationService/TransferOwnership",
            json!({ "organization_id": org, "user_id": "{attacker}" }),
        ),
        (
            "keel.organization.v1.OrganizationService/ListMembers",
            json!({ "organization_id": org }),
        ),
        (
            "keel.organization.v1.OrganizationService/GetMember",
            json!({ "organization_id": org, "user_id": "{owner}" }),
        ),
        (
            "keel.organization.v1.OrganizationService/AddMember",
            json!({ "organization_id": org, "user_id": "{attacker}", "roles": ["owner"] }),
        ),
        (
            "keel.organization.v1.OrganizationService/UpdateMember",
            json!({ "organization_id": org, "user_id": "{owner}", "roles": ["viewer"] }),
        ),
        (
            "keel.organization.v1.OrganizationService/RemoveMember",
            json!({ "organization_id": org, "user_id": "{owner}" }),
        ),
        (
            "keel.organization.v1.OrganizationService/LeaveOrganization",
            json!({ "organization_id": org }),
        ),
        (
            "keel.webhook.v1.WebhookService/CreateWebhook",
            json!({ "organization_id": org, "url": "http://127.0.0.1:9/evil", "events": ["*"] }),
        ),
        (
            "keel.webhook.v1.WebhookService/ListWebhooks",
            json!({ "organization_id": org }),
        ),
        (
            "keel.webhook.v1.WebhookService/GetWebhook",
            json!({ "webhook_id": "{webhook}" }),
        ),
        (
            "keel.webhook.v1.WebhookService/UpdateWebhook",
            json!({ "webhook_id": "{webhook}", "url": "http://127.0.0.1:9/evil" }),
        ),
        (
            "keel.webhook.v1.WebhookService/DeleteWebhook",
            json!({ "webhook_id": "{webhook}" }),
        ),
        (
            "keel.webhook.v1.WebhookService/TestWebhook",
            json!({ "webhook_id": "{webhook}" }),
        ),
        (
            "keel.webhook.v1.WebhookService/ListWebhookDeliveries",
            json!({ "webhook_id": "{webhook}" }),
        ),
        (
            "keel.webhook.v1.WebhookService/ListWebhookDeliveryAttempts",
            json!({ "webhook_id": "{webhook}", "delivery_id": "{webhook}" }),
        ),
        (
            "keel.webhook.v1.WebhookService/ReplayWebhookDelivery",
            json!({ "webhook_id": "{webhook}", "delivery_id": "{webhook}" }),
        ),
        (
            "keel.webhook.v1.WebhookService/RecoverWebhookDeliveries",
            json!({ "webhook_id": "{webhook}", "since": "2020-01-01T00:00:00Z" }),
        ),
        (
            "keel.webhook.v1.WebhookService/RotateWebhookSecret",
            json!({ "webhook_id": "{webhook}" }),
        ),
        (
            "keel.flag.v1.FeatureFlagService/ListFeatureFlagOverrides",
            json!({ "organization_id": org }),
        ),
        (
            "keel.flag.v1.FeatureFlagService/SetFeatureFlagOverride",
            json!({ "organization_id": org, "flag_name": "isolation", "is_enabled": false }),
        ),
        (
            "keel.flag.v1.FeatureFlagService/DeleteFeatureFlagOverride",
            json!({ "organization_id": org, "flag_name": "isolation" }),
        ),
        (
            "keel.integration.v1.IntegrationService/CreateIntegration",
            json!({ "organization_id": org, "name": "evil", "integration_type": "evil" }),
        ),
        (
            "keel.integration.v1.IntegrationService/ListIntegrations",
            json!({ "organization_id": org }),
        ),
        (
            "keel.integration.v1.IntegrationService/GetIntegration",
            json!({ "integration_id": "{integration}" }),
        ),
        (
            "keel.integration.v1.IntegrationService/UpdateIntegration",
            json!({ "integration_id": "{integration}", "is_active": false }),
        ),
        (
            "keel.integration.v1.IntegrationService/DeleteIntegration",
            json!({ "integration_id": "{integration}" }),
        ),
        (
            "keel.integration.v1.IntegrationService/RegenerateIntegrationSecret",
            json!({ "integration_id": "{integration}" }),
        ),
        (
            "keel.integration.v1.IntegrationService/ListIntegrationEvents",
            json!({ "integration_id": "{integration}" }),
        ),
        (
            "keel.llm.v1.LlmService/CreateChatCompletion",
            json!({ "organization_id": org, "messages": [{ "role": "user", "content": "hi" }] }),
        ),
        (
            "keel.llm.v1.LlmService/StreamChatCompletion",
            json!({ "organization_id": org, "messages": [{ "role": "user", "content": "hi" }] }),
        ),
        (
            "keel.llm.v1.LlmService/ListLlmProviders",
            json!({ "organization_id": org }),
        ),
        (
            "keel.llm.v1.LlmService/SetLlmProvider",
            json!({ "organization_id": org, "name": "evil", "kind": "openai", "base_url": "http://127.0.0.1:9/v1", "api_key": "sk-evil" }),
        ),
        (
            "keel.llm.v1.LlmService/DeleteLlmProvider",
            json!({ "organization_id": org, "name": "main" }),
        ),
        (
            "keel.audit.v1.AuditLogService/ListOrganizationAuditLogs",
            json!({ "organization_id": org }),
        ),
        (
            "keel.role.v1.RoleService/ListRoles",
            json!({ "organization_id": org }),
        ),
        (
            "keel.role.v1.RoleService/GetRole",
            json!({ "organization_id": org, "role": "{role}" }),
        ),
        (
            "keel.role.v1.RoleService/CreateRole",
            json!({ "organization_id": org, "name": "evil", "permissions": ["member:read"] }),
        ),
        (
            "keel.role.v1.RoleService/UpdateRole",
            json!({ "organization_id": org, "role": "{role}", "name": "evil" }),
        ),
        (
            "keel.role.v1.RoleService/DeleteRole",
            json!({ "organization_id": org, "role": "{role}" }),
        ),
        (
            "keel.role.v1.RoleService/AddRolePermission",
            json!({ "organization_id": org, "role": "{role}", "permission": "member:delete" }),
        ),
        (
            "keel.role.v1.RoleService/RemoveRolePermission",
            json!({ "organization_id": org, "role": "{role}", "permission": "member:read" }),
        ),
        (
            "keel.invitation.v1.InvitationService/CreateInvitation",
            json!({ "organization_id": org, "email": "intruder@example.com" }),
        ),
        (
            "keel.invitation.v1.InvitationService/ListInvitations",
            json!({ "organization_id": org }),
        ),
        (
            "keel.invitation.v1.InvitationService/GetInvitation",
            json!({ "organization_id": org, "invitation_id": "{invitation}" }),
        ),
        (
            "keel.invitation.v1.InvitationService/ResendInvitation",
            json!({ "organization_id": org, "invitation_id": "{invitation}" }),
        ),
        (
            "keel.invitation.v1.InvitationService/RevokeInvitation",
            json!({ "organization_id": org, "invitation_id": "{invitation}" }),
        ),
        (
            "keel.team.v1.TeamService/CreateTeam",
            json!({ "organization_id": org, "name": "Evil", "slug": "evil" }),
        ),
        (
            "keel.team.v1.TeamService/ListTeams",
            json!({ "organization_id": org }),
        ),
        (
            "keel.team.v1.TeamService/GetTeam",
            json!({ "team_id": team }),
        ),
        (
            "keel.team.v1.TeamService/UpdateTeam",
            json!({ "team_id": team, "name": "Pwned" }),
        ),
        (
            "keel.team.v1.TeamService/DeleteTeam",
            json!({ "team_id": team }),
        ),
        (
            "keel.team.v1.TeamService/ListTeamMembers",
            json!({ "team_id": team }),
        ),
        (
            "keel.team.v1.TeamService/AddTeamMember",
            json!({ "team_id": team, "user_id": "{attacker}", "roles": ["owner"] }),
        ),
        (
            "keel.team.v1.TeamService/UpdateTeamMember",
            json!({ "team_id": team, "user_id": "{owner}", "roles": [] }),
        ),
        (
            "keel.team.v1.TeamService/RemoveTeamMember",
            json!({ "team_id": team, "user_id": "{owner}" }),
        ),
        (
            "keel.quota.v1.QuotaService/GetQuotaStatus",
            json!({ "organization_id": org }),
        ),
        (
            "keel.quota.v1.QuotaService/ListUsageLogs",
            json!({ "organization_id": org }),
        ),
        (
            "keel.sso.v1.SsoService/GetSsoConnection",
            json!({ "organization_id": org }),
        ),
        (
            "keel.sso.v1.SsoService/SetSsoConnection",
            json!({ "organization_id": org, "issuer": "https://evil.example", "client_id": "x", "client_secret": "y", "enforce": true }),
        ),
        (
            "keel.sso.v1.SsoService/DeleteSsoConnection",
            json!({ "organization_id": org }),
        ),
        (
            "keel.sso.v1.SsoService/AddSsoDomain",
            json!({ "organization_id": org, "domain": "evil.example" }),
        ),
        (
            "keel.sso.v1.SsoService/ListSsoDomains",
            json!({ "organization_id": org }),
        ),
        (
            "keel.sso.v1.SsoService/VerifySsoDomain",
            json!({ "organization_id": org, "domain": "victim.example" }),
        ),
        (
            "keel.sso.v1.SsoService/RemoveSsoDomain",
            json!({ "organization_id": org, "domain": "victim.example" }),
        ),
    ])
}

fn fill(template: &Value, ids: &BTreeMap<&str, String>) -> Value {
    let mut text = template.to_string();
    for (name, id) in ids {
        text = text.replace(&format!("{{{name}}}"), id);
    }
    serde_json::from_str(&text).unwrap()
}

/// Passes encoded messages through unchanged, so any RPC can be called from its descriptor.
#[derive(Clone, Default)]
struct RawCodec;

struct RawCoder;

impl Encoder for RawCoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawCoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, tonic::Status> {
        let mut bytes = vec![0; src.remaining()];
        src.copy_to_slice(&mut bytes);
        Ok(Some(bytes))
    }
}

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCoder;
    type Decoder = RawCoder;

    fn encoder(&mut self) -> RawCoder {
        RawCoder
    }

    fn decoder(&mut self) -> RawCoder {
        RawCoder
    }
}

enum Credential<'a> {
    Token(&'a Tokens),
    Key(&'a str),
}

async fn call_grpc(
    channel: &Channel,
    rpc: &Rpc,
    body: &Value,
    credential: &Credential<'_>,
) -> Code {
    let message = DynamicMessage::deserialize(rpc.descriptor.input(), body.clone())
        .unwrap_or_else(|error| panic!("{}: {error}", rpc.grpc_path));
    let mut request = match credential {
        Credential::Token(tokens) => with_token(message.encode_to_vec(), &tokens.access),
        Credential::Key(key) => {
            let mut request = tonic::Request::new(message.encode_to_vec());
            request
                .metadata_mut()
                .insert("x-api-key", key.parse().unwrap());
            request
        }
    };
    request.set_timeout(std::time::Duration::from_secs(10));
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready().await.unwrap();
    let path = rpc.grpc_path.parse().unwrap();
    match grpc.unary(request, path, RawCodec).await {
        Ok(_) => Code::Ok,
        Err(status) => status.code(),
    }
}

/// The REST status of every route of the RPC (its aliases too), which must all agree; `None`
/// for an RPC without routes (a stream served over REST by its own door).
async fn call_rest(
    app: &TestApp,
    rpc: &Rpc,
    body: &Value,
    credential: &Credential<'_>,
) -> Option<u16> {
    let mut statuses = Vec::new();
    for binding in &rpc.bindings {
        statuses.push((
            binding.template.text.clone(),
            call_route(app, binding, body, credential).await,
        ));
    }
    let first = statuses.first()?.1;
    assert!(
        statuses.iter().all(|(_, status)| *status == first),
        "{}: {statuses:?}",
        rpc.grpc_path
    );
    Some(first)
}

async fn call_route(
    app: &TestApp,
    binding: &HttpBinding,
    body: &Value,
    credential: &Credential<'_>,
) -> u16 {
    let mut fields = body.as_object().unwrap().clone();
    // A route that names its resource by another id alone (the original's
    // `/api/v1/invitations/{invitation_id}`) is called without the organization.
    let variables: Vec<String> = binding.template.variables().collect();
    if !variables.is_empty() && !variables.iter().any(|name| name == "organization_id") {
        fields.remove("organization_id");
    }
    let mut path = String::new();
    for segment in &binding.template.segments {
        path.push('/');
        match segment {
            Segment::Literal(literal) | Segment::Fixed { literal, .. } => path.push_str(literal),
            Segment::Variable(names) => {
                let value = fields.remove(&names[0]).unwrap();
                path.push_str(value.as_str().unwrap());
            }
        }
    }
    let method = Method::from_bytes(binding.method.as_str().as_bytes()).unwrap();
    let mut request = app.http.request(method, app.url(&path));
    request = match binding.body {
        BodyRule::Whole => request.json(&fields),
        _ => {
            let query: Vec<(String, String)> = fields
                .iter()
                .map(|(key, value)| {
                    (
                        key.clone(),
                        value
                            .as_str()
                            .map_or_else(|| value.to_string(), str::to_owned),
                    )
                })
                .collect();
            request.query(&query)
        }
    };
    request = match credential {
        Credential::Token(tokens) => request.bearer_auth(&tokens.access),
        Credential::Key(key) => request.header("x-api-key", *key),
    };
    request.send().await.unwrap().status().as_u16()
}

/// Everything organization A owns, as its owner reads it.
async fn snapshot(app: &TestApp, owner: &Tokens, ids: &BTreeMap<&str, String>) -> Value {
    let org = &ids["org"];
    let team = &ids["team"];
    let mut state = serde_json::Map::new();
    for path in [
        format!("/api/v1/organizations/{org}"),
        format!("/api/v1/organizations/{org}/members"),
        format!("/api/v1/organizations/{org}/roles"),
        format!("/api/v1/organizations/{org}/invitations"),
        format!("/api/v1/organizations/{org}/teams"),
        format!("/api/v1/teams/{team}/members"),
        format!("/api/v1/webhooks?organization_id={org}"),
        format!("/api/v1/integrations?organization_id={org}"),
        format!("/api/v1/organizations/{org}/llm/providers"),
        format!("/api/v1/organizations/{org}/feature-flags"),
        format!("/api/v1/organizations/{org}/sso"),
        format!("/api/v1/organizations/{org}/sso/domains"),
        format!("/api/v1/organizations/{org}/ip-restrictions"),
        "/api/v1/api-keys".to_owned(),
    ] {
        let (status, body) = app.rest(Method::GET, &path, &owner.access, None).await;
        assert_eq!(status, 200, "{path}");
        state.insert(path, body);
    }
    let (_, quota) = app
        .rest(
            Method::GET,
            &format!("/api/v1/quota/status?organization_id={org}"),
            &owner.access,
            None,
        )
        .await;
    state.insert("limits".into(), quota["limits"].clone());
    Value::Object(state)
}

async fn no_tenant_reaches_another(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (alice_id, alice) = verified_user(&app, "alice@example.com").await;
    let (vic_id, vic) = user(&app, "vic@example.com").await;
    let (mallory_id, mallory) = verified_user(&app, "mallory@example.com").await;
    let org_a = create_organization(&app, &alice.access, "victim").await;
    let org_b = create_organization(&app, &mallory.access, "attacker").await;
    add_member(&app, &alice.access, &org_a, &vic_id, json!(["viewer"])).await;

    let (_, team) = app
        .rest(
            Method::POST,
            "/api/v1/teams",
            &alice.access,
            Some(json!({ "organization_id": org_a, "name": "Core", "slug": "core" })),
        )
        .await;
    let team_a = team["id"].as_str().unwrap().to_owned();
    app.rest(
        Method::POST,
        &format!("/api/v1/teams/{team_a}/members"),
        &alice.access,
        Some(json!({ "user_id": alice_id, "roles": ["admin"] })),
    )
    .await;
    let (_, role) = app
        .rest(
            Method::POST,
            &format!("/api/v1/organizations/{org_a}/roles"),
            &alice.access,
            Some(json!({ "name": "auditor", "permissions": ["member:read"] })),
        )
        .await;
    let role_a = role["id"].as_str().unwrap().to_owned();
    let (_, invitation) = app
        .rest(
            Method::POST,
            &format!("/api/v1/organizations/{org_a}/invitations"),
            &alice.access,
            Some(json!({ "email": "mallory@example.com" })),
        )
        .await;
    let invitation_a = invitation["id"].as_str().unwrap().to_owned();
    let (_, key) = app
        .rest(
            Method::POST,
            "/api/v1/api-keys",
            &alice.access,
            Some(json!({ "name": "a", "scopes": ["organization:read"], "organization_id": org_a })),
        )
        .await;
    let key_a_id = key["api_key"]["id"].as_str().unwrap().to_owned();
    let (status, shared_file) = upload(
        &app,
        &alice.access,
        &[("organization_id", &org_a)],
        "a.txt",
        "text/plain",
        b"A".to_vec(),
    )
    .await;
    assert_eq!(status, 201, "{shared_file}");
    let (status, own_file) = upload(
        &app,
        &alice.access,
        &[],
        "b.txt",
        "text/plain",
        b"B".to_vec(),
    )
    .await;
    assert_eq!(status, 201, "{own_file}");
    let files_a = [
        shared_file["id"].as_str().unwrap().to_owned(),
        own_file["id"].as_str().unwrap().to_owned(),
    ];
    let (status, connection) = app
        .rest(
            Method::PUT,
            &format!("/api/v1/organizations/{org_a}/sso"),
            &alice.access,
            Some(json!({ "issuer": "https://sso.victim.example", "client_id": "victim", "client_secret": "s" })),
        )
        .await;
    assert_eq!(status, 200, "{connection}");
    let (status, domain) = app
        .rest(
            Method::POST,
            &format!("/api/v1/organizations/{org_a}/sso/domains"),
            &alice.access,
            Some(json!({ "domain": "victim.example" })),
        )
        .await;
    assert_eq!(status, 201, "{domain}");
    let (status, integration) = app
        .rest(
            Method::POST,
            "/api/v1/integrations",
            &alice.access,
            Some(json!({ "organization_id": org_a, "name": "CRM", "integration_type": "crm" })),
        )
        .await;
    assert_eq!(status, 201, "{integration}");
    let integration_a = integration["integration"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, provider) = app
        .rest(
            Method::PUT,
            &format!("/api/v1/organizations/{org_a}/llm/providers/main"),
            &alice.access,
            Some(
                json!({ "kind": "openai", "base_url": "http://127.0.0.1:9/v1", "api_key": "sk-a" }),
            ),
        )
        .await;
    assert_eq!(status, 200, "{provider}");
    // Last, so that no event of the setup is delivered (to a port that discards it anyway).
    let (status, webhook) = app
        .rest(
            Method::POST,
            "/api/v1/webhooks",
            &alice.access,
            Some(json!({ "organization_id": org_a, "url": "http://127.0.0.1:9/hook", "events": ["*"] })),
        )
        .await;
    assert_eq!(status, 201, "{webhook}");
    let webhook_a = webhook["webhook"]["id"].as_str().unwrap().to_owned();
    let (_, key) = app
        .rest(Method::POST, "/api/v1/api-keys", &mallory.access, Some(json!({ "name": "b", "scopes": ["organization:read", "member:read", "team:read", "role:read", "invitation:read", "quota:read"], "organization_id": org_b })))
        .await;
    let mallory_key = key["key"].as_str().unwrap().to_owned();

    let victim_ids = BTreeMap::from([
        ("org", org_a.clone()),
        ("team", team_a.clone()),
        ("role", role_a.clone()),
        ("invitation", invitation_a.clone()),
        ("webhook", webhook_a.clone()),
        ("integration", integration_a.clone()),
        ("owner", alice_id.clone()),
        ("attacker", mallory_id.clone()),
    ]);
    let before = snapshot(&app, &alice, &victim_ids).await;

    let contract = Contract::load().unwrap();
    let channel = app.channel().await;
    let templates = templates();
    let viewer_permissions = SystemRole::Viewer.permissions();
    let mut tried = 0;
    for rpc in contract.rpcs.iter().filter(|rpc| rpc.scope_field.is_some()) {
        let name = rpc.grpc_path.trim_start_matches('/');
        let template = templates.get(name).unwrap_or_else(|| {
            panic!("{name} is organization-scoped but has no isolation template")
        });
        let victim = fill(template, &victim_ids);

        // The other tenant's owner, by token and by their organization's key: not found.
        for credential in [Credential::Token(&mallory), Credential::Key(&mallory_key)] {
            assert_eq!(
                call_grpc(&channel, rpc, &victim, &credential).await,
                Code::NotFound,
                "gRPC {name}"
            );
            if let Some(status) = call_rest(&app, rpc, &victim, &credential).await {
                assert_eq!(status, 404, "REST {name}");
            }
        }
        // A's roles, invitations and members addressed through B's own organization id:
        // every query filters by the organization, so they are not found there.
        let text = template.to_string();
        if template.get("organization_id").is_some()
            && [
                "{role}",
                "{invitation}",
                "{owner}",
                "{webhook}",
                "{integration}",
            ]
            .iter()
            .any(|id| text.contains(id))
        {
            let mut confused = victim.clone();
            confused["organization_id"] = json!(org_b);
            let owner_b = Credential::Token(&mallory);
            assert_eq!(
                call_grpc(&channel, rpc, &confused, &owner_b).await,
                Code::NotFound,
                "gRPC {name} through B"
            );
            if let Some(status) = call_rest(&app, rpc, &confused, &owner_b).await {
                assert_eq!(status, 404, "REST {name} through B");
            }
        }
        // A's viewer, for everything beyond reading.
        let permission = match &rpc.auth {
            keel::api::contract::AuthRule::Permission(permission) => permission.clone(),
            other => panic!("{name} has rule {other:?}"),
        };
        if !viewer_permissions.contains(&permission) {
            let credential = Credential::Token(&vic);
            assert_eq!(
                call_grpc(&channel, rpc, &victim, &credential).await,
                Code::PermissionDenied,
                "gRPC {name} by a viewer"
            );
            if let Some(status) = call_rest(&app, rpc, &victim, &credential).await {
                assert_eq!(status, 403, "REST {name} by a viewer");
            }
        }
        tried += 1;
    }
    assert_eq!(tried, templates.len(), "every template names a scoped RPC");

    // Account-level RPCs that take another user's ids.
    let (status, _) = app
        .rest(
            Method::GET,
            &format!("/api/v1/users/{alice_id}"),
            &mallory.access,
            None,
        )
        .await;
    assert_eq!(status, 404);
    let (status, _) = app
        .rest(
            Method::GET,
            &format!("/api/v1/api-keys/{key_a_id}"),
            &mallory.access,
            None,
        )
        .await;
    assert_eq!(status, 404);
    let (status, _) = app
        .rest(
            Method::DELETE,
            &format!("/api/v1/api-keys/{key_a_id}"),
            &mallory.access,
            None,
        )
        .await;
    assert_eq!(status, 404);

    // A's realtime channel, on the three doors: not found for B, denied to A's viewer.
    let org_channel = format!("organization:{org_a}");
    for credential in [Credential::Token(&mallory), Credential::Key(&mallory_key)] {
        assert_eq!(
            subscribe_everywhere(&app, &channel, &org_channel, &credential).await,
            ("ORGANIZATION_NOT_FOUND".to_owned(), 404, Code::NotFound)
        );
    }
    assert_eq!(
        subscribe_everywhere(&app, &channel, &org_channel, &Credential::Token(&vic)).await,
        ("PERMISSION_DENIED".to_owned(), 403, Code::PermissionDenied)
    );

    let tenants = Tenants {
        alice: &alice,
        org_a: &org_a,
        mallory: &mallory,
        mallory_key: &mallory_key,
        vic: &vic,
    };
    files_stay_with_their_owners(&app, &tenants, &files_a).await;

    assert_eq!(
        snapshot(&app, &alice, &victim_ids).await,
        before,
        "organization A changed"
    );
}

struct Tenants<'a> {
    alice: &'a Tokens,
    org_a: &'a str,
    mallory: &'a Tokens,
    mallory_key: &'a str,
    vic: &'a Tokens,
}

/// A's files (`[the organization's, Alice's own]`) on every file door: B's owner and B's key
/// find neither; A's viewer reads the organization's but may neither delete it nor add to it,
/// and never sees Alice's own.
const UPLOADS: &str = "/api/v1/files/uploads";

async fn files_stay_with_their_owners(app: &TestApp, tenants: &Tenants<'_>, files: &[String; 2]) {
    let Tenants {
        alice,
        org_a,
        mallory,
        mallory_key,
        vic,
    } = tenants;
    let organization = [("organization_id", *org_a)];
    let ids = [files[0].as_str(), files[1].as_str()];
    let channel = app.channel().await;
    let outsiders = [mallory.access.as_str(), *mallory_key];
    for (file_id, insider_reads) in [(ids[0], true), (ids[1], false)] {
        for path in [
            format!("/api/v1/files/{file_id}"),
            format!("/api/v1/files/{file_id}/download"),
        ] {
            for token in outsiders {
                assert_eq!(
                    app.rest(Method::GET, &path, token, None).await.0,
                    404,
                    "{path}"
                );
            }
            let expected = if insider_reads { 200 } else { 404 };
            assert_eq!(
                app.rest(Method::GET, &path, &vic.access, None).await.0,
                expected,
                "{path}"
            );
        }
        let path = format!("/api/v1/files/{file_id}");
        for token in outsiders {
            assert_eq!(
                app.rest(Method::DELETE, &path, token, None).await.0,
                404,
                "{path}"
            );
        }
        let expected = if insider_reads { 403 } else { 404 };
        assert_eq!(
            app.rest(Method::DELETE, &path, &vic.access, None).await.0,
            expected
        );
        for token in outsiders {
            let mut client = FileServiceClient::new(channel.clone());
            let request = with_token(
                DownloadFileRequest {
                    file_id: file_id.to_owned(),
                },
                token,
            );
            let refused = client.download_file(request).await.map(|_| ()).unwrap_err();
            assert_eq!(refused.code(), Code::NotFound);
        }
    }
    let listing = format!("/api/v1/files?organization_id={org_a}");
    for token in outsiders {
        assert_eq!(app.rest(Method::GET, &listing, token, None).await.0, 404);
        let (status, _) = upload(
            app,
            token,
            &organization,
            "x.txt",
            "text/plain",
            b"X".to_vec(),
        )
        .await;
        assert_eq!(status, 404);
    }
    // Mallory's own listing holds nothing of A's (her key, bound to B, reaches no personal
    // files at all).
    let (_, listed) = app
        .rest(Method::GET, "/api/v1/files", &mallory.access, None)
        .await;
    assert_eq!(listed["files"], json!([]));
    let (status, _) = app
        .rest(Method::GET, "/api/v1/files", mallory_key, None)
        .await;
    assert_eq!(status, 403);
    let (status, _) = upload(
        app,
        &vic.access,
        &organization,
        "x.txt",
        "text/plain",
        b"X".to_vec(),
    )
    .await;
    assert_eq!(status, 403);
    let (_, listed) = app.rest(Method::GET, &listing, &alice.access, None).await;
    assert_eq!(listed["files"].as_array().unwrap().len(), 1, "{listed}");

    // Resumable uploads: none into A from outside (nor by A's viewer), and A's own unreached.
    let into_a = organization_metadata(org_a);
    let creation = [("upload-length", "1"), ("upload-metadata", into_a.as_str())];
    for (token, expected) in [(outsiders[0], 404), (outsiders[1], 404), (&vic.access, 403)] {
        let status = tus_status(app, Method::POST, UPLOADS, token, &creation).await;
        assert_eq!(status, expected);
    }
    let path = crate::resumable::create(app, &alice.access, 1, &[("organization_id", org_a)]).await;
    let append = [
        ("upload-offset", "0"),
        ("content-type", "application/offset+octet-stream"),
    ];
    for token in [outsiders[0], outsiders[1], vic.access.as_str()] {
        for (method, headers) in [
            (Method::HEAD, &[][..]),
            (Method::PATCH, &append[..]),
            (Method::DELETE, &[][..]),
        ] {
            let status = tus_status(app, method.clone(), &path, token, headers).await;
            assert_eq!(status, 404, "{method} {path}");
        }
    }
    let status = tus_status(app, Method::HEAD, &path, &alice.access, &[]).await;
    assert_eq!(status, 200);
}

/// How subscribing to `channel` is answered over WebSocket (the error code), Server-Sent
/// Events (the status) and gRPC (the code).
async fn subscribe_everywhere(
    app: &TestApp,
    channel: &Channel,
    realtime_channel: &str,
    credential: &Credential<'_>,
) -> (String, u16, Code) {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let (header, value) = match credential {
        Credential::Token(tokens) => ("authorization", format!("Bearer {}", tokens.access)),
        Credential::Key(key) => ("x-api-key", (*key).to_owned()),
    };
    let url = format!("{}/api/v1/ws", app.base_url.replacen("http://", "ws://", 1));
    let mut request = url.into_client_request().unwrap();
    request.headers_mut().insert(header, value.parse().unwrap());
    let (mut socket, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    let subscribe = json!({ "type": "subscribe", "channel": realtime_channel });
    socket
        .send(Message::Text(subscribe.to_string().into()))
        .await
        .unwrap();
    let mut websocket = String::new();
    while let Some(Ok(message)) = socket.next().await {
        if let Message::Text(text) = message {
            let message: Value = serde_json::from_str(text.as_str()).unwrap();
            if message["type"] == "error" {
                websocket = message["code"].as_str().unwrap().to_owned();
                break;
            }
            assert_ne!(message["type"], "subscribed", "{message}");
        }
    }
    let sse = app
        .http
        .get(app.url(&format!(
            "/api/v1/events/stream?channels={realtime_channel}"
        )))
        .header(header, &value)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16();
    let mut request = tonic::Request::new(SubscribeRequest {
        channels: vec![realtime_channel.to_owned()],
        last_event_id: String::new(),
    });
    request
        .metadata_mut()
        .insert(header, value.parse().unwrap());
    let grpc = RealtimeServiceClient::new(channel.clone())
        .subscribe(request)
        .await
        .map(|_| Code::Ok)
        .unwrap_or_else(|status| status.code());
    (websocket, sse, grpc)
}
