//! The field rules the protos declare with `buf.validate` (protovalidate), checked in the guard
//! for every door before a handler runs. Rules that follow state or configuration (password
//! policy, uniqueness, the permission catalog) stay in the domain.
//!
//! Written here rather than taken from `prost-protovalidate`, whose types crate runs `protoc`
//! in its build script (Keel builds with the Rust toolchain alone): this is the subset of
//! protovalidate Keel's protos use, with protovalidate's rule ids and messages, so clients that
//! run protovalidate themselves see the same violations. A rule outside the subset stops the
//! server at start, so none is ever silently skipped.

use super::contract::Contract;
use super::pb::buf::validate::{
    DoubleRules, EnumRules, FieldRules, Ignore, Int32Rules, Int64Rules, MessageRules,
    RepeatedRules, StringRules, double_rules, field_rules, int32_rules, int64_rules, string_rules,
};
use crate::domain::{Error, FieldViolation, Violations};
use anyhow::{Context, bail};
use prost_reflect::{
    DynamicMessage, FieldDescriptor, Kind, MessageDescriptor, ReflectMessage, Value,
};
use regex::Regex;
use std::collections::HashMap;

/// protovalidate's `string.email`: the WHATWG (HTML) form of an address, `local@label.label`.
fn is_email(text: &str) -> bool {
    let Some((local, domain)) = text.split_once('@') else {
        return false;
    };
    let local_ok = !local.is_empty()
        && local
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || b".!#$%&'*+/=?^_`{|}~-".contains(&byte));
    let label_ok = |label: &str| {
        (1..=63).contains(&label.len())
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-')
    };
    local_ok && domain.split('.').all(label_ok)
}

/// protovalidate's `string.uuid`: the hyphenated form, any case.
fn is_uuid(text: &str) -> bool {
    text.len() == 36 && uuid::Uuid::try_parse(text).is_ok()
}

/// The `buf.validate.field` rules of a field, if it declares any.
pub fn field_rules(field: &FieldDescriptor) -> Option<FieldRules> {
    extension(&field.options(), field.parent_pool(), "buf.validate.field")
}

fn message_rules(message: &MessageDescriptor) -> Option<MessageRules> {
    extension(
        &message.options(),
        message.parent_pool(),
        "buf.validate.message",
    )
}

fn extension<T: prost::Message + Default>(
    options: &DynamicMessage,
    pool: &prost_reflect::DescriptorPool,
    name: &str,
) -> Option<T> {
    let extension = pool.get_extension_by_name(name)?;
    if !options.has_extension(&extension) {
        return None;
    }
    options
        .get_extension(&extension)
        .as_message()?
        .transcode_to()
        .ok()
}

/// The checks of one request message, compiled at start.
#[derive(Default)]
struct MessagePlan {
    fields: Vec<FieldPlan>,
    /// `(buf.validate.message).oneof`: at most one of these fields set (exactly one if required).
    oneofs: Vec<(Vec<FieldDescriptor>, bool)>,
    /// Message fields (or lists of messages) whose own fields have rules, checked when set
    /// (violations are named `outer.inner`, `outer[2].inner`).
    nested: Vec<(FieldDescriptor, MessagePlan)>,
}

impl MessagePlan {
    fn is_empty(&self) -> bool {
        self.fields.is_empty() && self.oneofs.is_empty() && self.nested.is_empty()
    }
}

struct FieldPlan {
    field: FieldDescriptor,
    rules: FieldRules,
    /// `IGNORE_IF_ZERO_VALUE`, declared or implied by a message oneof naming the field.
    ignore_zero: bool,
    /// Compiled `string.pattern` (of the field, or of its items).
    pattern: Option<Regex>,
}

pub struct RequestValidator {
    plans: HashMap<String, MessagePlan>,
}

impl RequestValidator {
    /// Compiles the rules of every RPC's request, refusing rules outside the subset.
    pub fn new(contract: &Contract) -> anyhow::Result<Self> {
        let mut plans = HashMap::new();
        for rpc in &contract.rpcs {
            let input = rpc.descriptor.input();
            let plan = compile(&input)
                .with_context(|| format!("the buf.validate rules of {}", input.full_name()))?;
            if !plan.is_empty() {
                plans.insert(input.full_name().to_owned(), plan);
            }
        }
        Ok(Self { plans })
    }

    /// Whether requests of this message are checked (others are never decoded for it).
    pub fn checks(&self, message: &MessageDescriptor) -> bool {
        self.plans.contains_key(message.full_name())
    }

    /// INVALID_ARGUMENT with one field violation per broken rule, reason = the rule id.
    pub fn check(&self, message: &DynamicMessage) -> Result<(), Error> {
        let Some(plan) = self.plans.get(message.descriptor().full_name()) else {
            return Ok(());
        };
        let mut violations = Violations::default();
        check_message(plan, message, &mut violations);
        violations.finish()
    }
}

fn check_message(plan: &MessagePlan, message: &DynamicMessage, violations: &mut Violations) {
    for (fields, required) in &plan.oneofs {
        // Named after its first field, so that a person sees which field to fill in.
        let first = fields.first().map_or("", |field| field.name());
        let set = fields
            .iter()
            .filter(|field| message.has_field(field))
            .count();
        let names = || {
            fields
                .iter()
                .map(|field| field.name())
                .collect::<Vec<_>>()
                .join(", ")
        };
        if set > 1 {
            violations.push(FieldViolation::new(
                first,
                "message.oneof",
                format!("only one of {} can be set", names()),
            ));
        } else if set == 0 && *required {
            violations.push(FieldViolation::new(
                first,
                "message.oneof",
                format!("one of {} must be set", names()),
            ));
        }
    }
    for plan in &plan.fields {
        check_field(message, plan, violations);
    }
    for (field, inner_plan) in &plan.nested {
        if !message.has_field(field) {
            continue;
        }
        let value = message.get_field(field);
        let inner: Vec<(String, &DynamicMessage)> = match value.as_ref() {
            Value::List(items) => items
                .iter()
                .enumerate()
                .filter_map(|(index, item)| {
                    Some((format!("{}[{index}]", field.name()), item.as_message()?))
                })
                .collect(),
            Value::Message(inner) => vec![(field.name().to_owned(), inner)],
            _ => Vec::new(),
        };
        for (path, inner) in inner {
            let mut inner_violations = Violations::default();
            check_message(inner_plan, inner, &mut inner_violations);
            if let Err(error) = inner_violations.finish() {
                for violation in error.violations {
                    violations.push(FieldViolation {
                        field: format!("{path}.{}", violation.field),
                        ..violation
                    });
                }
            }
        }
    }
}

fn compile(message: &MessageDescriptor) -> anyhow::Result<MessagePlan> {
    let mut plan = MessagePlan::default();
    if let Some(rules) = message_rules(message) {
        if !rules.cel.is_empty() || !rules.cel_expression.is_empty() {
            bail!("CEL rules are not supported");
        }
        for oneof in rules.oneof {
            let fields = oneof
                .fields
                .iter()
                .map(|name| {
                    message
                        .get_field_by_name(name)
                        .with_context(|| format!("oneof names {name}, not a field"))
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            plan.oneofs.push((fields, oneof.required == Some(true)));
        }
    }
    for field in message.fields() {
        if let Kind::Message(inner) = field.kind()
            && inner.full_name().starts_with("keel.")
        {
            let inner_plan = compile(&inner)
                .with_context(|| format!("the nested message {}", inner.full_name()))?;
            if !inner_plan.is_empty() {
                if field.is_map() {
                    bail!(
                        "rules inside the map values {} are not supported",
                        inner.full_name()
                    );
                }
                plan.nested.push((field.clone(), inner_plan));
            }
        }
        let Some(rules) = field_rules(&field) else {
            continue;
        };
        let context = || format!("field {}", field.name());
        let plain = FieldRules {
            required: None,
            ignore: None,
            r#type: None,
            ..rules.clone()
        };
        if plain != FieldRules::default() {
            bail!(
                "only required, ignore and type rules are supported ({})",
                context()
            );
        }
        if !matches!(rules.ignore, None | Some(0))
            && rules.ignore != Some(Ignore::IfZeroValue as i32)
        {
            bail!("only IGNORE_IF_ZERO_VALUE is supported ({})", context());
        }
        let string_rules = match (&rules.r#type, field.kind(), field.is_list()) {
            (None, _, _) => None,
            (Some(field_rules::Type::String(string)), Kind::String, false) => Some(string),
            (Some(field_rules::Type::Int32(int)), Kind::Int32, false) => {
                supported_int32_rules(int).with_context(context)?;
                None
            }
            (Some(field_rules::Type::Int64(int)), Kind::Int64, false) => {
                supported_int64_rules(int).with_context(context)?;
                None
            }
            (Some(field_rules::Type::Double(double)), Kind::Double, false) => {
                supported_double_rules(double).with_context(context)?;
                None
            }
            (Some(field_rules::Type::Enum(rules)), Kind::Enum(_), false) => {
                let only_defined = EnumRules {
                    defined_only: None,
                    ..rules.clone()
                } == EnumRules::default();
                if !only_defined {
                    bail!("only defined_only is supported ({})", context());
                }
                None
            }
            (Some(field_rules::Type::Repeated(repeated)), Kind::Message(_), true)
                if repeated.items.is_none() =>
            {
                supported_repeated_rules(repeated).with_context(context)?;
                None
            }
            (Some(field_rules::Type::Repeated(repeated)), Kind::String, true) => {
                supported_repeated_rules(repeated).with_context(context)?;
                match repeated
                    .items
                    .as_deref()
                    .and_then(|items| items.r#type.as_ref())
                {
                    None => None,
                    Some(field_rules::Type::String(string)) => Some(string),
                    Some(_) => bail!("only string item rules are supported ({})", context()),
                }
            }
            _ => bail!("this kind of rule is not supported ({})", context()),
        };
        let pattern = match string_rules {
            Some(string) => {
                supported_string_rules(string).with_context(context)?;
                string
                    .pattern
                    .as_deref()
                    .map(Regex::new)
                    .transpose()
                    .with_context(context)?
            }
            None => None,
        };
        let in_oneof = plan
            .oneofs
            .iter()
            .any(|(fields, _)| fields.contains(&field));
        plan.fields.push(FieldPlan {
            ignore_zero: in_oneof || rules.ignore == Some(Ignore::IfZeroValue as i32),
            field,
            rules,
            pattern,
        });
    }
    Ok(plan)
}

fn supported_string_rules(rules: &StringRules) -> anyhow::Result<()> {
    match &rules.well_known {
        None | Some(string_rules::WellKnown::Email(_) | string_rules::WellKnown::Uuid(_)) => {}
        Some(other) => bail!("string rule {other:?} is not supported"),
    }
    let plain = StringRules {
        min_len: None,
        max_len: None,
        pattern: None,
        well_known: None,
        ..rules.clone()
    };
    if plain != StringRules::default() {
        bail!("only min_len, max_len, pattern, email and uuid are supported");
    }
    Ok(())
}

fn supported_int32_rules(rules: &Int32Rules) -> anyhow::Result<()> {
    let bounds_only = Int32Rules {
        greater_than: None,
        less_than: None,
        ..rules.clone()
    } == Int32Rules::default();
    let inclusive = matches!(
        rules.greater_than,
        None | Some(int32_rules::GreaterThan::Gte(_))
    ) && matches!(rules.less_than, None | Some(int32_rules::LessThan::Lte(_)));
    if !(bounds_only && inclusive) {
        bail!("only gte and lte are supported");
    }
    Ok(())
}

fn supported_int64_rules(rules: &Int64Rules) -> anyhow::Result<()> {
    let bounds_only = Int64Rules {
        greater_than: None,
        less_than: None,
        ..rules.clone()
    } == Int64Rules::default();
    let inclusive = matches!(
        rules.greater_than,
        None | Some(int64_rules::GreaterThan::Gte(_))
    ) && matches!(rules.less_than, None | Some(int64_rules::LessThan::Lte(_)));
    if !(bounds_only && inclusive) {
        bail!("only gte and lte are supported");
    }
    Ok(())
}

fn supported_double_rules(rules: &DoubleRules) -> anyhow::Result<()> {
    let bounds_only = DoubleRules {
        greater_than: None,
        less_than: None,
        ..rules.clone()
    } == DoubleRules::default();
    let inclusive = matches!(
        rules.greater_than,
        None | Some(double_rules::GreaterThan::Gte(_))
    ) && matches!(rules.less_than, None | Some(double_rules::LessThan::Lte(_)));
    if !(bounds_only && inclusive) {
        bail!("only gte and lte are supported");
    }
    Ok(())
}

fn supported_repeated_rules(rules: &RepeatedRules) -> anyhow::Result<()> {
    let counts_and_items = RepeatedRules {
        min_items: None,
        max_items: None,
        items: None,
        ..rules.clone()
    } == RepeatedRules::default();
    let items_typed_only = rules.items.as_deref().is_none_or(|items| {
        FieldRules {
            r#type: None,
            ..items.clone()
        } == FieldRules::default()
    });
    if !(counts_and_items && items_typed_only) {
        bail!("only min_items, max_items and typed items are supported");
    }
    Ok(())
}

fn check_field(message: &DynamicMessage, plan: &FieldPlan, violations: &mut Violations) {
    let field = &plan.field;
    let rules = &plan.rules;
    let present = message.has_field(field);
    if rules.required == Some(true) && !present {
        violations.push(FieldViolation::new(
            field.name(),
            "required",
            "value is required",
        ));
        return;
    }
    if !present && (plan.ignore_zero || field.supports_presence()) {
        return;
    }
    let value = message.get_field(field);
    match (&rules.r#type, value.as_ref()) {
        (Some(field_rules::Type::String(string)), Value::String(text)) => {
            check_string(
                field.name(),
                text,
                string,
                plan.pattern.as_ref(),
                violations,
            );
        }
        (Some(field_rules::Type::Int32(int)), Value::I32(number)) => {
            let minimum = match int.greater_than {
                Some(int32_rules::GreaterThan::Gte(minimum)) => Some(i64::from(minimum)),
                _ => None,
            };
            let maximum = match int.less_than {
                Some(int32_rules::LessThan::Lte(maximum)) => Some(i64::from(maximum)),
                _ => None,
            };
            check_range(
                field.name(),
                "int32",
                i64::from(*number),
                minimum,
                maximum,
                violations,
            );
        }
        (Some(field_rules::Type::Int64(int)), Value::I64(number)) => {
            let minimum = match int.greater_than {
                Some(int64_rules::GreaterThan::Gte(minimum)) => Some(minimum),
                _ => None,
            };
            let maximum = match int.less_than {
                Some(int64_rules::LessThan::Lte(maximum)) => Some(maximum),
                _ => None,
            };
            check_range(field.name(), "int64", *number, minimum, maximum, violations);
        }
        (Some(field_rules::Type::Double(double)), Value::F64(number)) => {
            let minimum = match double.greater_than {
                Some(double_rules::GreaterThan::Gte(minimum)) => Some(minimum),
                _ => None,
            };
            let maximum = match double.less_than {
                Some(double_rules::LessThan::Lte(maximum)) => Some(maximum),
                _ => None,
            };
            check_range(
                field.name(),
                "double",
                *number,
                minimum,
                maximum,
                violations,
            );
        }
        (Some(field_rules::Type::Enum(rules)), Value::EnumNumber(number)) => {
            let defined =
                matches!(field.kind(), Kind::Enum(values) if values.get_value(*number).is_some());
            if rules.defined_only == Some(true) && !defined {
                violations.push(FieldViolation::new(
                    field.name(),
                    "enum.defined_only",
                    "value must be one of the defined enum values",
                ));
            }
        }
        (Some(field_rules::Type::Repeated(repeated)), Value::List(items)) => {
            check_repeated(
                field.name(),
                items,
                repeated,
                plan.pattern.as_ref(),
                violations,
            );
        }
        _ => {}
    }
}

fn check_string(
    path: &str,
    text: &str,
    rules: &StringRules,
    pattern: Option<&Regex>,
    violations: &mut Violations,
) {
    let mut broken = |rule: &'static str, description: String| {
        violations.push(FieldViolation::new(path, rule, description));
    };
    let length = u64::try_from(text.chars().count()).unwrap_or(u64::MAX);
    if let Some(min) = rules.min_len.filter(|min| length < *min) {
        broken(
            "string.min_len",
            format!("value length must be at least {min} characters"),
        );
    }
    if let Some(max) = rules.max_len.filter(|max| length > *max) {
        broken(
            "string.max_len",
            format!("value length must be at most {max} characters"),
        );
    }
    if let Some(pattern) = pattern.filter(|pattern| !pattern.is_match(text)) {
        broken(
            "string.pattern",
            format!("value does not match regex pattern `{}`", pattern.as_str()),
        );
    }
    match rules.well_known {
        Some(string_rules::WellKnown::Email(true)) if text.is_empty() => broken(
            "string.email_empty",
            "value is empty, which is not a valid email address".into(),
        ),
        Some(string_rules::WellKnown::Email(true)) if !is_email(text) => {
            broken("string.email", "value must be a valid email address".into())
        }
        Some(string_rules::WellKnown::Uuid(true)) if text.is_empty() => broken(
            "string.uuid_empty",
            "value is empty, which is not a valid UUID".into(),
        ),
        Some(string_rules::WellKnown::Uuid(true)) if !is_uuid(text) => {
            broken("string.uuid", "value must be a valid UUID".into());
        }
        _ => {}
    }
}

/// A bound is broken by a number past it, or by one that compares with nothing (a NaN).
fn check_range<T: PartialOrd + std::fmt::Display + Copy>(
    path: &str,
    kind: &str,
    number: T,
    minimum: Option<T>,
    maximum: Option<T>,
    violations: &mut Violations,
) {
    use std::cmp::Ordering::{Equal, Greater, Less};
    let below = minimum
        .is_some_and(|minimum| !matches!(number.partial_cmp(&minimum), Some(Greater | Equal)));
    let above =
        maximum.is_some_and(|maximum| !matches!(number.partial_cmp(&maximum), Some(Less | Equal)));
    if !below && !above {
        return;
    }
    let (rule, description) = match (minimum, maximum) {
        (Some(minimum), Some(maximum)) => (
            "gte_lte",
            format!(
                "value must be greater than or equal to {minimum} and less than or equal to {maximum}"
            ),
        ),
        (Some(minimum), None) => (
            "gte",
            format!("value must be greater than or equal to {minimum}"),
        ),
        (None, Some(maximum)) => (
            "lte",
            format!("value must be less than or equal to {maximum}"),
        ),
        (None, None) => return,
    };
    violations.push(FieldViolation::new(
        path,
        format!("{kind}.{rule}"),
        description,
    ));
}

fn check_repeated(
    path: &str,
    items: &[Value],
    rules: &RepeatedRules,
    pattern: Option<&Regex>,
    violations: &mut Violations,
) {
    let count = u64::try_from(items.len()).unwrap_or(u64::MAX);
    if let Some(min) = rules.min_items.filter(|min| count < *min) {
        violations.push(FieldViolation::new(
            path,
            "repeated.min_items",
            format!("value must contain at least {min} item(s)"),
        ));
    }
    if let Some(max) = rules.max_items.filter(|max| count > *max) {
        violations.push(FieldViolation::new(
            path,
            "repeated.max_items",
            format!("value must contain no more than {max} item(s)"),
        ));
    }
    if let Some(field_rules::Type::String(string)) = rules
        .items
        .as_deref()
        .and_then(|items| items.r#type.as_ref())
    {
        for (index, item) in items.iter().enumerate() {
            if let Value::String(text) = item {
                check_string(
                    &format!("{path}[{index}]"),
                    text,
                    string,
                    pattern,
                    violations,
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{is_email, is_uuid};

    #[test]
    fn emails_follow_the_whatwg_form() {
        for valid in ["a@b", "ada.l+x@example.com", "o'neil@mail-1.example.org"] {
            assert!(is_email(valid), "{valid}");
        }
        for invalid in [
            "", "a", "@b", "a@", "a b@c", "a@-b.c", "a@b-.c", "a@b..c", "a@b@c",
        ] {
            assert!(!is_email(invalid), "{invalid}");
        }
    }

    #[test]
    fn uuids_are_hyphenated() {
        assert!(is_uuid("0190C9E2-9A7B-7C3D-8E4F-0123456789AB"));
        assert!(!is_uuid("0190c9e29a7b7c3d8e4f0123456789ab"));
        assert!(!is_uuid("{0190c9e2-9a7b-7c3d-8e4f-0123456789ab}"));
    }
}
