//! The OpenAPI 3 document, derived from the same contract table as the transcoder: one
//! operation per HTTP binding, schemas from the message descriptors, descriptions from the
//! proto comments. It is computed once at start and served at `/openapi.json`.

use super::contract::{AuthRule, BodyRule, Contract, HttpBinding, Rpc};
use super::rest::path_template::Segment;
use prost_reflect::{FieldDescriptor, FileDescriptor, Kind, MessageDescriptor, Value};
use serde_json::{Map, Value as Json, json};
use std::collections::{BTreeMap, HashMap};

/// The RPC whose REST route is also an OAuth2 password grant (`username=…&password=…`).
const OAUTH2_PASSWORD_FORM_RPC: &str = "/keel.auth.v1.AuthService/Login";

const FIELD_BEHAVIOR_REQUIRED: i32 = 2;
const FIELD_BEHAVIOR_OUTPUT_ONLY: i32 = 3;
const FIELD_BEHAVIOR_INPUT_ONLY: i32 = 4;

pub fn document(contract: &Contract, public_url: &str) -> Json {
    let mut generator = Generator {
        comments: HashMap::new(),
        schemas: BTreeMap::new(),
    };
    let mut paths: BTreeMap<String, Map<String, Json>> = BTreeMap::new();
    for rpc in &contract.rpcs {
        for binding in &rpc.bindings {
            let operation = generator.operation(rpc, binding);
            paths
                .entry(binding.template.text.clone())
                .or_default()
                .insert(binding.method.as_str().to_ascii_lowercase(), operation);
        }
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
                "oauth2Password": {
                    "type": "oauth2",
                    "flows": { "password": { "tokenUrl": "/api/v1/auth/login", "scopes": {} } }
                }
            }
        }
    })
}

struct Generator {
    /// Leading comments by file and source path.
    comments: HashMap<String, HashMap<Vec<i32>, String>>,
    schemas: BTreeMap<String, Json>,
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

    fn operation(&mut self, rpc: &Rpc, binding: &HttpBinding) -> Json {
        let method = &rpc.descriptor;
        let service = method.parent_service();
        let description = self
            .comment(&method.parent_file(), method.path())
            .unwrap_or_default();
        let summary = description
            .lines()
            .next()
            .unwrap_or(method.name())
            .to_owned();
        let input = method.input();

        let mut parameters: Vec<Json> = Vec::new();
        for segment in &binding.template.segments {
            if let Segment::Variable(names) = segment {
                let schema = nested_field(&input, names)
                    .map(|field| self.field_schema(&field))
                    .unwrap_or_else(|| json!({ "type": "string" }));
                parameters.push(json!({
                    "name": names.join("."),
                    "in": "path",
                    "required": true,
                    "schema": schema,
                }));
            }
        }
        let path_fields: Vec<String> = binding.template.variables().collect();
        if let BodyRule::None | BodyRule::Field(_) = &binding.body {
            for field in input.fields() {
                let bound_to_body =
                    matches!(&binding.body, BodyRule::Field(body) if *body == field);
                if bound_to_body || path_fields.iter().any(|path| path == field.name()) {
                    continue;
                }
                parameters.push(json!({
                    "name": field.name(),
                    "in": "query",
                    "required": false,
                    "schema": self.field_schema(&field),
                }));
            }
        }

        let mut operation = json!({
            "operationId": format!("{}_{}", service.name(), method.name()),
            "tags": [service.name()],
            "summary": summary,
            "description": description,
            "parameters": parameters,
            "responses": {
                rpc.success_status.as_u16().to_string(): {
                    "description": "OK",
                    "content": { "application/json": { "schema": self.response_schema(rpc, binding) } }
                },
                "default": {
                    "description": "An error: the HTTP status follows the gRPC code",
                    "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } }
                }
            },
            "x-grpc-method": rpc.grpc_path,
        });
        match &binding.body {
            BodyRule::None => {}
            BodyRule::Whole => {
                let schema = self.message_ref(&input);
                let mut content = json!({ "application/json": { "schema": schema } });
                // The transcoder takes form bodies anywhere, but only sign-in is meant for one
                // (the OAuth2 password form); declaring it everywhere breaks generated clients.
                if rpc.grpc_path == OAUTH2_PASSWORD_FORM_RPC {
                    content["application/x-www-form-urlencoded"] = json!({ "schema": schema });
                }
                operation["requestBody"] = json!({ "required": true, "content": content });
            }
            BodyRule::Field(field) => {
                operation["requestBody"] = json!({
                    "required": true,
                    "content": { "application/json": { "schema": self.field_schema(field) } }
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

    fn response_schema(&mut self, rpc: &Rpc, binding: &HttpBinding) -> Json {
        match &binding.response_body {
            Some(field) => self.field_schema(field),
            None => self.message_ref(&rpc.descriptor.output()),
        }
    }

    fn message_ref(&mut self, message: &MessageDescriptor) -> Json {
        if let Some(schema) = well_known(message) {
            return schema;
        }
        let name = message.full_name().to_owned();
        if !self.schemas.contains_key(&name) {
            // Placeholder first, so recursive messages terminate.
            self.schemas.insert(name.clone(), json!({}));
            let schema = self.message_schema(message);
            self.schemas.insert(name.clone(), schema);
        }
        json!({ "$ref": format!("#/components/schemas/{name}") })
    }

    fn message_schema(&mut self, message: &MessageDescriptor) -> Json {
        let mut properties = Map::new();
        let mut required = Vec::new();
        for field in message.fields() {
            let mut schema = self.field_schema(&field);
            let behaviors = field_behaviors(&field);
            if behaviors.contains(&FIELD_BEHAVIOR_REQUIRED) {
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
            properties.insert(field.name().to_owned(), schema);
        }
        let mut schema = json!({ "type": "object", "properties": properties });
        if !required.is_empty() {
            schema["required"] = json!(required);
        }
        if let Some(description) = self.comment(&message.parent_file(), message.path()) {
            schema["description"] = json!(description);
        }
        schema
    }

    fn field_schema(&mut self, field: &FieldDescriptor) -> Json {
        if field.is_map() {
            let Kind::Message(entry) = field.kind() else {
                return json!({ "type": "object" });
            };
            let value = entry.map_entry_value_field();
            return json!({ "type": "object", "additionalProperties": self.kind_schema(&value.kind()) });
        }
        let item = self.kind_schema(&field.kind());
        if field.is_list() {
            json!({ "type": "array", "items": item })
        } else {
            item
        }
    }

    fn kind_schema(&mut self, kind: &Kind) -> Json {
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
                json!({ "type": "string", "format": "int64" })
            }
            Kind::Uint64 | Kind::Fixed64 => json!({ "type": "string", "format": "uint64" }),
            Kind::Float => json!({ "type": "number", "format": "float" }),
            Kind::Double => json!({ "type": "number", "format": "double" }),
            Kind::Bytes => json!({ "type": "string", "format": "byte" }),
            Kind::Enum(descriptor) => json!({
                "type": "string",
                "enum": descriptor.values().map(|value| value.name().to_owned()).collect::<Vec<_>>(),
            }),
            Kind::Message(message) => self.message_ref(message),
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
