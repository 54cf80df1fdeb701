//! `google.api.http` path templates: literal segments and `{field}` / `{field.sub}` /
//! `{field=*}` variables, one path segment each, and `{field=literal}`, which matches only
//! `literal` and binds it (an alias route for one value: `/auth/{provider=keycloak}/callback`).

use anyhow::{bail, ensure};
use prost_reflect::{Kind, MessageDescriptor};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    Literal(String),
    /// A variable bound to a (possibly nested) field of the request, by proto field names.
    Variable(Vec<String>),
    /// A literal segment that also sets a field to itself.
    Fixed {
        field: Vec<String>,
        literal: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathTemplate {
    pub text: String,
    pub segments: Vec<Segment>,
}

/// The variables a request path bound, as (field path, percent-decoded value).
pub type Captures = Vec<(Vec<String>, String)>;

impl PathTemplate {
    /// Parses `text`, checking every variable names a scalar field of `input`.
    pub fn parse(text: &str, input: &MessageDescriptor) -> anyhow::Result<Self> {
        let Some(rest) = text.strip_prefix('/') else {
            bail!("path template {text} must start with /");
        };
        let mut segments = Vec::new();
        for raw in rest.split('/') {
            ensure!(!raw.is_empty(), "path template {text} has an empty segment");
            let segment = match raw.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                Some(variable) => {
                    let (field_path, literal) = match variable.split_once('=') {
                        Some((field, "*")) => (field, None),
                        Some((field, literal)) if is_plain(literal) => (field, Some(literal)),
                        Some(_) => bail!(
                            "path template {text}: only {{field}}, {{field=*}} and {{field=literal}} are supported"
                        ),
                        None => (variable, None),
                    };
                    let names: Vec<String> = field_path.split('.').map(str::to_owned).collect();
                    check_scalar_field(input, &names)
                        .map_err(|error| anyhow::anyhow!("path template {text}: {error}"))?;
                    match literal {
                        Some(literal) => Segment::Fixed {
                            field: names,
                            literal: literal.to_owned(),
                        },
                        None => Segment::Variable(names),
                    }
                }
                None => {
                    ensure!(
                        is_plain(raw),
                        "path template {text}: unsupported segment {raw}"
                    );
                    Segment::Literal(raw.to_owned())
                }
            };
            segments.push(segment);
        }
        Ok(Self {
            text: text.to_owned(),
            segments,
        })
    }

    /// Matches a request path. The score ranks matches: literal segments win over variables,
    /// earlier segments first, so `/sessions/all` beats `/sessions/{id}`.
    pub fn matches(&self, path: &str) -> Option<(Vec<bool>, Captures)> {
        let parts: Vec<&str> = path.strip_prefix('/')?.split('/').collect();
        if parts.len() != self.segments.len() {
            return None;
        }
        let mut score = Vec::with_capacity(parts.len());
        let mut captures = Vec::new();
        for (segment, part) in self.segments.iter().zip(parts) {
            match segment {
                Segment::Literal(literal) => {
                    if literal != part {
                        return None;
                    }
                    score.push(true);
                }
                Segment::Variable(field) => {
                    if part.is_empty() {
                        return None;
                    }
                    let value = percent_encoding::percent_decode_str(part)
                        .decode_utf8()
                        .ok()?
                        .into_owned();
                    captures.push((field.clone(), value));
                    score.push(false);
                }
                Segment::Fixed { field, literal } => {
                    if literal != part {
                        return None;
                    }
                    captures.push((field.clone(), literal.clone()));
                    score.push(true);
                }
            }
        }
        Some((score, captures))
    }

    /// The field paths the path binds, dotted (`organization_id`).
    pub fn variables(&self) -> impl Iterator<Item = String> + '_ {
        self.segments.iter().filter_map(|segment| match segment {
            Segment::Variable(names) | Segment::Fixed { field: names, .. } => Some(names.join(".")),
            Segment::Literal(_) => None,
        })
    }

    /// The path as OpenAPI writes it: `{field}` parameters, fixed values spelled out.
    pub fn openapi_path(&self) -> String {
        self.segments
            .iter()
            .map(|segment| match segment {
                Segment::Literal(literal) | Segment::Fixed { literal, .. } => format!("/{literal}"),
                Segment::Variable(names) => format!("/{{{}}}", names.join(".")),
            })
            .collect()
    }
}

fn is_plain(segment: &str) -> bool {
    !segment.contains(['{', '}', ':', '*', '='])
}

fn check_scalar_field(input: &MessageDescriptor, names: &[String]) -> anyhow::Result<()> {
    let mut message = input.clone();
    for (index, name) in names.iter().enumerate() {
        let Some(field) = message.get_field_by_name(name) else {
            bail!("{name} is not a field of {}", message.full_name());
        };
        ensure!(!field.is_list() && !field.is_map(), "{name} is repeated");
        match field.kind() {
            Kind::Message(inner) if index + 1 < names.len() => message = inner,
            Kind::Message(_) => bail!("{name} is a message, not a scalar"),
            _ if index + 1 < names.len() => {
                bail!("{name} is a scalar with no field {}", names[index + 1])
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::contract::Contract;

    fn user_descriptor() -> anyhow::Result<MessageDescriptor> {
        Contract::load()?
            .pool
            .get_message_by_name("keel.user.v1.User")
            .ok_or_else(|| anyhow::anyhow!("keel.user.v1.User is missing"))
    }

    #[test]
    fn literal_segments_beat_variables() -> anyhow::Result<()> {
        let user = user_descriptor()?;
        let by_id = PathTemplate::parse("/api/v1/sessions/{id}", &user)?;
        let all = PathTemplate::parse("/api/v1/sessions/all", &user)?;
        let (id_score, captures) = by_id
            .matches("/api/v1/sessions/all")
            .ok_or_else(|| anyhow::anyhow!("no match"))?;
        assert_eq!(captures, vec![(vec!["id".to_owned()], "all".to_owned())]);
        let (all_score, _) = all
            .matches("/api/v1/sessions/all")
            .ok_or_else(|| anyhow::anyhow!("no match"))?;
        assert!(all_score > id_score);
        Ok(())
    }

    #[test]
    fn a_fixed_value_matches_only_itself_and_binds_it() -> anyhow::Result<()> {
        let template = PathTemplate::parse("/auth/{email=keycloak}/callback", &user_descriptor()?)?;
        let (_, captures) = template
            .matches("/auth/keycloak/callback")
            .ok_or_else(|| anyhow::anyhow!("no match"))?;
        assert_eq!(
            captures,
            vec![(vec!["email".to_owned()], "keycloak".to_owned())]
        );
        assert!(template.matches("/auth/google/callback").is_none());
        assert_eq!(template.openapi_path(), "/auth/keycloak/callback");
        assert_eq!(template.variables().collect::<Vec<_>>(), ["email"]);
        Ok(())
    }

    #[test]
    fn variables_are_percent_decoded_and_never_empty() -> anyhow::Result<()> {
        let template = PathTemplate::parse("/users/{email}/x", &user_descriptor()?)?;
        let (_, captures) = template
            .matches("/users/a%40b.com/x")
            .ok_or_else(|| anyhow::anyhow!("no match"))?;
        assert_eq!(captures[0].1, "a@b.com");
        assert!(template.matches("/users//x").is_none());
        assert!(template.matches("/users/a/x/y").is_none());
        Ok(())
    }

    #[test]
    fn templates_must_name_scalar_fields() -> anyhow::Result<()> {
        let user = user_descriptor()?;
        assert!(PathTemplate::parse("/users/{nope}", &user).is_err());
        assert!(PathTemplate::parse("/users/{created_at}", &user).is_err());
        assert!(PathTemplate::parse("/users/{id=**}", &user).is_err());
        assert!(PathTemplate::parse("users/{id}", &user).is_err());
        Ok(())
    }
}
