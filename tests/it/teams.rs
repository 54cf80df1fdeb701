//! Teams: created in an organization, addressed by id, invisible to outsiders; roles given in
//! a team apply in that team only and end with the membership.

use crate::backend_tests;
use crate::harness::{Backend, TestApp, grpc_reason, with_token};
use crate::organizations::{add_member, create_organization, user};
use keel::api::pb::keel::team::v1::team_service_client::TeamServiceClient;
use keel::api::pb::keel::team::v1::{GetTeamRequest, UpdateTeamRequest};
use reqwest::Method;
use serde_json::{Value, json};
use tonic::Code;

backend_tests!(team_roles_apply_in_their_team_only);

async fn create_team(
    app: &TestApp,
    token: &str,
    organization_id: &str,
    slug: &str,
) -> (u16, Value) {
    let (status, body) = app
        .rest(
            Method::POST,
            "/api/v1/teams",
            token,
            Some(json!({ "organization_id": organization_id, "name": format!("Team {slug}"), "slug": slug })),
        )
        .await;
    (status.as_u16(), body)
}

async fn team_roles_apply_in_their_team_only(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, alice) = user(&app, "alice@example.com").await;
    let (bob_id, bob) = user(&app, "bob@example.com").await;
    let (carol_id, _) = user(&app, "carol@example.com").await;
    let (dave_id, dave) = user(&app, "dave@example.com").await;
    let organization_id = create_organization(&app, &alice.access, "acme").await;
    add_member(
        &app,
        &alice.access,
        &organization_id,
        &bob_id,
        json!(["member"]),
    )
    .await;
    add_member(
        &app,
        &alice.access,
        &organization_id,
        &carol_id,
        json!(["viewer"]),
    )
    .await;

    let (status, core) = create_team(&app, &alice.access, &organization_id, "core").await;
    assert_eq!(status, 201, "{core}");
    let core = core["id"].as_str().unwrap().to_owned();
    let (_, ops) = create_team(&app, &alice.access, &organization_id, "ops").await;
    let ops = ops["id"].as_str().unwrap().to_owned();
    let (status, taken) = create_team(&app, &alice.access, &organization_id, "core").await;
    assert_eq!(
        (status, taken["reason"].as_str()),
        (409, Some("TEAM_SLUG_TAKEN"))
    );
    assert_eq!(
        create_team(&app, &bob.access, &organization_id, "mine")
            .await
            .0,
        403
    );

    for path in [
        format!("/api/v1/organizations/{organization_id}/teams"),
        format!("/api/v1/teams?organization_id={organization_id}"),
    ] {
        let (status, listed) = app.rest(Method::GET, &path, &bob.access, None).await;
        assert_eq!(status, 200, "{path}");
        assert_eq!(listed["teams"].as_array().unwrap().len(), 2);
    }

    // Outsiders find no team, whatever its id; an id that is no UUID is refused as such.
    let mut grpc = TeamServiceClient::new(app.channel().await);
    let malformed = grpc
        .get_team(with_token(
            GetTeamRequest {
                team_id: "nope".into(),
            },
            &dave.access,
        ))
        .await
        .unwrap_err();
    assert_eq!(malformed.code(), Code::InvalidArgument);
    for team_id in [core.clone(), uuid::Uuid::now_v7().to_string()] {
        let hidden = grpc
            .get_team(with_token(
                GetTeamRequest {
                    team_id: team_id.clone(),
                },
                &dave.access,
            ))
            .await
            .unwrap_err();
        assert_eq!(
            (hidden.code(), grpc_reason(&hidden).as_str()),
            (Code::NotFound, "TEAM_NOT_FOUND"),
            "{team_id}"
        );
    }

    // A team admin manages that team, not the others, nor the organization.
    let (status, added) = app
        .rest(
            Method::POST,
            &format!("/api/v1/teams/{core}/members"),
            &alice.access,
            Some(json!({ "user_id": bob_id, "roles": ["admin"] })),
        )
        .await;
    assert_eq!(
        (status.as_u16(), &added["roles"]),
        (201, &json!(["admin"])),
        "{added}"
    );
    let rename = |team_id: &str| {
        with_token(
            UpdateTeamRequest {
                team_id: team_id.to_owned(),
                description: Some("the core team".into()),
                ..Default::default()
            },
            &bob.access,
        )
    };
    let renamed = grpc
        .update_team(rename(&core))
        .await
        .unwrap()
        .into_inner()
        .team
        .unwrap();
    assert_eq!(renamed.description, "the core team");
    let denied = grpc.update_team(rename(&ops)).await.unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    let (status, _) = app
        .rest(
            Method::PUT,
            &format!("/api/v1/organizations/{organization_id}"),
            &bob.access,
            Some(json!({ "name": "Bob Corp" })),
        )
        .await;
    assert_eq!(status, 403);

    let members = format!("/api/v1/teams/{core}/members");
    let (status, _) = app
        .rest(
            Method::POST,
            &members,
            &bob.access,
            Some(json!({ "user_id": carol_id })),
        )
        .await;
    assert_eq!(status, 201);
    let (status, body) = app
        .rest(
            Method::PUT,
            &format!("{members}/{carol_id}"),
            &bob.access,
            Some(json!({ "roles": ["owner"] })),
        )
        .await;
    assert_eq!(
        (status.as_u16(), body["reason"].as_str()),
        (403, Some("ROLE_ESCALATION"))
    );
    let (status, body) = app
        .rest(
            Method::POST,
            &members,
            &alice.access,
            Some(json!({ "user_id": dave_id })),
        )
        .await;
    assert_eq!(
        (status.as_u16(), body["reason"].as_str()),
        (404, Some("MEMBER_NOT_FOUND"))
    );
    let (_, listed) = app.rest(Method::GET, &members, &alice.access, None).await;
    assert_eq!(listed["members"].as_array().unwrap().len(), 2);

    // Leaving the organization ends the team roles on the next request.
    let (status, _) = app
        .rest(
            Method::DELETE,
            &format!("/api/v1/organizations/{organization_id}/members/{bob_id}"),
            &alice.access,
            None,
        )
        .await;
    assert_eq!(status, 200);
    let gone = grpc.update_team(rename(&core)).await.unwrap_err();
    assert_eq!(gone.code(), Code::NotFound);
    let (_, listed) = app.rest(Method::GET, &members, &alice.access, None).await;
    assert_eq!(listed["members"].as_array().unwrap().len(), 1);

    assert_eq!(
        app.rest(
            Method::DELETE,
            &format!("/api/v1/teams/{core}"),
            &alice.access,
            None
        )
        .await
        .0,
        200
    );
    assert_eq!(
        app.rest(
            Method::GET,
            &format!("/api/v1/teams/{core}"),
            &alice.access,
            None
        )
        .await
        .0,
        404
    );
}
