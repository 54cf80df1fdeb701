//! Feature flags through both doors: superusers manage them, everyone checks for themselves,
//! organizations' admins override them for checks made within their organization, and a
//! change on one replica is seen by the next check on another.

use crate::backend_tests;
use crate::harness::{Backend, TestApp, grpc_reason, rest_violations, with_token};
use crate::organizations::create_organization;
use keel::api::pb::keel::flag::v1::feature_flag_service_client::FeatureFlagServiceClient;
use keel::api::pb::keel::flag::v1::{
    CheckFeatureFlagRequest, CheckFeatureFlagsRequest, CreateFeatureFlagRequest,
    SetFeatureFlagTargetingRequest, Targeting, UpdateFeatureFlagRequest,
};
use reqwest::Method;
use serde_json::{Value, json};
use tonic::Code;

backend_tests!(
    flags_are_managed_by_superusers_and_checked_by_everyone,
    organizations_override_flags_for_their_own_checks
);

async fn check(app: &TestApp, token: &str, flag: &str) -> bool {
    let (status, answer) = app
        .rest(
            Method::POST,
            "/api/v1/feature-flags/check",
            token,
            Some(json!({ "flag_name": flag })),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["flag_name"], flag);
    answer["is_enabled"].as_bool().unwrap()
}

async fn flags_are_managed_by_superusers_and_checked_by_everyone(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.create_superuser("root@example.com").await;
    let root = app.login("root@example.com").await;
    let ada = app.verified("ada@acme.test").await;
    let grace = app.verified("grace@example.com").await;

    // Members may not manage flags.
    let (status, _) = app
        .status_and_reason(
            Method::POST,
            "/api/v1/feature-flags",
            &ada.access,
            Some(json!({ "name": "beta" })),
        )
        .await;
    assert_eq!(status, 403);

    // On for everyone by default once enabled; unknown flags are off.
    let (status, created) = app
        .rest(
            Method::POST,
            "/api/v1/feature-flags",
            &root.access,
            Some(json!({ "name": "beta", "description": "The beta", "is_enabled": true })),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["rollout_percentage"], 1);
    let beta = created["id"].as_str().unwrap().to_owned();
    assert!(check(&app, &ada.access, "beta").await);
    assert!(!check(&app, &ada.access, "nothing-like-it").await);
    let (status, reason) = app
        .status_and_reason(
            Method::POST,
            "/api/v1/feature-flags",
            &root.access,
            Some(json!({ "name": "beta" })),
        )
        .await;
    assert_eq!((status, reason.as_str()), (409, "FEATURE_FLAG_EXISTS"));

    // Targeted at a domain, with no rollout: on for acme.test only.
    let beta_path = format!("/api/v1/feature-flags/{beta}");
    let (status, updated) = app
        .rest(
            Method::PATCH,
            &beta_path,
            &root.access,
            Some(json!({ "rollout_percentage": 0.0 })),
        )
        .await;
    assert_eq!(status, 200, "{updated}");
    let (status, targeted) = app
        .rest(
            Method::PUT,
            &format!("{beta_path}/targeting"),
            &root.access,
            Some(json!({ "email_domains": ["ACME.test"] })),
        )
        .await;
    assert_eq!(status, 200, "{targeted}");
    assert_eq!(
        targeted["targeting_rules"]["email_domains"],
        json!(["acme.test"])
    );
    assert!(check(&app, &ada.access, "beta").await);
    assert!(!check(&app, &grace.access, "beta").await);

    // Bulk, over REST: at most 50 names, unknown ones false.
    let (status, bulk) = app
        .rest(
            Method::POST,
            "/api/v1/feature-flags/check-bulk",
            &ada.access,
            Some(json!({ "flag_names": ["beta", "other"] })),
        )
        .await;
    assert_eq!(status, 200, "{bulk}");
    assert_eq!(bulk["flags"], json!({ "beta": true, "other": false }));
    let too_many: Vec<String> = (0..51).map(|n| format!("flag-{n}")).collect();
    let (status, refused) = app
        .rest(
            Method::POST,
            "/api/v1/feature-flags/check-bulk",
            &ada.access,
            Some(json!({ "flag_names": too_many })),
        )
        .await;
    assert_eq!(status, 400, "{refused}");
    assert_eq!(rest_violations(&refused)[0].0, "flag_names");
    // A rollout outside 0..1 is refused and changes nothing.
    let (status, refused) = app
        .rest(
            Method::PATCH,
            &beta_path,
            &root.access,
            Some(json!({ "rollout_percentage": 1.5, "is_enabled": false })),
        )
        .await;
    assert_eq!(status, 400, "{refused}");
    assert!(check(&app, &ada.access, "beta").await);

    // gRPC: organizations targeted; a check within one of them, and within another's.
    let organization = create_organization(&app, &grace.access, "grace-co").await;
    let mut grpc = FeatureFlagServiceClient::new(app.channel().await);
    let flag = grpc
        .create_feature_flag(with_token(
            CreateFeatureFlagRequest {
                name: "org-reports".into(),
                is_enabled: true,
                rollout_percentage: Some(0.0),
                targeting_rules: Some(Targeting {
                    organization_ids: vec![organization.clone()],
                    ..Targeting::default()
                }),
                ..CreateFeatureFlagRequest::default()
            },
            &root.access,
        ))
        .await
        .unwrap()
        .into_inner()
        .flag
        .unwrap();
    let check_in = |token: &str, organization_id: &str| {
        with_token(
            CheckFeatureFlagRequest {
                flag_name: "org-reports".into(),
                organization_id: organization_id.into(),
            },
            token,
        )
    };
    let within = grpc
        .check_feature_flag(check_in(&grace.access, &organization))
        .await
        .unwrap()
        .into_inner();
    assert!(within.is_enabled);
    let without = grpc
        .check_feature_flag(check_in(&grace.access, ""))
        .await
        .unwrap()
        .into_inner();
    assert!(!without.is_enabled);
    let outsider = grpc
        .check_feature_flag(check_in(&ada.access, &organization))
        .await
        .unwrap_err();
    assert_eq!(
        (outsider.code(), grpc_reason(&outsider).as_str()),
        (Code::PermissionDenied, "NOT_A_MEMBER")
    );
    // Retargeted at Ada by id, then switched off: off for everyone.
    let ada_id = app
        .rest(Method::GET, "/api/v1/auth/me", &ada.access, None)
        .await
        .1["id"]
        .as_str()
        .unwrap()
        .to_owned();
    grpc.set_feature_flag_targeting(with_token(
        SetFeatureFlagTargetingRequest {
            flag_id: flag.id.clone(),
            targeting: Some(Targeting {
                user_ids: vec![ada_id],
                ..Targeting::default()
            }),
        },
        &root.access,
    ))
    .await
    .unwrap();
    let bulk = grpc
        .check_feature_flags(with_token(
            CheckFeatureFlagsRequest {
                flag_names: vec!["org-reports".into(), "beta".into()],
                organization_id: String::new(),
            },
            &ada.access,
        ))
        .await
        .unwrap()
        .into_inner()
        .flags;
    assert_eq!((bulk["org-reports"], bulk["beta"]), (true, true));
    grpc.update_feature_flag(with_token(
        UpdateFeatureFlagRequest {
            flag_id: flag.id.clone(),
            is_enabled: Some(false),
            ..UpdateFeatureFlagRequest::default()
        },
        &root.access,
    ))
    .await
    .unwrap();
    assert!(!check(&app, &ada.access, "org-reports").await);

    // Listed by name; deleted, a flag checks off and is gone.
    let (status, listed) = app
        .rest(Method::GET, "/api/v1/feature-flags", &root.access, None)
        .await;
    assert_eq!(status, 200);
    let names: Vec<&str> = (listed["flags"].as_array().unwrap().iter())
        .map(|flag| flag["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["beta", "org-reports"]);
    let (status, _) = app
        .rest(Method::DELETE, &beta_path, &root.access, None)
        .await;
    assert_eq!(status, 200);
    assert!(!check(&app, &ada.access, "beta").await);
    let (status, reason) = app
        .status_and_reason(Method::GET, &beta_path, &root.access, None)
        .await;
    assert_eq!((status, reason.as_str()), (404, "FEATURE_FLAG_NOT_FOUND"));
}

/// Two replicas on one database and Redis: each evaluates from memory, and a change made
/// through one is seen at the next check on the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_reaches_every_replica() {
    if !crate::harness::services_available() {
        return;
    }
    let (first, second) = TestApp::two_replicas(|_| {}, |_| {}).await;
    first.create_superuser("root@example.com").await;
    let root = first.login("root@example.com").await;
    // Unverified: the verification mail may leave from either replica's workers.
    let ada = first.signed_in("ada@example.com").await;

    let (status, created) = first
        .rest(
            Method::POST,
            "/api/v1/feature-flags",
            &root.access,
            Some(json!({ "name": "dark-mode", "is_enabled": true })),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    // The second replica holds the flags in memory now.
    assert!(check(&second, &ada.access, "dark-mode").await);
    let path = format!("/api/v1/feature-flags/{}", created["id"].as_str().unwrap());
    let (status, _): (_, Value) = first
        .rest(
            Method::PATCH,
            &path,
            &root.access,
            Some(json!({ "is_enabled": false })),
        )
        .await;
    assert_eq!(status, 200);
    assert!(!check(&second, &ada.access, "dark-mode").await);
}

async fn check_in(app: &TestApp, token: &str, flag: &str, organization_id: &str) -> bool {
    let (status, answer) = app
        .rest(
            Method::POST,
            "/api/v1/feature-flags/check",
            token,
            Some(json!({ "flag_name": flag, "organization_id": organization_id })),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    answer["is_enabled"].as_bool().unwrap()
}

async fn organizations_override_flags_for_their_own_checks(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.create_superuser("root@example.com").await;
    let root = app.login("root@example.com").await;
    let (organization_id, owner, viewer) = crate::organizations::with_viewer(&app, "acme").await;
    let other_organization = create_organization(&app, &owner.access, "other").await;
    // On for nobody but targeted users: no rollout.
    let (status, created) = app
        .rest(
            Method::POST,
            "/api/v1/feature-flags",
            &root.access,
            Some(json!({ "name": "new-editor", "is_enabled": true, "rollout_percentage": 0 })),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    assert!(!check_in(&app, &viewer.access, "new-editor", &organization_id).await);

    let path = format!("/api/v1/organizations/{organization_id}/feature-flags/new-editor");
    // Viewers may not override; unknown flags are not found.
    let (status, _) = app
        .rest(
            Method::PUT,
            &path,
            &viewer.access,
            Some(json!({ "is_enabled": true })),
        )
        .await;
    assert_eq!(status, 403);
    let (status, missing) = app
        .rest(
            Method::PUT,
            &format!("/api/v1/organizations/{organization_id}/feature-flags/nope"),
            &owner.access,
            Some(json!({ "is_enabled": true })),
        )
        .await;
    assert_eq!(status, 404, "{missing}");
    assert_eq!(missing["reason"], "FEATURE_FLAG_NOT_FOUND");

    let (status, set) = app
        .rest(
            Method::PUT,
            &path,
            &owner.access,
            Some(json!({ "is_enabled": true })),
        )
        .await;
    assert_eq!(status, 200, "{set}");
    assert_eq!(set["flag_name"], "new-editor");
    assert_eq!(set["is_enabled"], true);
    // On within the organization only: not in another, not without one.
    assert!(check_in(&app, &viewer.access, "new-editor", &organization_id).await);
    assert!(!check_in(&app, &owner.access, "new-editor", &other_organization).await);
    assert!(!check(&app, &viewer.access, "new-editor").await);
    let (status, listed) = app
        .rest(
            Method::GET,
            &format!("/api/v1/organizations/{organization_id}/feature-flags"),
            &owner.access,
            None,
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(listed["overrides"][0]["flag_name"], "new-editor");

    // A flag switched off stays off, overridden or not.
    let flag_path = format!("/api/v1/feature-flags/{}", created["id"].as_str().unwrap());
    let (status, _): (_, Value) = app
        .rest(
            Method::PATCH,
            &flag_path,
            &root.access,
            Some(json!({ "is_enabled": false })),
        )
        .await;
    assert_eq!(status, 200);
    assert!(!check_in(&app, &viewer.access, "new-editor", &organization_id).await);
    let (status, _): (_, Value) = app
        .rest(
            Method::PATCH,
            &flag_path,
            &root.access,
            Some(json!({ "is_enabled": true, "rollout_percentage": 1 })),
        )
        .await;
    assert_eq!(status, 200);
    // Off within the organization while on for everyone else.
    let (status, _) = app
        .rest(
            Method::PUT,
            &path,
            &owner.access,
            Some(json!({ "is_enabled": false })),
        )
        .await;
    assert_eq!(status, 200);
    assert!(!check_in(&app, &viewer.access, "new-editor", &organization_id).await);
    assert!(check(&app, &viewer.access, "new-editor").await);

    // Removed: the flag's own rules decide again; removing twice is not found.
    let (status, _) = app.rest(Method::DELETE, &path, &owner.access, None).await;
    assert_eq!(status, 200);
    assert!(check_in(&app, &viewer.access, "new-editor", &organization_id).await);
    let (status, gone) = app.rest(Method::DELETE, &path, &owner.access, None).await;
    assert_eq!(status, 404, "{gone}");
    assert_eq!(gone["reason"], "FEATURE_FLAG_OVERRIDE_NOT_FOUND");
    let entries = crate::audit::wait_for_entries(
        &app,
        &owner.access,
        &format!("/api/v1/organizations/{organization_id}/audit-logs?page_size=100"),
        |entries| {
            entries
                .iter()
                .any(|entry| entry["action"] == "feature_flag.override_deleted")
        },
    )
    .await;
    assert_eq!(
        entries
            .iter()
            .filter(|entry| entry["action"] == "feature_flag.override_set")
            .count(),
        2
    );
}
