//! The OpenAPI 3 document, derived from the same contract table as the transcoder: one
//! operation per HTTP binding, schemas from the message descriptors with their `buf.validate`
//! rules, descriptions from the proto comments. Rules that follow the configuration (the
//! password policy) are stated as configured. It is computed once at start and served at
//! `/openapi.json`.

use super::contract::{AuthRule, BodyRule, Contract, HttpBinding, Rpc};
use super::pb::buf::validate::{
    FieldRules, double_rules, field_rules, int32_rules, int64_rules, string_rules,
};
use super::rest::path_template::Segment;
use super::validation::field_rules as declared_rules;
use crate::domain::events::EventKind;
use crate::domain::password::PasswordPolicy;
use crate::domain::tenancy::permissions;
use prost_reflect::{FieldDescriptor, FileDescriptor, Kind, MessageDescriptor, Value};
use serde_json::{Map, Value as Json, json};
use std::collections::{BTreeMap, HashMap};

/// The RPC whose REST route is also an OAuth2 password grant (`username=…&password=…`).
const OAUTH2_PASSWORD_FORM_RPC: &str = "/keel.auth.v1.AuthService/Login";
/// Sign-in's binding that is documented as the OAuth2 token endpoint (form body).
const OAUTH2_TOKEN_PATH: &str = "/api/v1/auth/token";

const FIELD_BEHAVIOR_REQUIRED: i32 = 2;
const FIELD_BEHAVIOR_OUTPUT_ONLY: i32 = 3;
const FIELD_BEHAVIOR_INPUT_ONLY: i32 = 4;

/// The statuses every operation may answer with the error body, besides its success.
const ERROR_STATUSES: [(u16, &str); 7] = [
    (
        400,
        "Invalid request: `details` holds a `google.rpc.BadRequest` with one field violation per broken rule",
    ),
    (401, "Missing, invalid or expired credentials"),
    (403, "Signed in, but not allowed"),
    (404, "No such resource, or not visible to the caller"),
    (
        409,
        "Conflicts with the current state (a taken name, a duplicate)",
    ),
    (
        429,
        "Rate limited or over quota: repeat after `Retry-After` seconds",
    ),
    (
        503,
        "Busy or a backing service is down: repeat after `Retry-After` seconds",
    ),
];

const FIELD_RULE_NEW_PASSWORD: i32 = 1;
const FIELD_RULE_ORGANIZATION_PERMISSION: i32 = 2;
const FIELD_RULE_PERMISSION: i32 = 3;
const FIELD_RULE_EVENT_TYPE: i32 = 4;

pub fn document(contract: &Contract, public_url: &str, password_policy: &PasswordPolicy) -> Json {
    let mut generator = Generator {
        comments: HashMap::new(),
        schemas: BTreeMap::new(),
        password_policy: password_policy.clone(),
    };
    let mut paths: BTreeMap<String, Map<String, Json>> = BTreeMap::new();
    for rpc in &contract.rpcs {
        for (index, binding) in rpc.bindings.iter().enumerate() {
            let operation = generator.operation(rpc, binding, index);
            paths
                .entry(binding.template.openapi_path())
                .or_default()
                .insert(binding.method.as_str().to_ascii_lowercase(), operation);
        }
    }
    let mut hand_written = realtime_operations().to_vec();
    hand_written.extend(generator.file_operations(contract));
    hand_written.extend(generator.inbound_operations(contract));
    hand_written.extend(resumable_operations());
    for (path, method, operation) in hand_written {
        paths
            .entry(path.to_owned())
            .or_default()
            .insert(method.to_owned(), operation);
    }
    generator.schemas.insert("Error".to_owned(), error_schema());
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "Keel API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "REST/JSON transcoded from Keel's gRPC services (proto3 JSON mapping, \
                proto field names). Every error answers `{code, message, reason, details}`; \
                `code` is the gRPC status code and `reason` a stable machine-readable name."
        },
        "servers": [{ "url": public_url }],
        "paths": paths,
        "components": {
            "schemas": generator.schemas,
            "securitySchemes": {
                "bearerAuth": { "type": "http", "scheme": "bearer", "bearerFormat": "JWT" },
                "apiKeyHeader": { "type": "apiKey", "in": "header", "name": "x-api-key" },
                "tokenQuery": { "type": "apiKey", "in": "query", "name": "token" },
                "oauth2Password": {
                    "type": "oauth2",
                    "flows": { "password": { "tokenUrl": OAUTH2_TOKEN_PATH, "scopes": {} } }
                }
            }
        }
    })
}

struct Generator {
    /// Leading comments by file and source path.
    comments: HashMap<String, HashMap<Vec<i32>, String>>,
    schemas: BTreeMap<String, Json>,
    password_policy: PasswordPolicy,
}

/// Where a message's schema is used: request schemas refuse unknown fields, as the server does,
/// and leave out the fields the path binds.
#[derive(Clone, Copy)]
enum Direction<'a> {
    Request { path_fields: &'a [String] },
    Response,
}

impl Generator {
    fn comment(&mut self, file: &FileDescriptor, path: &[i32]) -> Option<String> {
        let by_path = self
            .comments
            .entry(file.name().to_owned())
            .or_insert_with(|| {
                file.file_descriptor_proto()
                    .source_code_info
                    .iter()
                    .flat_map(|info| &info.location)
                    .filter_map(|location| {
                        let text = location.leading_comments.as_deref()?.trim();
                        (!text.is_empty()).then(|| (location.path.clone(), text.to_owned()))
                    })
                    .collect()
            });
        by_path.get(path).map(|text| {
            text.lines()
                .map(|line| line.strip_prefix(' ').unwrap_or(line))
                .collect::<Vec<_>>()
                .join("\n")
        })
    }

    /// The operation of `rpc`'s binding number `index`; bindings after the first are aliases.
    fn operation(&mut self, rpc: &Rpc, binding: &HttpBinding, index: usize) -> Json {
        let method = &rpc.descriptor;
        let service = method.parent_service();
        let mut description = self
            .comment(&method.parent_file(), method.path())
            .unwrap_or_default();
        let summary = description
            .lines()
            .next()
            .unwrap_or(method.name())
            .to_owned();
        // Operation ids are unique: an alias (another route of the same RPC, such as the
        // original's path) is numbered after the RPC's first route.
        let mut operation_id = format!("{}_{}", service.name(), method.name());
        if index > 0 {
            operation_id.push_str(&(index + 1).to_string());
            let first = &rpc.bindings[0];
            description = format!(
                "Alias of `{} {}`, the same RPC.\n\n{description}",
                first.method, first.template.text
            );
        }
        let input = method.input();
        let path_fields: Vec<String> = binding.template.variables().collect();
        let request = Direction::Request {
            path_fields: &path_fields,
        };

        let mut parameters: Vec<Json> = Vec::new();
        for segment in &binding.template.segments {
            if let Segment::Variable(names) = segment {
                let mut schema = nested_field(&input, names)
                    .map(|field| self.field_schema(&field, request))
                    .unwrap_or_else(|| json!({ "type": "string" }));
                // A value outside a catalog is a resource that does not exist (404), not a
                // malformed request; and fuzzers compare the percent-encoded `role%3Aread`.
                if let Some(schema) = schema.as_object_mut() {
                    schema.remove("enum");
                }
                parameters.push(json!({
                    "name": names.join("."),
                    "in": "path",
                    "required": true,
                    "schema": schema,
                }));
            }
        }
        if let BodyRule::None | BodyRule::Field(_) = &binding.body {
            for field in input.fields() {
                let bound_to_body =
                    matches!(&binding.body, BodyRule::Field(body) if *body == field);
                if bound_to_body || path_fields.iter().any(|path| path == field.name()) {
                    continue;
                }
                let mut parameter = json!({
                    "name": field.name(),
                    "in": "query",
                    "required": is_required(&field),
                    "schema": self.field_schema(&field, request),
                });
                if let Some(description) = self.comment(&input.parent_file(), field.path()) {
                    parameter["description"] = json!(description);
                }
                parameters.push(parameter);
            }
        }

        let error = json!({ "$ref": "#/components/schemas/Error" });
        let retry_after = json!({
            "Retry-After": {
                "description": "Seconds to wait before repeating the request",
                "schema": { "type": "integer", "minimum": 0 }
            }
        });
        // Of the caller's budget with least left (IETF draft RateLimit header fields).
        let integer = |description: &str| json!({ "description": description, "schema": { "type": "integer", "minimum": 0 } });
        let rate_limit = json!({
            "RateLimit-Limit": integer("Calls the caller's tightest budget allows per window"),
            "RateLimit-Remaining": integer("Calls left of it"),
            "RateLimit-Reset": integer("Seconds until it is whole again"),
            "RateLimit-Policy": {
                "description": "The budget: `<limit>;w=<window in seconds>`",
                "schema": { "type": "string" }
            },
        });
        let mut responses = Map::new();
        responses.insert(
            rpc.success_status.as_u16().to_string(),
            json!({
                "description": "OK",
                "headers": rate_limit.clone(),
                "content": { "application/json": { "schema": self.response_schema(rpc, binding) } }
            }),
        );
        for (status, meaning) in ERROR_STATUSES {
            let mut response = json!({
                "description": meaning,
                "content": { "application/json": { "schema": error } }
            });
            if matches!(status, 429 | 503) {
                response["headers"] = retry_after.clone();
            }
            if status == 429
                && let (Some(headers), Some(limits)) =
                    (response["headers"].as_object_mut(), rate_limit.as_object())
            {
                headers.extend(limits.clone());
            }
            responses.insert(status.to_string(), response);
        }
        responses.insert(
            "default".to_owned(),
            json!({
                "description": "Any other error: the HTTP status follows the gRPC code",
                "content": { "application/json": { "schema": error } }
            }),
        );

        let mut operation = json!({
            "operationId": operation_id,
            "tags": [service.name()],
            "summary": summary,
            "description": description,
            "parameters": parameters,
            "responses": responses,
            "x-grpc-method": rpc.grpc_path,
        });
        match &binding.body {
            BodyRule::None => {}
            BodyRule::Whole => {
                let mut content = Map::new();
                if rpc.grpc_path == OAUTH2_PASSWORD_FORM_RPC {
                    // The transcoder takes form bodies anywhere, but only the OAuth2 token
                    // endpoint is meant for one (`username` is the email address). One media
                    // type per operation: generated clients (openapi-python-client) break on two.
                    let (content_type, name, schema) = if binding.template.text == OAUTH2_TOKEN_PATH
                    {
                        let name = format!("{}_{}Form", service.name(), method.name());
                        (
                            "application/x-www-form-urlencoded",
                            name,
                            self.password_form(&input),
                        )
                    } else {
                        let name = input.full_name().to_owned();
                        ("application/json", name, self.password_json(&input))
                    };
                    self.schemas.insert(name.clone(), schema);
                    content.insert(
                        content_type.into(),
                        json!({ "schema": { "$ref": format!("#/components/schemas/{name}") } }),
                    );
                } else {
                    let schema = if path_fields.is_empty() {
                        self.message_ref(&input, request)
                    } else {
                        // As grpc-gateway does: the body is the request minus the fields the
                        // path binds, which could otherwise contradict it.
                        let name = format!("{}_{}Body", service.name(), method.name());
                        let schema = self.message_schema(&input, request);
                        self.schemas.insert(name.clone(), schema);
                        json!({ "$ref": format!("#/components/schemas/{name}") })
                    };
                    content.insert("application/json".into(), json!({ "schema": schema }));
                }
                // A body with nothing required may be left out (the server reads it as `{}`).
                let required = input.fields().any(|field| {
                    is_required(&field) && !path_fields.iter().any(|path| path == field.name())
                });
                operation["requestBody"] = json!({ "required": required, "content": content });
            }
            BodyRule::Field(field) => {
                operation["requestBody"] = json!({
                    "required": true,
                    "content": { "application/json": { "schema": self.field_schema(field, request) } }
                });
            }
        }
        operation["security"] = match rpc.auth {
            AuthRule::Public => json!([]),
            AuthRule::Session => json!([{ "bearerAuth": [] }, { "oauth2Password": [] }]),
            AuthRule::Authenticated | AuthRule::Permission(_) => {
                json!([{ "bearerAuth": [] }, { "oauth2Password": [] }, { "apiKeyHeader": [] }])
            }
        };
        if let AuthRule::Permission(permission) = &rpc.auth {
            operation["x-keel-permission"] = json!(permission);
        }
        operation
    }

    /// Sign-in as JSON: `email` and `password`.
    fn password_json(&mut self, input: &MessageDescriptor) -> Json {
        let mut body = self.message_schema(input, Direction::Request { path_fields: &[] });
        if let Some(properties) = body["properties"].as_object_mut() {
            properties.remove("username");
        }
        require(&mut body, &["email", "password"]);
        body
    }

    /// Sign-in as the OAuth2 password form: `username` (the email address) and `password`.
    fn password_form(&mut self, input: &MessageDescriptor) -> Json {
        let mut body = self.message_schema(input, Direction::Request { path_fields: &[] });
        if let Some(properties) = body["properties"].as_object_mut() {
            properties.remove("email");
            for extra in ["grant_type", "scope", "client_id", "client_secret"] {
                properties.insert(
                    extra.into(),
                    json!({ "type": "string", "nullable": true, "description": "Ignored" }),
                );
            }
        }
        require(&mut body, &["username", "password"]);
        body
    }

    fn response_schema(&mut self, rpc: &Rpc, binding: &HttpBinding) -> Json {
        match &binding.response_body {
            Some(field) => self.field_schema(field, Direction::Response),
            None => self.message_ref(&rpc.descriptor.output(), Direction::Response),
        }
    }

    fn message_ref(&mut self, message: &MessageDescriptor, direction: Direction) -> Json {
        self.named_ref(message.full_name().to_owned(), message, direction)
    }

    fn named_ref(
        &mut self,
        name: String,
        message: &MessageDescriptor,
        direction: Direction,
    ) -> Json {
        if let Some(schema) = well_known(message) {
            return schema;
        }
        if !self.schemas.contains_key(&name) {
            // Placeholder first, so recursive messages terminate.
            self.schemas.insert(name.clone(), json!({}));
            let schema = self.message_schema(message, direction);
            self.schemas.insert(name.clone(), schema);
        }
        json!({ "$ref": format!("#/components/schemas/{name}") })
    }

    fn message_schema(&mut self, message: &MessageDescriptor, direction: Direction) -> Json {
        let mut properties = Map::new();
        let mut required = Vec::new();
        for field in message.fields() {
            if let Direction::Request { path_fields } = direction
                && path_fields.iter().any(|path| path == field.name())
            {
                continue;
            }
            let mut schema = self.field_schema(&field, direction);
            let behaviors = field_behaviors(&field);
            if is_required(&field) {
                required.push(field.name().to_owned());
            }
            if let Some(description) = self.comment(&message.parent_file(), field.path()) {
                schema = with_description(schema, description);
            }
            if behaviors.contains(&FIELD_BEHAVIOR_OUTPUT_ONLY) {
                schema = with_flag(schema, "readOnly");
            }
            if behaviors.contains(&FIELD_BEHAVIOR_INPUT_ONLY) {
                schema = with_flag(schema, "writeOnly");
            }
            // proto3 JSON reads `null` as "not given".
            if let Direction::Request { .. } = direction
                && !is_required(&field)
            {
                schema = with_flag(schema, "nullable");
            }
            properties.insert(field.name().to_owned(), schema);
        }
        let mut schema = json!({ "type": "object", "properties": properties });
        if !required.is_empty() {
            schema["required"] = json!(required);
        }
        if let Direction::Request { .. } = direction {
            schema["additionalProperties"] = json!(false);
        }
        if let Some(description) = self.comment(&message.parent_file(), message.path()) {
            schema["description"] = json!(description);
        }
        schema
    }

    fn field_schema(&mut self, field: &FieldDescriptor, direction: Direction) -> Json {
        // Nested request messages carry no path fields of their own.
        let nested = match direction {
            Direction::Request { .. } => Direction::Request { path_fields: &[] },
            Direction::Response => Direction::Response,
        };
        let rules = declared_rules(field);
        if field.is_map() {
            let Kind::Message(entry) = field.kind() else {
                return json!({ "type": "object" });
            };
            let value = entry.map_entry_value_field();
            return json!({
                "type": "object",
                "additionalProperties": self.kind_schema(&value.kind(), nested),
            });
        }
        if field.is_list() {
            let item_rules = match rules.as_ref().and_then(|rules| rules.r#type.as_ref()) {
                Some(field_rules::Type::Repeated(repeated)) => repeated.items.as_deref(),
                _ => None,
            };
            let mut item = self.kind_schema(&field.kind(), nested);
            apply_rules(&mut item, item_rules);
            self.apply_field_rule(&mut item, field);
            let mut schema = json!({ "type": "array", "items": item });
            if let Some(field_rules::Type::Repeated(repeated)) =
                rules.as_ref().and_then(|rules| rules.r#type.as_ref())
            {
                set(
                    &mut schema,
                    "minItems",
                    repeated.min_items.filter(|n| *n > 0),
                );
                set(&mut schema, "maxItems", repeated.max_items);
            }
            return schema;
        }
        let mut schema = self.kind_schema(&field.kind(), nested);
        apply_rules(&mut schema, rules.as_ref());
        self.apply_field_rule(&mut schema, field);
        schema
    }

    /// States the rules that follow configuration or the catalog (`keel.options.v1.field_rule`).
    fn apply_field_rule(&self, schema: &mut Json, field: &FieldDescriptor) {
        match field_rule(field) {
            FIELD_RULE_NEW_PASSWORD => {
                let policy = &self.password_policy;
                tighten(schema, "minLength", policy.min_length, usize::max);
                tighten(schema, "maxLength", policy.max_length, usize::min);
                let mut needs = Vec::new();
                for (required, class, what) in [
                    (policy.require_lowercase, "[a-z]", "a lower-case letter"),
                    (policy.require_uppercase, "[A-Z]", "an upper-case letter"),
                    (policy.require_digit, "[0-9]", "a digit"),
                    (policy.require_symbol, "[^A-Za-z0-9]", "a symbol"),
                ] {
                    if required {
                        needs.push((class, what));
                    }
                }
                if !needs.is_empty() {
                    let lookaheads: String = needs
                        .iter()
                        .map(|(class, _)| format!("(?=[\\s\\S]*{class})"))
                        .collect();
                    schema["pattern"] = json!(format!("^{lookaheads}"));
                }
                let mut text = format!(
                    "The instance's password policy: {} to {} characters",
                    policy.min_length, policy.max_length
                );
                for (_, what) in &needs {
                    text.push_str(&format!(", {what}"));
                }
                text.push_str("; not a known breached password where a list is configured.");
                schema["x-keel-password-policy"] = json!(text);
            }
            FIELD_RULE_ORGANIZATION_PERMISSION => {
                let names: Vec<&str> = permissions::CATALOG
                    .iter()
                    .filter(|permission| !permission.platform)
                    .map(|permission| permission.name)
                    .collect();
                schema["enum"] = json!(names);
            }
            FIELD_RULE_PERMISSION => {
                let names: Vec<&str> = permissions::CATALOG
                    .iter()
                    .map(|permission| permission.name)
                    .collect();
                schema["enum"] = json!(names);
            }
            FIELD_RULE_EVENT_TYPE => schema["enum"] = json!(EventKind::patterns()),
            _ => {}
        }
    }

    fn kind_schema(&mut self, kind: &Kind, direction: Direction) -> Json {
        match kind {
            Kind::String => json!({ "type": "string" }),
            Kind::Bool => json!({ "type": "boolean" }),
            Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => {
                json!({ "type": "integer", "format": "int32" })
            }
            Kind::Uint32 | Kind::Fixed32 => {
                json!({ "type": "integer", "format": "int64", "minimum": 0 })
            }
            // proto3 JSON writes 64-bit integers as strings.
            Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => {
                json!({ "type": "string", "format": "int64", "pattern": "^-?[0-9]{1,19}$" })
            }
            Kind::Uint64 | Kind::Fixed64 => {
                json!({ "type": "string", "format": "uint64", "pattern": "^[0-9]{1,20}$" })
            }
            Kind::Float => json!({ "type": "number", "format": "float" }),
            Kind::Double => json!({ "type": "number", "format": "double" }),
            Kind::Bytes => json!({ "type": "string", "format": "byte" }),
            Kind::Enum(descriptor) => json!({
                "type": "string",
                "enum": descriptor.values().map(|value| value.name().to_owned()).collect::<Vec<_>>(),
            }),
            // A message inside a request may be written in responses too: its request schema
            // (which refuses unknown fields) is a schema of its own.
            Kind::Message(message) => match direction {
                Direction::Request { .. } => {
                    let name = format!("{}.Input", message.full_name());
                    self.named_ref(name, message, direction)
                }
                Direction::Response => self.message_ref(message, direction),
            },
        }
    }
}

fn well_known(message: &MessageDescriptor) -> Option<Json> {
    Some(match message.full_name() {
        "google.protobuf.Timestamp" => json!({ "type": "string", "format": "date-time" }),
        "google.protobuf.Duration" => json!({ "type": "string", "example": "3.5s" }),
        "google.protobuf.FieldMask" => json!({ "type": "string", "example": "name,settings" }),
        "google.protobuf.Struct" => json!({ "type": "object", "additionalProperties": true }),
        "google.protobuf.Value" => json!({}),
        "google.protobuf.Empty" => json!({ "type": "object" }),
        "google.protobuf.StringValue" => json!({ "type": "string", "nullable": true }),
        "google.protobuf.BoolValue" => json!({ "type": "boolean", "nullable": true }),
        "google.protobuf.Int32Value" | "google.protobuf.UInt32Value" => {
            json!({ "type": "integer", "nullable": true })
        }
        "google.protobuf.Int64Value" | "google.protobuf.UInt64Value" => {
            json!({ "type": "string", "format": "int64", "nullable": true })
        }
        _ => return None,
    })
}

/// The realtime doors: streams, not transcoded RPCs, described here so that REST clients find
/// them (the messages are in the README; `RealtimeService/Subscribe` is the gRPC door).
fn realtime_operations() -> [(&'static str, &'static str, Json); 2] {
    let error = error_response;
    let security = json!([{ "bearerAuth": [] }, { "apiKeyHeader": [] }, { "tokenQuery": [] }]);
    let websocket = json!({
        "operationId": "Realtime_WebSocket",
        "tags": ["RealtimeService"],
        "summary": "Realtime events over a WebSocket",
        "description": "Upgrades to a WebSocket speaking the subprotocol `keel.realtime.v1` (JSON text \
            messages): the server sends `connected`; the client sends `subscribe {channel, since?}` \
            (`user` or `organization:<id>`), `unsubscribe {channel}` and `ping {timestamp?}`; the \
            server answers `subscribed`, `unsubscribed`, `pong`, `error` and streams `event \
            {channel, id, event}`. Browsers offer the access token as the subprotocol \
            `bearer.<token>`. A refused credential closes with 1008, an oversized message with \
            1009, too many connections or a slow reader with 1013, silence past the idle timeout \
            with 1001, a server restart with 1012.",
        "parameters": [],
        "security": security,
        "responses": {
            "101": { "description": "Switching Protocols: the WebSocket is open" },
            "400": error("Not a WebSocket handshake (`WEBSOCKET_REQUIRED`)"),
            "default": error("Any other refusal of the handshake")
        }
    });
    let channels = json!({
        "name": "channels",
        "in": "query",
        "required": true,
        "description": "Comma-separated channels: `user`, `organization:<organization id>`",
        "schema": { "type": "string" }
    });
    let last_event_id = json!({
        "name": "last_event_id",
        "in": "query",
        "required": false,
        "description": "Resume after this event id (as the `Last-Event-ID` header does)",
        "schema": { "type": "string", "format": "uuid" }
    });
    let stream = json!({
        "operationId": "Realtime_EventStream",
        "tags": ["RealtimeService"],
        "summary": "Realtime events as Server-Sent Events",
        "description": "Opens a stream of Server-Sent Events: first one `subscribed` message per \
            channel (with `recovered` when resuming), then `event` messages whose SSE `id` is the \
            event id, `unsubscribed` when a subscription ends, and `closed {code, message}` when \
            the server ends the stream. Reconnecting with `Last-Event-ID` delivers what was missed \
            while the channel's history holds it.",
        "parameters": [channels, last_event_id],
        "security": security,
        "responses": {
            "200": {
                "description": "The event stream",
                "content": { "text/event-stream": { "schema": { "type": "string" } } }
            },
            "400": error("An unknown channel, or a malformed event id"),
            "401": error("Missing, invalid or expired credentials"),
            "403": error("Not allowed to read the organization's events"),
            "404": error("No such organization, or not visible to the caller"),
            "429": error("Too many connections for this user or address"),
            "default": error("Any other error: the HTTP status follows the gRPC code")
        }
    });
    [
        ("/api/v1/ws", "get", websocket),
        ("/api/v1/events/stream", "get", stream),
    ]
}

fn error_response(description: &str) -> Json {
    json!({
        "description": description,
        "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } }
    })
}

fn binary(description: &str) -> Json {
    json!({
        "description": description,
        "content": {
            "application/octet-stream": { "schema": { "type": "string", "format": "binary" } }
        }
    })
}

impl Generator {
    /// The file doors over plain HTTP: the multipart upload (the `UploadFile` stream) and the
    /// content a signed URL serves.
    fn file_operations(&mut self, contract: &Contract) -> Vec<(&'static str, &'static str, Json)> {
        let file = contract
            .rpcs
            .iter()
            .find(|rpc| rpc.grpc_path == "/keel.file.v1.FileService/UploadFile")
            .and_then(|rpc| rpc.descriptor.output().get_field_by_name("file"))
            .and_then(|field| field.kind().as_message().cloned());
        let Some(file) = file else {
            return Vec::new();
        };
        let file = self.message_ref(&file, Direction::Response);
        let upload = json!({
            "operationId": "FileService_UploadFile",
            "tags": ["FileService"],
            "summary": "Uploads a file (multipart/form-data)",
            "description": "Streams the field `file` to storage: its type is detected from its \
                bytes (the allow-list is configured), its SHA-256 computed on the way, and it \
                counts against the organization's quotas. `organization_id`, `description` and \
                `checksum` (the SHA-256 the client expects) come before `file`.",
            "x-grpc-method": "/keel.file.v1.FileService/UploadFile",
            "security": [{ "bearerAuth": [] }, { "oauth2Password": [] }, { "apiKeyHeader": [] }],
            "requestBody": {
                "required": true,
                "content": { "multipart/form-data": { "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "organization_id": { "type": "string", "format": "uuid" },
                        "description": { "type": "string", "maxLength": 1000 },
                        "checksum": { "type": "string", "pattern": "^[0-9a-f]{64}$" },
                        "file": { "type": "string", "format": "binary" }
                    }
                } } }
            },
            "responses": {
                "201": {
                    "description": "Stored",
                    "content": { "application/json": { "schema": file } }
                },
                "400": error_response("Not a well-formed upload, or a checksum mismatch"),
                "401": error_response("Missing, invalid or expired credentials"),
                "403": error_response("Not allowed to upload into this organization"),
                "404": error_response("No such organization, or not visible to the caller"),
                "413": error_response("Larger than the server's or the organization's limit"),
                "415": error_response("Not multipart, or a type not accepted or not the one declared"),
                "429": error_response("Over the organization's storage or uploads of the day"),
                "default": error_response("Any other error: the HTTP status follows the gRPC code")
            }
        });
        let query = |name: &str, schema: Json| json!({ "name": name, "in": "query", "required": true, "schema": schema });
        let content = json!({
            "operationId": "FileService_Content",
            "tags": ["FileService"],
            "summary": "A file's bytes, through a signed download URL",
            "description": "Serves what `GetDownloadUrl` signed, without credentials, until it \
                expires: `Range` requests (one range), `ETag` and `If-None-Match`, and \
                `Content-Disposition` with the original name.",
            "security": [],
            "parameters": [
                {
                    "name": "file_id",
                    "in": "path",
                    "required": true,
                    "schema": { "type": "string", "format": "uuid" }
                },
                query("expires", json!({ "type": "integer" })),
                query("disposition", json!({ "type": "string", "enum": ["attachment", "inline"] })),
                query("signature", json!({ "type": "string" })),
                {
                    "name": "thumb",
                    "in": "query",
                    "required": false,
                    "schema": { "type": "string", "pattern": "^[0-9]{1,4}x[0-9]{1,4}$" },
                    "description": "The thumbnail the URL was signed for"
                }
            ],
            "responses": {
                "200": binary("The file"),
                "206": binary("The range asked for"),
                "304": { "description": "Unchanged since the `ETag` sent" },
                "403": error_response("A tampered or expired URL, or a deleted file"),
                "416": { "description": "The range is outside the file" },
                "default": error_response("Any other error")
            }
        });
        vec![
            ("/api/v1/files/upload", "post", upload),
            ("/api/v1/files/{file_id}/content", "get", content),
        ]
    }
}

impl Generator {
    /// The inbound doors of integrations: the body as sent, authenticated by a Standard
    /// Webhooks signature or the integration's key (the `ReceiveIntegrationEvent` RPC).
    fn inbound_operations(
        &mut self,
        contract: &Contract,
    ) -> Vec<(&'static str, &'static str, Json)> {
        let reply = contract
            .rpcs
            .iter()
            .find(|rpc| {
                rpc.grpc_path == "/keel.integration.v1.IntegrationService/ReceiveIntegrationEvent"
            })
            .map(|rpc| rpc.descriptor.output());
        let Some(reply) = reply else {
            return Vec::new();
        };
        let reply = self.message_ref(&reply, Direction::Response);
        let header = |name: &str, schema: Json, description: &str| json!({ "name": name, "in": "header", "required": false, "schema": schema, "description": description });
        let headers = [
            header(
                "webhook-id",
                json!({ "type": "string", "maxLength": 200 }),
                "The message's id, the same on every retry (required with a signature)",
            ),
            header(
                "webhook-timestamp",
                json!({ "type": "integer", "format": "int64" }),
                "Unix seconds, within 5 minutes of Keel's clock",
            ),
            header(
                "webhook-signature",
                json!({ "type": "string", "maxLength": 2000 }),
                "`v1,<base64 HMAC-SHA256 of \"id.timestamp.body\">` under the integration's secret",
            ),
        ];
        let operation = |id: &str, summary: &str, path_parameter: Json| {
            let mut parameters = vec![path_parameter];
            parameters.extend(headers.iter().cloned());
            json!({
                "operationId": id,
                "tags": ["IntegrationService"],
                "summary": summary,
                "description": "The body is taken as sent (JSON, or other UTF-8 text, up to \
                    `KEEL_INTEGRATION_MAX_PAYLOAD_KIB`) and published as \
                    `integration.event_received`. A message id is received once: a repeat \
                    answers 202 with `duplicate: true`.",
                "x-grpc-method": "/keel.integration.v1.IntegrationService/ReceiveIntegrationEvent",
                "security": [{}, { "bearerAuth": [] }, { "apiKeyHeader": [] }],
                "parameters": parameters,
                "requestBody": {
                    "required": false,
                    "content": {
                        "application/json": { "schema": {} },
                        "text/plain": { "schema": { "type": "string" } }
                    }
                },
                "responses": {
                    "202": {
                        "description": "Received (or received before)",
                        "content": { "application/json": { "schema": reply } }
                    },
                    "400": error_response("A stale timestamp, a missing message id, or a body that is not what its type says"),
                    "401": error_response("No such integration, or a wrong key or signature"),
                    "409": error_response("The integration is turned off"),
                    "413": error_response("Larger than KEEL_INTEGRATION_MAX_PAYLOAD_KIB"),
                    "429": error_response("Too many calls from this address"),
                    "default": error_response("Any other error: the HTTP status follows the gRPC code")
                }
            })
        };
        let by_id = operation(
            "IntegrationService_ReceiveIntegrationEvent",
            "Receives a message from an integration, signed or with its key",
            json!({ "name": "integration_id", "in": "path", "required": true, "schema": { "type": "string", "format": "uuid" } }),
        );
        // The path is the webhooks' (`{webhook_id}`): OpenAPI allows one template per place,
        // and here the segment is the integration's type.
        let by_type = operation(
            "IntegrationService_ReceiveIntegrationEventByType",
            "Receives a message from an integration with its key (the original's route)",
            json!({
                "name": "webhook_id",
                "in": "path",
                "required": true,
                "description": "The integration's type (`stripe`, `crm`…)",
                "schema": { "type": "string", "pattern": "^[a-z][a-z0-9_-]{0,39}$" }
            }),
        );
        vec![
            (
                "/api/v1/integrations/{integration_id}/events",
                "post",
                by_id,
            ),
            ("/api/v1/webhooks/{webhook_id}", "post", by_type),
        ]
    }
}

/// The tus 1.0 protocol's requests (creation, core, termination) for resumable uploads.
fn resumable_operations() -> [(&'static str, &'static str, Json); 5] {
    let header = |name: &str, required: bool, schema: Json, description: &str| {
        json!({
            "name": name,
            "in": "header",
            "required": required,
            "schema": schema,
            "description": description
        })
    };
    let version = header(
        "Tus-Resumable",
        true,
        json!({ "type": "string", "enum": ["1.0.0"] }),
        "The protocol version",
    );
    let upload_id = json!({
        "name": "upload_id",
        "in": "path",
        "required": true,
        "schema": { "type": "string", "format": "uuid" }
    });
    let security = json!([{ "bearerAuth": [] }, { "apiKeyHeader": [] }]);
    let answered = |status: &str, description: &str, headers: &[&str]| {
        let headers: Map<String, Json> = headers
            .iter()
            .map(|name| {
                (
                    (*name).to_owned(),
                    json!({ "schema": { "type": "string" } }),
                )
            })
            .collect();
        (
            status.to_owned(),
            json!({ "description": description, "headers": headers }),
        )
    };
    let responses = |success: (String, Json), errors: &[(&str, &str)]| {
        let mut responses: Map<String, Json> = Map::new();
        responses.insert(success.0, success.1);
        for (status, description) in errors {
            responses.insert((*status).to_owned(), error_response(description));
        }
        responses.insert(
            "412".into(),
            json!({ "description": "Tus-Resumable is not 1.0.0 (Tus-Version says what is)" }),
        );
        responses.insert("default".into(), error_response("Any other error"));
        Json::Object(responses)
    };
    let unauthenticated = ("401", "Missing, invalid or expired credentials");
    let unknown = ("404", "No such upload of the caller's, or it expired");
    let create = json!({
        "operationId": "FileService_CreateResumableUpload",
        "tags": ["FileService"],
        "summary": "Starts a resumable upload (tus 1.0 creation)",
        "description": "`Upload-Metadata` holds comma-separated `key base64(value)` pairs: \
            `filename`, `filetype`, `organization_id`, `description`, `checksum` (SHA-256, hex). \
            The upload's URL comes back in `Location`; its id becomes the file's.",
        "security": security,
        "parameters": [
            version,
            header("Upload-Length", true, json!({ "type": "integer", "minimum": 1 }), "The file's size in bytes"),
            header("Upload-Metadata", false, json!({ "type": "string" }), "What the file is")
        ],
        "responses": responses(
            answered("201", "Started", &["Location", "Upload-Expires"]),
            &[
                ("400", "A missing or malformed header"),
                unauthenticated,
                ("403", "Not allowed to upload into this organization"),
                ("404", "No such organization, or not visible to the caller"),
                ("413", "Longer than the server's or the organization's limit"),
                ("429", "Over the organization's storage or uploads of the day"),
            ],
        )
    });
    let status = json!({
        "operationId": "FileService_ResumableUploadOffset",
        "tags": ["FileService"],
        "summary": "How many bytes a resumable upload holds (tus 1.0 HEAD)",
        "security": security,
        "parameters": [upload_id, version],
        "responses": responses(
            answered("200", "Its offset and length", &["Upload-Offset", "Upload-Length", "Upload-Expires"]),
            &[unauthenticated, unknown],
        )
    });
    let append = json!({
        "operationId": "FileService_AppendResumableUpload",
        "tags": ["FileService"],
        "summary": "Appends bytes at the upload's offset (tus 1.0 PATCH)",
        "description": "The bytes that arrive are kept even if the request breaks off; ask the \
            offset with HEAD and continue from there. The last bytes make the upload a file, \
            checked by content like any upload.",
        "security": security,
        "parameters": [
            upload_id,
            version,
            header("Upload-Offset", true, json!({ "type": "integer", "minimum": 0 }), "Where these bytes go")
        ],
        "requestBody": {
            "required": true,
            "content": {
                "application/offset+octet-stream": { "schema": { "type": "string", "format": "binary" } }
            }
        },
        "responses": responses(
            answered("204", "Appended", &["Upload-Offset", "Upload-Expires"]),
            &[
                ("400", "A missing header, or more bytes than the upload's length"),
                unauthenticated,
                unknown,
                ("409", "Upload-Offset is not where the upload stands"),
                ("415", "Not application/offset+octet-stream, or a type not accepted"),
                ("423", "Another request is appending to this upload"),
                ("429", "Over the storage quota"),
            ],
        )
    });
    let terminate = json!({
        "operationId": "FileService_TerminateResumableUpload",
        "tags": ["FileService"],
        "summary": "Ends an unfinished upload and removes its bytes (tus 1.0 termination)",
        "security": security,
        "parameters": [upload_id, version],
        "responses": responses(answered("204", "Terminated", &[]), &[unauthenticated, unknown])
    });
    let options = json!({
            "operationId": "FileService_ResumableUploadOptions",
            "tags": ["FileService"],
            "summary": "What the tus server speaks: Tus-Version, Tus-Extension, Tus-Max-Size",
            "security": [],
            "responses": {
                "204": {
                    "description": "Its capabilities",
                    "headers": {
                        "Tus-Version": { "schema": { "type": "string" } },
                        "Tus-Extension": { "schema": { "type": "string" } },
                        "Tus-Max-Size": { "schema": { "type": "integer" } }
                    }
                }
            }
    });
    [
        ("/api/v1/files/uploads", "post", create),
        ("/api/v1/files/uploads", "options", options),
        ("/api/v1/files/uploads/{upload_id}", "head", status),
        ("/api/v1/files/uploads/{upload_id}", "patch", append),
        ("/api/v1/files/uploads/{upload_id}", "delete", terminate),
    ]
}

fn error_schema() -> Json {
    json!({
        "type": "object",
        "required": ["code", "message", "reason", "details"],
        "properties": {
            "code": { "type": "integer", "description": "gRPC status code (3 INVALID_ARGUMENT, 16 UNAUTHENTICATED, …)" },
            "message": { "type": "string", "description": "What went wrong, for a person" },
            "reason": { "type": "string", "description": "Stable machine-readable reason (EMAIL_TAKEN, INVALID_TOKEN, …)" },
            "details": {
                "type": "array",
                "description": "google.rpc error details (ErrorInfo, BadRequest with field violations, RetryInfo), each with its @type",
                "items": { "type": "object", "additionalProperties": true }
            }
        }
    })
}

fn nested_field(input: &MessageDescriptor, names: &[String]) -> Option<FieldDescriptor> {
    let (last, parents) = names.split_last()?;
    let mut message = input.clone();
    for name in parents {
        match message.get_field_by_name(name)?.kind() {
            Kind::Message(inner) => message = inner,
            _ => return None,
        }
    }
    message.get_field_by_name(last)
}

/// Makes `fields` of an object schema required (and so not `null`).
fn require(schema: &mut Json, fields: &[&str]) {
    for field in fields {
        if let Some(property) = schema["properties"][field].as_object_mut() {
            property.remove("nullable");
        }
    }
    schema["required"] = json!(fields);
}

/// Required by `google.api.field_behavior` or by the `buf.validate` rules (`required`, or a
/// list that must not be empty).
fn is_required(field: &FieldDescriptor) -> bool {
    field_behaviors(field).contains(&FIELD_BEHAVIOR_REQUIRED)
        || declared_rules(field).is_some_and(|rules| {
            rules.required == Some(true)
                || matches!(&rules.r#type, Some(field_rules::Type::Repeated(repeated))
                    if repeated.min_items.is_some_and(|min| min > 0))
        })
}

/// The field's `keel.options.v1.field_rule`, 0 when none.
fn field_rule(field: &FieldDescriptor) -> i32 {
    let options = field.options();
    field
        .parent_pool()
        .get_extension_by_name("keel.options.v1.field_rule")
        .filter(|extension| options.has_extension(extension))
        .and_then(|extension| options.get_extension(&extension).as_enum_number())
        .unwrap_or_default()
}

/// Writes a field's `buf.validate` rules as JSON Schema keywords.
fn apply_rules(schema: &mut Json, rules: Option<&FieldRules>) {
    let Some(rules) = rules else {
        return;
    };
    match &rules.r#type {
        Some(field_rules::Type::String(string)) => {
            let non_empty = rules.required == Some(true);
            set(
                schema,
                "minLength",
                string.min_len.filter(|n| *n > 0).or(non_empty.then_some(1)),
            );
            set(schema, "maxLength", string.max_len);
            set(schema, "pattern", string.pattern.clone());
            let format = match string.well_known {
                Some(string_rules::WellKnown::Email(true)) => Some("email"),
                Some(string_rules::WellKnown::Uuid(true)) => Some("uuid"),
                Some(string_rules::WellKnown::Uri(true)) => Some("uri"),
                _ => None,
            };
            set(schema, "format", format);
        }
        Some(field_rules::Type::Int32(int)) => {
            if let Some(int32_rules::GreaterThan::Gte(minimum)) = int.greater_than {
                schema["minimum"] = json!(minimum);
            }
            if let Some(int32_rules::LessThan::Lte(maximum)) = int.less_than {
                schema["maximum"] = json!(maximum);
            }
        }
        Some(field_rules::Type::Double(double)) => {
            if let Some(double_rules::GreaterThan::Gte(minimum)) = double.greater_than {
                schema["minimum"] = json!(minimum);
            }
            if let Some(double_rules::LessThan::Lte(maximum)) = double.less_than {
                schema["maximum"] = json!(maximum);
            }
        }
        Some(field_rules::Type::Int64(int)) => {
            // Written as a decimal string (proto3 JSON): a bound shows as the pattern.
            if let Some(int64_rules::GreaterThan::Gte(0)) = int.greater_than {
                schema["pattern"] = json!("^[0-9]{1,19}$");
            }
        }
        _ => {}
    }
}

fn set<T: serde::Serialize>(schema: &mut Json, key: &str, value: Option<T>) {
    if let Some(value) = value {
        schema[key] = json!(value);
    }
}

/// Sets a bound, keeping the tighter of the declared and the configured one.
fn tighten(schema: &mut Json, key: &str, value: usize, tighter: fn(usize, usize) -> usize) {
    let bound = match schema[key].as_u64().and_then(|n| usize::try_from(n).ok()) {
        Some(declared) => tighter(declared, value),
        None => value,
    };
    schema[key] = json!(bound);
}

fn field_behaviors(field: &FieldDescriptor) -> Vec<i32> {
    let options = field.options();
    let Some(extension) = field
        .parent_pool()
        .get_extension_by_name("google.api.field_behavior")
    else {
        return Vec::new();
    };
    if !options.has_extension(&extension) {
        return Vec::new();
    }
    match options.get_extension(&extension).as_ref() {
        Value::List(values) => values.iter().filter_map(Value::as_enum_number).collect(),
        _ => Vec::new(),
    }
}

/// `$ref` siblings are ignored by OpenAPI 3.0 tools, so annotations wrap a reference in `allOf`.
fn annotate(schema: Json, key: &str, value: Json) -> Json {
    let mut schema = if schema.get("$ref").is_some() {
        json!({ "allOf": [schema] })
    } else {
        schema
    };
    schema[key] = value;
    schema
}

fn with_description(schema: Json, description: String) -> Json {
    annotate(schema, "description", json!(description))
}

fn with_flag(schema: Json, flag: &str) -> Json {
    annotate(schema, flag, json!(true))
}
