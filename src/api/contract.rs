//! The API contract read from the compiled protos: every Keel RPC with its authorization rule
//! and HTTP bindings. The transcoder, the authorization layer and the OpenAPI document are all
//! derived from this one table, so they cannot disagree.

use super::pb::FILE_DESCRIPTOR_SET;
use super::rest::path_template::PathTemplate;
use crate::domain::tenancy::access::Owned;
use crate::domain::tenancy::permissions;
use anyhow::{Context, bail};
use prost_reflect::{DescriptorPool, DynamicMessage, FieldDescriptor, MethodDescriptor, Value};

/// Who may call an RPC (`keel.options.v1.AuthRule`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthRule {
    Public,
    Authenticated,
    /// Signed in with an access token, not an API key.
    Session,
    /// Holding a catalog permission: in the organization the request names, or platform-wide
    /// (superusers) for platform permissions.
    Permission(String),
}

/// The request field that names where an organization-scoped RPC acts.
#[derive(Debug, Clone)]
pub enum ScopeField {
    /// `organization_id`; the `x-organization-id` header may stand in for it, and so may the
    /// resource the request also names, which belongs to one organization (the original's
    /// `/api/v1/invitations/{id}`, `/api/v1/webhooks/{id}`).
    Organization {
        field: FieldDescriptor,
        owned: Option<(FieldDescriptor, Owned)>,
    },
    /// `team_id`: the team's organization is in scope, with the caller's roles in the team.
    Team(FieldDescriptor),
}

/// The fields that name a resource whose organization is in scope.
const OWNED_FIELDS: [(&str, Owned); 3] = [
    ("invitation_id", Owned::Invitation),
    ("webhook_id", Owned::Webhook),
    ("integration_id", Owned::Integration),
];

/// What part of the request message the HTTP body carries.
#[derive(Debug, Clone)]
pub enum BodyRule {
    None,
    Whole,
    Field(FieldDescriptor),
}

#[derive(Debug, Clone)]
pub struct HttpBinding {
    pub method: http::Method,
    pub template: PathTemplate,
    pub body: BodyRule,
    /// The response field sent as the REST body, when not the whole response.
    pub response_body: Option<FieldDescriptor>,
}

#[derive(Debug, Clone)]
pub struct Rpc {
    pub descriptor: MethodDescriptor,
    /// `/keel.auth.v1.AuthService/Login`.
    pub grpc_path: String,
    pub auth: AuthRule,
    /// For organization permissions: the request field naming the organization or team in
    /// scope.
    pub scope_field: Option<ScopeField>,
    pub success_status: http::StatusCode,
    pub bindings: Vec<HttpBinding>,
}

pub struct Contract {
    pub pool: DescriptorPool,
    pub rpcs: Vec<Rpc>,
}

impl Contract {
    /// Reads the embedded descriptors. Fails when a Keel RPC lacks its authorization rule or has a
    /// malformed HTTP rule, so such a contract never serves.
    pub fn load() -> anyhow::Result<Self> {
        let pool = DescriptorPool::decode(FILE_DESCRIPTOR_SET)
            .context("decoding the embedded descriptor set")?;
        let mut rpcs = Vec::new();
        for service in pool
            .services()
            .filter(|service| service.full_name().starts_with("keel."))
        {
            for method in service.methods() {
                rpcs.push(read_rpc(&pool, method)?);
            }
        }
        Ok(Self { pool, rpcs })
    }
}

fn extension_message(
    pool: &DescriptorPool,
    options: &DynamicMessage,
    name: &str,
) -> anyhow::Result<Option<DynamicMessage>> {
    let extension = pool
        .get_extension_by_name(name)
        .with_context(|| format!("extension {name} is not in the descriptor set"))?;
    if !options.has_extension(&extension) {
        return Ok(None);
    }
    match options.get_extension(&extension).as_ref() {
        Value::Message(message) => Ok(Some(message.clone())),
        other => bail!("extension {name} has an unexpected value {other:?}"),
    }
}

fn read_rpc(pool: &DescriptorPool, method: MethodDescriptor) -> anyhow::Result<Rpc> {
    let name = method.full_name().to_owned();
    let options = method.options();
    let auth_rule = extension_message(pool, &options, "keel.options.v1.auth")?
        .with_context(|| format!("{name} declares no (keel.options.v1.auth) rule"))?;
    let flag = |name: &str| {
        auth_rule
            .get_field_by_name(name)
            .is_some_and(|value| value.as_bool() == Some(true))
    };
    let auth = if flag("public") {
        AuthRule::Public
    } else if flag("authenticated") {
        AuthRule::Authenticated
    } else if flag("session") {
        AuthRule::Session
    } else {
        match auth_rule
            .get_field_by_name("permission")
            .and_then(|v| v.as_str().map(str::to_owned))
        {
            Some(permission) if !permission.is_empty() => AuthRule::Permission(permission),
            _ => bail!("{name} has an empty (keel.options.v1.auth) rule"),
        }
    };

    let scope_field = match &auth {
        AuthRule::Permission(permission) => {
            let info = permissions::find(permission)
                .map(|index| &permissions::CATALOG[index])
                .with_context(|| {
                    format!("{name} requires {permission}, which is not in the permission catalog")
                })?;
            if info.platform {
                None
            } else {
                let string_field = |field_name: &str| {
                    method
                        .input()
                        .get_field_by_name(field_name)
                        .filter(|field| {
                            field.kind() == prost_reflect::Kind::String && !field.is_list()
                        })
                };
                let field = string_field("organization_id")
                    .map(|field| ScopeField::Organization {
                        field,
                        owned: OWNED_FIELDS.iter().find_map(|(name, owned)| {
                            string_field(name).map(|owner| (owner, *owned))
                        }),
                    })
                    .or_else(|| string_field("team_id").map(ScopeField::Team))
                    .with_context(|| {
                        format!("{name} requires the organization permission {permission} but its request has no string organization_id or team_id")
                    })?;
                Some(field)
            }
        }
        _ => None,
    };

    let status_extension = pool
        .get_extension_by_name("keel.options.v1.http_success_status")
        .context("keel.options.v1.http_success_status is not in the descriptor set")?;
    let success_status = if options.has_extension(&status_extension) {
        let code = options
            .get_extension(&status_extension)
            .as_u32()
            .context("http_success_status is not a uint32")?;
        http::StatusCode::from_u16(u16::try_from(code)?)
            .with_context(|| format!("{name} declares an invalid HTTP status {code}"))?
    } else {
        http::StatusCode::OK
    };

    let mut bindings = Vec::new();
    if let Some(rule) = extension_message(pool, &options, "google.api.http")? {
        read_bindings(&method, &rule, true, &mut bindings)
            .with_context(|| format!("reading the HTTP rule of {name}"))?;
    }
    Ok(Rpc {
        grpc_path: format!("/{}/{}", method.parent_service().full_name(), method.name()),
        descriptor: method,
        auth,
        scope_field,
        success_status,
        bindings,
    })
}

fn read_bindings(
    method: &MethodDescriptor,
    rule: &DynamicMessage,
    top_level: bool,
    bindings: &mut Vec<HttpBinding>,
) -> anyhow::Result<()> {
    let text = |field: &str| {
        rule.get_field_by_name(field)
            .and_then(|value| value.as_str().map(str::to_owned))
            .unwrap_or_default()
    };
    let verbs = [
        ("get", http::Method::GET),
        ("put", http::Method::PUT),
        ("post", http::Method::POST),
        ("delete", http::Method::DELETE),
        ("patch", http::Method::PATCH),
    ];
    let (verb, path) = verbs
        .into_iter()
        .find(|(field, _)| rule.has_field_by_name(field))
        .map(|(field, verb)| (verb, text(field)))
        .context("the rule has no HTTP verb (custom verbs are not supported)")?;

    let input = method.input();
    let body = match text("body").as_str() {
        "" => BodyRule::None,
        "*" => BodyRule::Whole,
        field => BodyRule::Field(
            input
                .get_field_by_name(field)
                .with_context(|| format!("body field {field} is not in {}", input.full_name()))?,
        ),
    };
    let output = method.output();
    let response_body = match text("response_body").as_str() {
        "" => None,
        field => Some(output.get_field_by_name(field).with_context(|| {
            format!(
                "response_body field {field} is not in {}",
                output.full_name()
            )
        })?),
    };
    let template = PathTemplate::parse(&path, &input)?;
    bindings.push(HttpBinding {
        method: verb,
        template,
        body,
        response_body,
    });

    if top_level
        && let Some(Value::List(extra)) = rule.get_field_by_name("additional_bindings").as_deref()
    {
        for binding in extra {
            let Value::Message(binding) = binding else {
                bail!("additional_bindings holds a non-message value");
            };
            read_bindings(method, binding, false, bindings)?;
        }
    }
    Ok(())
}
