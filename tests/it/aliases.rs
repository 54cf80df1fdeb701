//! A drop-in for the original's clients: its routes in the areas Keel covers are served, with
//! their methods and paths, as further HTTP bindings of the same RPCs.

use crate::backend_tests;
use crate::harness::{Backend, TestApp};
use crate::invitations::verified_user;
use crate::organizations::{add_member, create_organization};
use reqwest::Method;
use serde_json::json;

backend_tests!(the_originals_routes_are_served);

/// The status of a call without a body.
async fn status_of(app: &TestApp, method: Method, path: &str, token: &str) -> u16 {
    app.rest(method, path, token, None).await.0.as_u16()
}

async fn the_originals_routes_are_served(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, owner) = verified_user(&app, "owner@example.com").await;
    let (guest_id, guest) = verified_user(&app, "guest@example.com").await;
    let organization = create_organization(&app, &owner.access, "acme").await;
    let by_organization = format!("/api/v1/invitations/organizations/{organization}");

    // Invitations, the original's way: by organization, by id, mine.
    let (status, invitation) = app
        .rest(
            Method::POST,
            &by_organization,
            &owner.access,
            Some(json!({ "email": "guest@example.com" })),
        )
        .await;
    assert_eq!(status, 201, "{invitation}");
    let invitation_id = invitation["id"].as_str().unwrap();
    let (status, listed) = app
        .rest(Method::GET, &by_organization, &owner.access, None)
        .await;
    assert_eq!(
        (status.as_u16(), listed["invitations"][0]["id"].as_str()),
        (200, Some(invitation_id))
    );
    let by_id = format!("/api/v1/invitations/{invitation_id}");
    let (status, read) = app.rest(Method::GET, &by_id, &owner.access, None).await;
    assert_eq!(
        (status.as_u16(), read["email"].as_str()),
        (200, Some("guest@example.com"))
    );
    assert_eq!(
        status_of(
            &app,
            Method::POST,
            &format!("{by_id}/resend"),
            &owner.access
        )
        .await,
        200
    );
    let (status, mine) = app
        .rest(Method::GET, "/api/v1/invitations/me", &guest.access, None)
        .await;
    assert_eq!(
        (
            status.as_u16(),
            mine["invitations"].as_array().map(Vec::len)
        ),
        (200, Some(1))
    );
    // The invitee does not manage the organization's invitations, by either route.
    assert_eq!(
        status_of(&app, Method::GET, &by_id, &guest.access).await,
        404
    );
    assert_eq!(
        status_of(&app, Method::DELETE, &by_id, &owner.access).await,
        200
    );
    let (status, revoked) = app.rest(Method::GET, &by_id, &owner.access, None).await;
    assert_eq!(
        (status.as_u16(), revoked["status"].as_str()),
        (200, Some("INVITATION_STATUS_REVOKED"))
    );

    // Members leave by the member in the query.
    add_member(
        &app,
        &owner.access,
        &organization,
        &guest_id,
        json!(["member"]),
    )
    .await;
    assert_eq!(
        status_of(
            &app,
            Method::DELETE,
            &format!("/api/v1/organizations/{organization}/members?user_id={guest_id}"),
            &owner.access
        )
        .await,
        200
    );
    assert_eq!(
        status_of(
            &app,
            Method::GET,
            &format!("/api/v1/organizations/{organization}/members/{guest_id}"),
            &owner.access
        )
        .await,
        404
    );

    // Team members too.
    add_member(
        &app,
        &owner.access,
        &organization,
        &guest_id,
        json!(["member"]),
    )
    .await;
    let (_, team) = app
        .rest(
            Method::POST,
            "/api/v1/teams",
            &owner.access,
            Some(json!({ "organization_id": organization, "name": "Core", "slug": "core" })),
        )
        .await;
    let team_members = format!("/api/v1/teams/{}/members", team["id"].as_str().unwrap());
    let (status, _) = app
        .rest(
            Method::POST,
            &team_members,
            &owner.access,
            Some(json!({ "user_id": guest_id })),
        )
        .await;
    assert_eq!(status, 201);
    assert_eq!(
        status_of(
            &app,
            Method::DELETE,
            &format!("{team_members}?user_id={guest_id}"),
            &owner.access
        )
        .await,
        200
    );
    let (_, listed) = app
        .rest(Method::GET, &team_members, &owner.access, None)
        .await;
    assert_eq!(listed["members"], json!([]));

    // API keys are deleted by `…/permanent`.
    let (_, created) = app
        .rest(
            Method::POST,
            "/api/v1/api-keys",
            &owner.access,
            Some(json!({ "name": "ci" })),
        )
        .await;
    let key_id = created["api_key"]["id"].as_str().unwrap();
    assert_eq!(
        status_of(
            &app,
            Method::DELETE,
            &format!("/api/v1/api-keys/{key_id}/permanent"),
            &owner.access
        )
        .await,
        200
    );
    assert_eq!(
        status_of(
            &app,
            Method::GET,
            &format!("/api/v1/api-keys/{key_id}"),
            &owner.access
        )
        .await,
        404
    );
}
