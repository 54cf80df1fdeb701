//! The permission catalog and custom roles: roles carry only catalog permissions, changes
//! apply on the members' next request, and nobody builds a role beyond their own rights.

use crate::backend_tests;
use crate::harness::{Backend, TestApp};
use crate::organizations::{add_member, create_organization, user};
use reqwest::Method;
use serde_json::json;

backend_tests!(
    the_permission_catalog_is_listed,
    custom_roles_grant_what_they_hold,
    roles_cannot_be_a_way_up,
);

async fn the_permission_catalog_is_listed(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, alice) = user(&app, "alice@example.com").await;
    let (status, body) = app
        .rest(Method::GET, "/api/v1/permissions", &alice.access, None)
        .await;
    assert_eq!(status, 200);
    let permissions = body["permissions"].as_array().unwrap();
    let names: Vec<&str> = permissions
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    let mut sorted = names.clone();
    sorted.sort_unstable();
    assert_eq!(names, sorted);
    let find = |name: &str| {
        permissions
            .iter()
            .find(|p| p["name"] == name)
            .cloned()
            .unwrap()
    };
    assert_eq!(find("member:create")["resource"], "member");
    assert_eq!(find("member:create")["platform"], false);
    assert_eq!(find("mail:read")["platform"], true);
    for expected in [
        "organization:update",
        "team:create",
        "invitation:create",
        "role:update",
        "quota:read",
        "file:read",
        "webhook:create",
        "audit:read",
    ] {
        assert!(names.contains(&expected), "{expected} is missing");
    }

    let organization_id = create_organization(&app, &alice.access, "acme").await;
    let (_, roles) = app
        .rest(
            Method::GET,
            &format!("/api/v1/organizations/{organization_id}/roles"),
            &alice.access,
            None,
        )
        .await;
    let system: Vec<&str> = roles["roles"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(system, ["owner", "admin", "member", "viewer"]);
    let owner = &roles["roles"][0];
    assert!(
        owner["permissions"]
            .as_array()
            .unwrap()
            .contains(&json!("organization:delete"))
    );
    assert!(
        !roles["roles"][1]["permissions"]
            .as_array()
            .unwrap()
            .contains(&json!("organization:delete"))
    );
}

async fn custom_roles_grant_what_they_hold(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, alice) = user(&app, "alice@example.com").await;
    let (bob_id, bob) = user(&app, "bob@example.com").await;
    let organization_id = create_organization(&app, &alice.access, "acme").await;
    let roles = format!("/api/v1/organizations/{organization_id}/roles");
    let members = format!("/api/v1/organizations/{organization_id}/members");

    let (status, role) = app
        .rest(
            Method::POST,
            &roles,
            &alice.access,
            Some(json!({ "name": "auditor", "description": "reads members", "permissions": ["member:read", "organization:read"] })),
        )
        .await;
    assert_eq!(status, 201, "{role}");
    assert_eq!(role["system"], false);
    let role_id = role["id"].as_str().unwrap().to_owned();
    for (body, reason) in [
        (json!({ "name": "auditor" }), "ROLE_NAME_TAKEN"),
        (json!({ "name": "owner" }), "ROLE_NAME_TAKEN"),
        (
            json!({ "name": "ops", "permissions": ["mail:read"] }),
            "INVALID_FIELDS",
        ),
        (
            json!({ "name": "ops", "permissions": ["bogus:thing"] }),
            "INVALID_FIELDS",
        ),
    ] {
        let (_, answer) = app
            .rest(Method::POST, &roles, &alice.access, Some(body.clone()))
            .await;
        assert_eq!(answer["reason"], reason, "{body}: {answer}");
    }
    let (_, by_name) = app
        .rest(
            Method::GET,
            &format!("{roles}/auditor"),
            &alice.access,
            None,
        )
        .await;
    let (_, by_id) = app
        .rest(
            Method::GET,
            &format!("{roles}/{role_id}"),
            &alice.access,
            None,
        )
        .await;
    assert_eq!(by_name, by_id);

    add_member(
        &app,
        &alice.access,
        &organization_id,
        &bob_id,
        json!(["auditor"]),
    )
    .await;
    assert_eq!(
        app.rest(Method::GET, &members, &bob.access, None).await.0,
        200
    );
    assert_eq!(
        app.status_and_reason(Method::GET, &roles, &bob.access, None)
            .await,
        (403, "PERMISSION_DENIED".into())
    );

    // Permission changes apply to holders on their next request.
    let (status, grown) = app
        .rest(
            Method::POST,
            &format!("{roles}/auditor/permissions/role:read"),
            &alice.access,
            None,
        )
        .await;
    assert_eq!(status, 200, "{grown}");
    assert_eq!(
        grown["permissions"],
        json!(["member:read", "organization:read", "role:read"])
    );
    assert_eq!(
        app.rest(Method::GET, &roles, &bob.access, None).await.0,
        200
    );
    let (status, _) = app
        .rest(
            Method::DELETE,
            &format!("{roles}/auditor/permissions/role:read"),
            &alice.access,
            None,
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        app.rest(Method::GET, &roles, &bob.access, None).await.0,
        403
    );

    // Renaming shows in memberships; deleting takes the role from its holders.
    let (status, renamed) = app
        .rest(
            Method::PUT,
            &format!("{roles}/{role_id}"),
            &alice.access,
            Some(json!({ "name": "auditors" })),
        )
        .await;
    assert_eq!(
        (status.as_u16(), &renamed["description"]),
        (200, &json!("reads members"))
    );
    let (_, bob_member) = app
        .rest(
            Method::GET,
            &format!("{members}/{bob_id}"),
            &alice.access,
            None,
        )
        .await;
    assert_eq!(bob_member["roles"], json!(["auditors"]));
    assert_eq!(
        app.status_and_reason(
            Method::PUT,
            &format!("{roles}/admin"),
            &alice.access,
            Some(json!({ "description": "x" }))
        )
        .await,
        (409, "SYSTEM_ROLE".into())
    );
    assert_eq!(
        app.status_and_reason(
            Method::DELETE,
            &format!("{roles}/nope"),
            &alice.access,
            None
        )
        .await,
        (404, "ROLE_NOT_FOUND".into())
    );
    assert_eq!(
        app.rest(
            Method::DELETE,
            &format!("{roles}/auditors"),
            &alice.access,
            None
        )
        .await
        .0,
        200
    );
    assert_eq!(
        app.rest(Method::GET, &members, &bob.access, None).await.0,
        403
    );
}

async fn roles_cannot_be_a_way_up(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, alice) = user(&app, "alice@example.com").await;
    let (bob_id, bob) = user(&app, "bob@example.com").await;
    let organization_id = create_organization(&app, &alice.access, "acme").await;
    let roles = format!("/api/v1/organizations/{organization_id}/roles");
    add_member(
        &app,
        &alice.access,
        &organization_id,
        &bob_id,
        json!(["admin"]),
    )
    .await;

    let (status, body) = app
        .rest(
            Method::POST,
            &roles,
            &alice.access,
            Some(json!({ "name": "destroyer", "permissions": ["organization:delete"] })),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    for (method, path, body) in [
        (
            Method::POST,
            roles.clone(),
            Some(json!({ "name": "mine", "permissions": ["organization:transfer"] })),
        ),
        (Method::DELETE, format!("{roles}/destroyer"), None),
        (
            Method::PUT,
            format!("{roles}/destroyer"),
            Some(json!({ "name": "harmless" })),
        ),
        (
            Method::PUT,
            format!("/api/v1/organizations/{organization_id}/members/{bob_id}"),
            Some(json!({ "roles": ["destroyer"] })),
        ),
    ] {
        assert_eq!(
            app.status_and_reason(method, &path, &bob.access, body)
                .await,
            (403, "ROLE_ESCALATION".into()),
            "{path}"
        );
    }
    let (status, _) = app
        .rest(
            Method::POST,
            &roles,
            &bob.access,
            Some(json!({ "name": "helper", "permissions": ["team:read", "member:create"] })),
        )
        .await;
    assert_eq!(status, 201);
}
