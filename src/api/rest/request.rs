//! Building the protobuf request of an RPC from a REST call: body, then path variables, then
//! query parameters, with proto3 JSON rules (both field-name styles, defaults for omitted
//! fields, unknown fields refused).

use super::path_template::Captures;
use crate::api::contract::{BodyRule, HttpBinding};
use crate::api::status::RestError;
use http::{HeaderValue, StatusCode};
use prost_reflect::{
    DeserializeOptions, DynamicMessage, FieldDescriptor, Kind, MessageDescriptor, ReflectMessage,
    Value,
};
use tonic::Code;

fn bad_request(reason: &str, message: impl Into<String>) -> RestError {
    RestError::new(
        StatusCode::BAD_REQUEST,
        Code::InvalidArgument,
        reason,
        message,
    )
}

enum BodyFormat {
    Json,
    Form,
}

/// The body's format by content type. A body that opens with `{` is JSON even when labelled as a
/// form: `curl -d` labels everything as a form, and no form field name starts with `{`.
fn body_format(content_type: Option<&HeaderValue>, body: &[u8]) -> Result<BodyFormat, RestError> {
    let opens_as_json = body.iter().find(|byte| !byte.is_ascii_whitespace()) == Some(&b'{');
    let Some(value) = content_type else {
        return Ok(BodyFormat::Json);
    };
    let essence = value
        .to_str()
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match essence.as_str() {
        "application/json" => Ok(BodyFormat::Json),
        "application/x-www-form-urlencoded" if opens_as_json => Ok(BodyFormat::Json),
        "application/x-www-form-urlencoded" => Ok(BodyFormat::Form),
        other if other.ends_with("+json") => Ok(BodyFormat::Json),
        other => Err(RestError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Code::InvalidArgument,
            "UNSUPPORTED_MEDIA_TYPE",
            format!("content type {other} is not supported; send application/json"),
        )),
    }
}

fn parse_json(descriptor: &MessageDescriptor, body: &[u8]) -> Result<DynamicMessage, RestError> {
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let options = DeserializeOptions::new().deny_unknown_fields(true);
    let message =
        DynamicMessage::deserialize_with_options(descriptor.clone(), &mut deserializer, &options)
            .and_then(|message| deserializer.end().map(|()| message))
            .map_err(|error| {
                bad_request(
                    "INVALID_BODY",
                    format!(
                        "the request body is not a valid {} JSON object: {error}",
                        descriptor.name()
                    ),
                )
            })?;
    Ok(message)
}

pub fn build_message(
    input: &MessageDescriptor,
    binding: &HttpBinding,
    captures: &Captures,
    query: &str,
    content_type: Option<&HeaderValue>,
    body: &[u8],
) -> Result<DynamicMessage, RestError> {
    let blank_body = body.iter().all(u8::is_ascii_whitespace);
    let mut message = match &binding.body {
        BodyRule::None => {
            if !blank_body {
                return Err(bad_request(
                    "BODY_NOT_ALLOWED",
                    "this route takes no request body; send the fields as query parameters",
                ));
            }
            DynamicMessage::new(input.clone())
        }
        BodyRule::Whole if blank_body => DynamicMessage::new(input.clone()),
        BodyRule::Whole => match body_format(content_type, body)? {
            BodyFormat::Json => parse_json(input, body)?,
            BodyFormat::Form => from_form(input, body)?,
        },
        BodyRule::Field(field) => {
            let mut message = DynamicMessage::new(input.clone());
            if !blank_body {
                if let BodyFormat::Form = body_format(content_type, body)? {
                    return Err(bad_request("INVALID_BODY", "this route takes a JSON body"));
                }
                let wrapped = [
                    br#"{""#.as_slice(),
                    field.name().as_bytes(),
                    br#"":"#,
                    body,
                    b"}",
                ]
                .concat();
                let parsed = parse_json(input, &wrapped)?;
                message.set_field(field, parsed.get_field(field).into_owned());
            }
            message
        }
    };

    for (path, raw) in captures {
        set_from_text(&mut message, path, raw).map_err(|error| {
            bad_request(
                "INVALID_PATH_PARAMETER",
                format!("path parameter {}: {error}", path.join(".")),
            )
        })?;
    }

    for (key, raw) in form_urlencoded::parse(query.as_bytes()) {
        let path: Vec<String> = key.split('.').map(str::to_owned).collect();
        let bound_elsewhere = matches!(binding.body, BodyRule::Whole)
            || matches!(&binding.body, BodyRule::Field(field) if resolves_to(input, &path, field))
            || binding.template.variables().any(|variable| variable == key);
        if bound_elsewhere {
            return Err(bad_request(
                "UNKNOWN_QUERY_PARAMETER",
                format!("query parameter {key} is not accepted on this route"),
            ));
        }
        set_from_text(&mut message, &path, &raw).map_err(|error| {
            bad_request(
                "INVALID_QUERY_PARAMETER",
                format!("query parameter {key}: {error}"),
            )
        })?;
    }
    Ok(message)
}

/// An OAuth2-style form body: known fields are set from their text, other keys (`grant_type`,
/// `scope`, `client_id`, which OAuth2 clients add) are ignored.
fn from_form(input: &MessageDescriptor, body: &[u8]) -> Result<DynamicMessage, RestError> {
    let mut message = DynamicMessage::new(input.clone());
    for (key, raw) in form_urlencoded::parse(body) {
        if find_field(input, &key).is_none() {
            continue;
        }
        set_from_text(&mut message, &[key.to_string()], &raw)
            .map_err(|error| bad_request("INVALID_BODY", format!("form field {key}: {error}")))?;
    }
    Ok(message)
}

fn find_field(message: &MessageDescriptor, name: &str) -> Option<FieldDescriptor> {
    message
        .get_field_by_name(name)
        .or_else(|| message.get_field_by_json_name(name))
}

fn resolves_to(input: &MessageDescriptor, path: &[String], target: &FieldDescriptor) -> bool {
    path.first()
        .and_then(|name| find_field(input, name))
        .is_some_and(|field| field == *target)
}

/// Sets the (possibly nested, possibly repeated) field at `path` from its text form.
fn set_from_text(message: &mut DynamicMessage, path: &[String], raw: &str) -> Result<(), String> {
    let (name, rest) = path.split_first().ok_or("empty field name")?;
    let descriptor = message.descriptor();
    let field = find_field(&descriptor, name)
        .ok_or_else(|| format!("{} has no field {name}", descriptor.full_name()))?;
    if !rest.is_empty() {
        let Kind::Message(_) = field.kind() else {
            return Err(format!("{name} has no field {}", rest.join(".")));
        };
        if field.is_list() || field.is_map() {
            return Err(format!(
                "{name} is repeated; nested fields of it cannot be set"
            ));
        }
        return match message.get_field_mut(&field) {
            Value::Message(inner) => set_from_text(inner, rest, raw),
            _ => Err(format!("{name} is not a message")),
        };
    }
    if field.is_map() {
        return Err(format!("{name} is a map and cannot be set from text"));
    }
    let value = parse_scalar(&field.kind(), raw)?;
    if field.is_list() {
        if let Value::List(items) = message.get_field_mut(&field) {
            items.push(value);
        }
    } else {
        message.set_field(&field, value);
    }
    Ok(())
}

fn parse_scalar(kind: &Kind, raw: &str) -> Result<Value, String> {
    let invalid = |expected: &str| format!("{raw:?} is not a valid {expected}");
    Ok(match kind {
        Kind::String => Value::String(raw.to_owned()),
        Kind::Bool => match raw {
            "true" | "1" => Value::Bool(true),
            "false" | "0" => Value::Bool(false),
            _ => return Err(invalid("boolean (true or false)")),
        },
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => {
            Value::I32(raw.parse().map_err(|_| invalid("32-bit integer"))?)
        }
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => {
            Value::I64(raw.parse().map_err(|_| invalid("64-bit integer"))?)
        }
        Kind::Uint32 | Kind::Fixed32 => Value::U32(
            raw.parse()
                .map_err(|_| invalid("unsigned 32-bit integer"))?,
        ),
        Kind::Uint64 | Kind::Fixed64 => Value::U64(
            raw.parse()
                .map_err(|_| invalid("unsigned 64-bit integer"))?,
        ),
        Kind::Float => Value::F32(raw.parse().map_err(|_| invalid("number"))?),
        Kind::Double => Value::F64(raw.parse().map_err(|_| invalid("number"))?),
        Kind::Bytes => {
            use base64::Engine;
            let decoded = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(raw.trim_end_matches('='))
                .or_else(|_| base64::engine::general_purpose::STANDARD.decode(raw))
                .map_err(|_| invalid("base64 value"))?;
            Value::Bytes(decoded.into())
        }
        Kind::Enum(descriptor) => {
            let number = descriptor
                .get_value_by_name(raw)
                .map(|value| value.number())
                .or_else(|| {
                    raw.parse::<i32>()
                        .ok()
                        .filter(|n| descriptor.get_value(*n).is_some())
                })
                .ok_or_else(|| invalid(descriptor.name()))?;
            Value::EnumNumber(number)
        }
        // Well-known types written as JSON strings: Timestamp, Duration, FieldMask, wrappers.
        Kind::Message(descriptor) => {
            let json = serde_json::Value::String(raw.to_owned());
            Value::Message(
                DynamicMessage::deserialize(descriptor.clone(), json)
                    .map_err(|_| invalid(descriptor.name()))?,
            )
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::contract::Contract;
    use crate::api::rest::path_template::PathTemplate;

    fn binding(input: &MessageDescriptor, path: &str, body: BodyRule) -> HttpBinding {
        HttpBinding {
            method: http::Method::GET,
            template: PathTemplate::parse(path, input).unwrap_or_else(|error| panic!("{error}")),
            body,
            response_body: None,
        }
    }

    fn message(name: &str) -> MessageDescriptor {
        Contract::load()
            .ok()
            .and_then(|contract| contract.pool.get_message_by_name(name))
            .unwrap_or_else(|| panic!("{name} is missing"))
    }

    fn text(message: &DynamicMessage, path: &[&str]) -> String {
        let (last, parents) = path.split_last().unwrap_or_else(|| panic!("empty path"));
        let mut current = message.clone();
        for name in parents {
            current = current
                .get_field_by_name(name)
                .and_then(|value| value.as_message().cloned())
                .unwrap_or_else(|| panic!("{name} is not set"));
        }
        current
            .get_field_by_name(last)
            .and_then(|value| value.as_str().map(str::to_owned))
            .unwrap_or_default()
    }

    #[test]
    fn query_parameters_fill_nested_fields_and_path_variables_win() {
        let input = message("keel.auth.v1.RegisterResponse");
        let binding = binding(&input, "/users/{user.id}", BodyRule::None);
        let captures = vec![(vec!["user".to_owned(), "id".to_owned()], "42".to_owned())];
        let built = build_message(
            &input,
            &binding,
            &captures,
            "user.email=a%40example.com&user.fullName=Ada",
            None,
            b"",
        )
        .unwrap_or_else(|error| panic!("{error:?}"));
        assert_eq!(text(&built, &["user", "id"]), "42");
        assert_eq!(text(&built, &["user", "email"]), "a@example.com");
        assert_eq!(text(&built, &["user", "full_name"]), "Ada");

        let rebound = build_message(&input, &binding, &captures, "user.id=7", None, b"");
        assert!(
            rebound.is_err(),
            "a path-bound field cannot be set by query"
        );
        let unknown = build_message(&input, &binding, &captures, "user.nope=1", None, b"");
        assert!(unknown.is_err());
        let wrong_type = build_message(
            &input,
            &binding,
            &captures,
            "user.email_verified=maybe",
            None,
            b"",
        );
        assert!(wrong_type.is_err());
    }

    #[test]
    fn body_field_carries_one_field_and_query_the_rest() {
        let input = message("keel.auth.v1.RegisterResponse");
        let user_field = input
            .get_field_by_name("user")
            .unwrap_or_else(|| panic!("user"));
        let binding = binding(&input, "/users", BodyRule::Field(user_field));
        let built = build_message(
            &input,
            &binding,
            &Vec::new(),
            "",
            None,
            br#"{"email":"b@example.com","fullName":"B"}"#,
        )
        .unwrap_or_else(|error| panic!("{error:?}"));
        assert_eq!(text(&built, &["user", "email"]), "b@example.com");
        assert_eq!(text(&built, &["user", "full_name"]), "B");
        let query_into_body =
            build_message(&input, &binding, &Vec::new(), "user.email=x", None, b"{}");
        assert!(query_into_body.is_err());
    }

    #[test]
    fn well_known_types_parse_from_text() {
        let input = message("google.rpc.RetryInfo");
        let binding = binding(&input, "/retry", BodyRule::None);
        let built = build_message(&input, &binding, &Vec::new(), "retry_delay=1.5s", None, b"")
            .unwrap_or_else(|error| panic!("{error:?}"));
        let delay = built
            .get_field_by_name("retry_delay")
            .and_then(|value| value.as_message().cloned())
            .unwrap_or_else(|| panic!("retry_delay is not set"));
        assert_eq!(
            delay.get_field_by_name("seconds").and_then(|v| v.as_i64()),
            Some(1)
        );
        assert_eq!(
            delay.get_field_by_name("nanos").and_then(|v| v.as_i32()),
            Some(500_000_000)
        );
    }
}
