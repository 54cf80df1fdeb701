//! The contract's field rules (`buf.validate` in the protos) are checked before any handler,
//! with the same answer on every door: one field violation per broken rule, reason = the rule
//! id, on REST, gRPC and gRPC-web alike.

use crate::backend_tests;
use crate::harness::{Backend, TestApp, grpc_reason, grpc_violations, rest_violations, with_token};
use keel::api::pb::keel::auth::v1::RegisterRequest;
use keel::api::pb::keel::organization::v1::ListOrganizationsRequest;
use keel::api::pb::keel::organization::v1::organization_service_client::OrganizationServiceClient;
use keel::api::pb::keel::team::v1::team_service_client::TeamServiceClient;
use keel::api::pb::keel::team::v1::{CreateTeamRequest, GetTeamRequest};
use reqwest::Method;
use serde_json::json;
use tonic::Code;

backend_tests!(every_door_refuses_alike, rules_run_before_the_handler);

type Violations = Vec<(String, String, String)>;

fn reasons(violations: &Violations) -> Vec<(&str, &str)> {
    violations
        .iter()
        .map(|(field, reason, _)| (field.as_str(), reason.as_str()))
        .collect()
}

async fn every_door_refuses_alike(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let token = app.signed_in("rules@example.com").await.access;
    let (status, organization) = app
        .rest(
            Method::POST,
            "/api/v1/organizations",
            &token,
            Some(json!({ "name": "Rules", "slug": "rules" })),
        )
        .await;
    assert_eq!(status, 201);
    let organization_id = organization["id"].as_str().unwrap().to_owned();

    // Registration: a malformed address and no password.
    let (status, body) = app
        .rest(
            Method::POST,
            "/api/v1/auth/register",
            "",
            Some(json!({ "email": "nope", "full_name": "x" })),
        )
        .await;
    assert_eq!(status, 400);
    let over_rest = rest_violations(&body);
    assert_eq!(
        reasons(&over_rest),
        [("email", "string.email"), ("password", "required")]
    );
    let request = RegisterRequest {
        email: "nope".into(),
        full_name: "x".into(),
        ..Default::default()
    };
    let over_grpc = app
        .grpc()
        .await
        .register(request.clone())
        .await
        .unwrap_err();
    let over_grpc_web = app.grpc_web().register(request).await.unwrap_err();
    for status in [&over_grpc, &over_grpc_web] {
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(grpc_reason(status), "INVALID_FIELDS");
        assert_eq!(grpc_violations(status), over_rest);
    }

    // A page too large, in the query and in the message.
    let (status, body) = app
        .rest(
            Method::GET,
            "/api/v1/organizations?page_size=500",
            &token,
            None,
        )
        .await;
    assert_eq!(status, 400);
    let over_rest = rest_violations(&body);
    assert_eq!(reasons(&over_rest), [("page_size", "int32.gte_lte")]);
    let mut organizations = OrganizationServiceClient::new(app.channel().await);
    let over_grpc = organizations
        .list_organizations(with_token(
            ListOrganizationsRequest {
                page_size: 500,
                ..Default::default()
            },
            &token,
        ))
        .await
        .unwrap_err();
    assert_eq!(grpc_violations(&over_grpc), over_rest);

    // An id that is no UUID, in the path and in the message.
    let (status, body) = app
        .rest(Method::GET, "/api/v1/teams/not-a-uuid", &token, None)
        .await;
    assert_eq!(status, 400);
    let over_rest = rest_violations(&body);
    assert_eq!(reasons(&over_rest), [("team_id", "string.uuid")]);
    let mut teams = TeamServiceClient::new(app.channel().await);
    let over_grpc = teams
        .get_team(with_token(
            GetTeamRequest {
                team_id: "not-a-uuid".into(),
            },
            &token,
        ))
        .await
        .unwrap_err();
    assert_eq!(grpc_violations(&over_grpc), over_rest);

    // Several rules at once, every one named.
    let (status, body) = app
        .rest(
            Method::POST,
            "/api/v1/teams",
            &token,
            Some(json!({
                "organization_id": organization_id,
                "name": "",
                "slug": "Not A Slug",
                "description": "a\u{7}b",
            })),
        )
        .await;
    assert_eq!(status, 400);
    let over_rest = rest_violations(&body);
    assert_eq!(
        reasons(&over_rest),
        [
            ("name", "required"),
            ("slug", "string.pattern"),
            ("description", "string.pattern")
        ]
    );
    let over_grpc = teams
        .create_team(with_token(
            CreateTeamRequest {
                organization_id,
                name: String::new(),
                slug: "Not A Slug".into(),
                description: "a\u{7}b".into(),
            },
            &token,
        ))
        .await
        .unwrap_err();
    assert_eq!(grpc_violations(&over_grpc), over_rest);
}

async fn rules_run_before_the_handler(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let owner = app.signed_in("owner@example.com").await.access;
    let guest = app.signed_in("guest@example.com").await.access;
    let (_, guest_user) = app.rest(Method::GET, "/api/v1/auth/me", &guest, None).await;
    let (_, organization) = app
        .rest(
            Method::POST,
            "/api/v1/organizations",
            &owner,
            Some(json!({ "name": "Rules", "slug": "rules" })),
        )
        .await;
    let members = format!(
        "/api/v1/organizations/{}/members",
        organization["id"].as_str().unwrap()
    );
    // The handler would take 21 mentions of one role as one; the contract allows 20 roles.
    let (status, body) = app
        .rest(
            Method::POST,
            &members,
            &owner,
            Some(json!({ "user_id": guest_user["id"], "roles": vec!["member"; 21] })),
        )
        .await;
    assert_eq!(status, 400);
    assert_eq!(
        reasons(&rest_violations(&body)),
        [("roles", "repeated.max_items")]
    );
    let guest_id = guest_user["id"].as_str().unwrap();
    let (status, _) = app
        .rest(Method::GET, &format!("{members}/{guest_id}"), &owner, None)
        .await;
    assert_eq!(status, 404, "nothing was changed");

    // Credentials come first: without them, no rule is checked.
    let (status, body) = app
        .rest(Method::GET, "/api/v1/teams/not-a-uuid", "", None)
        .await;
    assert_eq!(status, 401, "{body}");
}
