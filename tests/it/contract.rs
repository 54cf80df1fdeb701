//! The contract itself: every RPC declares its authorization, and both migration sets agree.

use keel::api::contract::Contract;
use std::collections::{BTreeMap, BTreeSet};

#[test]
fn every_keel_rpc_declares_an_auth_rule_and_an_http_binding() {
    // `Contract::load` refuses an RPC without `(keel.options.v1.auth)`.
    let contract = Contract::load().expect("the contract loads");
    assert!(!contract.rpcs.is_empty());
    // A stream's REST door is written by hand (Server-Sent Events, a multipart upload), not
    // transcoded; so is the inbound door of integrations, whose signature covers the body's
    // exact bytes.
    let by_hand = ["/keel.integration.v1.IntegrationService/ReceiveIntegrationEvent"];
    let unary = contract.rpcs.iter().filter(|rpc| {
        !rpc.descriptor.is_server_streaming()
            && !rpc.descriptor.is_client_streaming()
            && !by_hand.contains(&rpc.grpc_path.as_str())
    });
    for rpc in unary {
        assert!(
            !rpc.bindings.is_empty(),
            "{} has no google.api.http rule",
            rpc.grpc_path
        );
    }
}

#[test]
fn literal_segments_win_over_variables() {
    use keel::api::rest::path_template::PathTemplate;
    let contract = Contract::load().unwrap();
    let get_user = contract
        .rpcs
        .iter()
        .find(|rpc| rpc.grpc_path == "/keel.user.v1.UserService/GetUser")
        .unwrap();
    let input = get_user.descriptor.input();
    let literal = PathTemplate::parse("/api/v1/users/me", &input).unwrap();
    let variable = PathTemplate::parse("/api/v1/users/{user_id}", &input).unwrap();
    let (literal_score, _) = literal.matches("/api/v1/users/me").unwrap();
    let (variable_score, captures) = variable.matches("/api/v1/users/me").unwrap();
    assert!(literal_score > variable_score);
    assert_eq!(
        captures,
        vec![(vec!["user_id".to_owned()], "me".to_owned())]
    );
    assert!(literal.matches("/api/v1/users/you").is_none());
    assert!(literal.matches("/api/v1/users/me/too").is_none());
}

fn versions(dir: &str) -> BTreeSet<String> {
    std::fs::read_dir(format!("{}/migrations/{dir}", env!("CARGO_MANIFEST_DIR")))
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .map(|name| name.split('_').next().unwrap().to_owned())
        .collect()
}

#[test]
fn sqlite_and_postgres_migrations_have_the_same_versions() {
    let sqlite = versions("sqlite");
    assert!(!sqlite.is_empty());
    assert_eq!(sqlite, versions("postgres"));
}

#[test]
fn the_readme_walkthrough_is_the_script_ci_runs() {
    let root = env!("CARGO_MANIFEST_DIR");
    let readme = std::fs::read_to_string(format!("{root}/README.md")).unwrap();
    let script = std::fs::read_to_string(format!("{root}/examples/walkthrough.sh")).unwrap();
    // The README shows the script without its header (a pasted `set -e` would close the shell).
    let (_, body) = script.split_once("set -euo pipefail\n").unwrap();
    let (_, try_it) = readme.split_once("## Try it").unwrap();
    let (_, block) = try_it.split_once("```sh\n").unwrap();
    let (block, _) = block.split_once("```\n").unwrap();
    assert_eq!(
        block, body,
        "README's Try it and examples/walkthrough.sh differ"
    );
}

/// The README's configuration table lists every declared setting, nothing else, and the
/// default each declares as a value.
#[test]
fn the_readme_lists_every_setting_with_its_default() {
    use keel::config::{DeclaredDefault, Settings};
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let rows: BTreeMap<String, String> = readme
        .lines()
        .filter_map(|line| line.strip_prefix("| `KEEL_"))
        .filter_map(|row| {
            let (name, rest) = row.split_once('`')?;
            let default = rest.trim_start_matches(" |").split(" |").next()?.trim();
            Some((format!("KEEL_{name}"), default.to_owned()))
        })
        .collect();
    let declared: BTreeMap<&str, DeclaredDefault> = Settings::DECLARED
        .iter()
        .map(|setting| (setting.env, setting.default))
        .collect();
    assert_eq!(
        rows.keys().map(String::as_str).collect::<Vec<_>>(),
        declared.keys().copied().collect::<Vec<_>>(),
        "the README's table and the declared settings differ"
    );
    let differing: Vec<String> = declared
        .iter()
        .filter_map(|(name, default)| {
            let row = &rows[*name];
            let stated = match default {
                DeclaredDefault::Value(value) => row == &format!("`{value}`"),
                DeclaredDefault::Described(_) => !row.is_empty(),
            };
            (!stated).then(|| format!("{name}: README {row}, declared {default:?}"))
        })
        .collect();
    assert!(differing.is_empty(), "{differing:#?}");
}

/// The README's list of event types is the catalog.
#[test]
fn the_readme_lists_every_event_type() {
    use keel::domain::events::EventKind;
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let (_, list) = readme
        .split_once("The\ncatalog, with a JSON schema per type")
        .unwrap();
    let (list, _) = list.split_once("records its actor").unwrap();
    let listed: std::collections::BTreeSet<&str> = list
        .split('`')
        .skip(1)
        .step_by(2)
        .filter(|name| name.contains('.') && !name.starts_with('/'))
        .collect();
    let catalog: std::collections::BTreeSet<&str> =
        EventKind::ALL.iter().map(|kind| kind.name()).collect();
    assert_eq!(listed, catalog);
}
