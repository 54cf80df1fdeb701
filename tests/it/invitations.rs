//! Invitations: mailed single-use links that only the invited, verified address can accept;
//! accepting twice changes nothing; resending replaces the link; revoked and expired links
//! stop working.

use crate::backend_tests;
use crate::harness::{Backend, TestApp, Tokens, grpc_reason, with_token};
use crate::organizations::{add_member, create_organization, user};
use keel::api::pb::keel::invitation::v1::invitation_service_client::InvitationServiceClient;
use keel::api::pb::keel::invitation::v1::*;
use reqwest::Method;
use serde_json::{Value, json};
use tonic::Code;

backend_tests!(
    invitations_are_accepted_by_the_invited_address_once,
    invitations_can_be_resent_revoked_and_expire,
    invitations_grant_no_more_than_the_inviter_still_may,
);

/// Registers, verifies and signs in `email` (its verification is mail number 1).
pub async fn verified_user(app: &TestApp, email: &str) -> (String, Tokens) {
    let (id, _) = user(app, email).await;
    app.verify_email(email).await;
    (id, app.login(email).await)
}

async fn accept(app: &TestApp, token: &str, tokens: &Tokens) -> (u16, Value) {
    let (status, body) = app
        .rest(
            Method::POST,
            "/api/v1/invitations/accept",
            &tokens.access,
            Some(json!({ "token": token })),
        )
        .await;
    (status.as_u16(), body)
}

async fn invitations_are_accepted_by_the_invited_address_once(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, alice) = user(&app, "alice@example.com").await;
    let (_, dave) = user(&app, "dave@example.com").await;
    let (_, eve) = verified_user(&app, "eve@example.com").await;
    let organization_id = create_organization(&app, &alice.access, "acme").await;
    let invitations = format!("/api/v1/organizations/{organization_id}/invitations");

    let (status, invitation) = app
        .rest(
            Method::POST,
            &invitations,
            &alice.access,
            Some(json!({ "email": "Dave@Example.com", "roles": ["viewer"] })),
        )
        .await;
    assert_eq!(status, 201, "{invitation}");
    assert_eq!(
        (
            &invitation["email"],
            &invitation["roles"],
            &invitation["status"],
            &invitation["organization_name"]
        ),
        (
            &json!("dave@example.com"),
            &json!(["viewer"]),
            &json!("INVITATION_STATUS_PENDING"),
            &json!("Org acme")
        )
    );
    let token = app.mailbox.token("dave@example.com", 2).await;
    let message = &app.mailbox.messages_to("dave@example.com")[1];
    assert!(
        message.contains("http://keel.test/accept-invitation?token="),
        "{message}"
    );
    assert!(message.contains("Org acme"));

    // Only the verified owner of the address accepts.
    let (status, body) = accept(&app, &token, &dave).await;
    assert_eq!(
        (status, body["reason"].as_str()),
        (409, Some("EMAIL_NOT_VERIFIED"))
    );
    let (status, body) = accept(&app, &token, &eve).await;
    assert_eq!(
        (status, body["reason"].as_str()),
        (403, Some("INVITATION_EMAIL_MISMATCH"))
    );
    let (status, body) = accept(&app, "not-a-token", &eve).await;
    assert_eq!(
        (status, body["reason"].as_str()),
        (404, Some("INVITATION_NOT_FOUND"))
    );
    // Proving the address signs out the sessions opened before it.
    app.verify_email("dave@example.com").await;
    let dave = app.login("dave@example.com").await;
    let (status, mine) = app
        .rest(Method::GET, "/api/v1/invitations", &dave.access, None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        mine["invitations"][0]["organization_id"],
        organization_id.as_str()
    );

    let (status, joined) = accept(&app, &token, &dave).await;
    assert_eq!(status, 200, "{joined}");
    assert_eq!(
        joined,
        json!({ "organization_id": organization_id, "roles": ["viewer"] })
    );
    let (status, again) = accept(&app, &token, &dave).await;
    assert_eq!((status, &again), (200, &joined));
    let (status, _) = app
        .rest(
            Method::GET,
            &format!("/api/v1/organizations/{organization_id}"),
            &dave.access,
            None,
        )
        .await;
    assert_eq!(status, 200);
    let (_, mine) = app
        .rest(Method::GET, "/api/v1/invitations", &dave.access, None)
        .await;
    assert_eq!(mine["invitations"], json!([]));

    let (_, listed) = app
        .rest(Method::GET, &invitations, &alice.access, None)
        .await;
    assert_eq!(
        listed["invitations"][0]["status"],
        "INVITATION_STATUS_ACCEPTED"
    );
    let id = listed["invitations"][0]["id"].as_str().unwrap();
    let (status, body) = app
        .rest(
            Method::POST,
            &format!("{invitations}/{id}/resend"),
            &alice.access,
            None,
        )
        .await;
    assert_eq!(
        (status.as_u16(), body["reason"].as_str()),
        (409, Some("INVITATION_CLOSED"))
    );
    let (status, body) = app
        .rest(
            Method::POST,
            &invitations,
            &alice.access,
            Some(json!({ "email": "dave@example.com" })),
        )
        .await;
    assert_eq!(
        (status.as_u16(), body["reason"].as_str()),
        (409, Some("ALREADY_MEMBER"))
    );

    // A viewer does not see the organization's invitations; an outsider does not find them.
    assert_eq!(
        app.rest(Method::GET, &invitations, &dave.access, None)
            .await
            .0,
        403
    );
    assert_eq!(
        app.rest(
            Method::GET,
            &format!("{invitations}/{id}"),
            &eve.access,
            None
        )
        .await
        .0,
        404
    );
}

async fn invitations_can_be_resent_revoked_and_expire(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, mut alice) = user(&app, "alice@example.com").await;
    let (bob_id, mut bob) = user(&app, "bob@example.com").await;
    let (_, mut frank) = verified_user(&app, "frank@example.com").await;
    let organization_id = create_organization(&app, &alice.access, "acme").await;
    add_member(
        &app,
        &alice.access,
        &organization_id,
        &bob_id,
        json!(["admin"]),
    )
    .await;
    let mut grpc = InvitationServiceClient::new(app.channel().await);
    let invite = |email: &str, roles: &[&str], days: Option<i32>, token: &str| {
        with_token(
            CreateInvitationRequest {
                organization_id: organization_id.clone(),
                email: email.to_owned(),
                roles: roles.iter().map(|role| (*role).to_owned()).collect(),
                expires_in_days: days,
            },
            token,
        )
    };

    for (request, reason) in [
        (
            invite("frank@example.com", &[], Some(31), &alice.access),
            "INVALID_FIELDS",
        ),
        (
            invite("not an address", &[], None, &alice.access),
            "INVALID_FIELDS",
        ),
        (
            invite("frank@example.com", &["owner"], None, &bob.access),
            "ROLE_ESCALATION",
        ),
    ] {
        let refused = grpc.create_invitation(request).await.unwrap_err();
        assert_eq!(grpc_reason(&refused), reason);
    }

    let invitation = grpc
        .create_invitation(invite(
            "frank@example.com",
            &["member"],
            Some(1),
            &bob.access,
        ))
        .await
        .unwrap()
        .into_inner()
        .invitation
        .unwrap();
    let first = app.mailbox.token("frank@example.com", 2).await;
    let id_request = || (organization_id.clone(), invitation.id.clone());

    // Resending replaces the link.
    let (organization, id) = id_request();
    grpc.resend_invitation(with_token(
        ResendInvitationRequest {
            organization_id: organization,
            invitation_id: id,
        },
        &alice.access,
    ))
    .await
    .unwrap();
    let second = app.mailbox.token("frank@example.com", 3).await;
    assert_ne!(first, second);
    assert_eq!(accept(&app, &first, &frank).await.0, 404);

    // Expired links are refused until resent.
    app.clock.advance(chrono::Duration::days(2));
    alice = app.login("alice@example.com").await;
    bob = app.login("bob@example.com").await;
    frank = app.login("frank@example.com").await;
    let (status, body) = accept(&app, &second, &frank).await;
    assert_eq!(
        (status, body["reason"].as_str()),
        (409, Some("INVITATION_EXPIRED"))
    );
    let (organization, id) = id_request();
    grpc.resend_invitation(with_token(
        ResendInvitationRequest {
            organization_id: organization,
            invitation_id: id,
        },
        &alice.access,
    ))
    .await
    .unwrap();
    let third = app.mailbox.token("frank@example.com", 4).await;

    // Revoked links stop working.
    let (organization, id) = id_request();
    grpc.revoke_invitation(with_token(
        RevokeInvitationRequest {
            organization_id: organization,
            invitation_id: id,
        },
        &bob.access,
    ))
    .await
    .unwrap();
    assert_eq!(accept(&app, &third, &frank).await.0, 404);
    let (organization, id) = id_request();
    let status = grpc
        .get_invitation(with_token(
            GetInvitationRequest {
                organization_id: organization,
                invitation_id: id,
            },
            &alice.access,
        ))
        .await
        .unwrap()
        .into_inner()
        .invitation
        .unwrap()
        .status;
    assert_eq!(status, i32::from(InvitationStatus::Revoked));
    let (organization, id) = id_request();
    let again = grpc
        .revoke_invitation(with_token(
            RevokeInvitationRequest {
                organization_id: organization,
                invitation_id: id,
            },
            &alice.access,
        ))
        .await
        .unwrap_err();
    assert_eq!(
        (again.code(), grpc_reason(&again).as_str()),
        (Code::FailedPrecondition, "INVITATION_CLOSED")
    );

    // A fresh invitation replaces nothing accepted and works.
    grpc.create_invitation(invite("frank@example.com", &[], None, &alice.access))
        .await
        .unwrap();
    let fresh = app.mailbox.token("frank@example.com", 5).await;
    let (status, joined) = accept(&app, &fresh, &frank).await;
    assert_eq!((status, &joined["roles"]), (200, &json!(["member"])));
}

async fn invitations_grant_no_more_than_the_inviter_still_may(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, alice) = verified_user(&app, "alice@example.com").await;
    let (bob_id, bob) = verified_user(&app, "bob@example.com").await;
    let (_, carol) = verified_user(&app, "carol@example.com").await;
    let (_, dave) = verified_user(&app, "dave@example.com").await;
    let organization_id = create_organization(&app, &alice.access, "acme").await;
    add_member(
        &app,
        &alice.access,
        &organization_id,
        &bob_id,
        json!(["admin"]),
    )
    .await;
    let (status, role) = app
        .rest(
            Method::POST,
            &format!("/api/v1/organizations/{organization_id}/roles"),
            &alice.access,
            Some(json!({ "name": "recruiter", "permissions": ["invitation:create", "invitation:read"] })),
        )
        .await;
    assert_eq!(status, 201, "{role}");
    let invite = |email: &'static str, roles: Value| {
        let app = &app;
        let path = format!("/api/v1/organizations/{organization_id}/invitations");
        let access = bob.access.clone();
        async move {
            let (status, body) = app
                .rest(
                    Method::POST,
                    &path,
                    &access,
                    Some(json!({ "email": email, "roles": roles })),
                )
                .await;
            assert_eq!(status, 201, "{body}");
            app.mailbox.token(email, 2).await
        }
    };
    let to_carol = invite("carol@example.com", json!(["admin", "viewer"])).await;

    // Bob is demoted before Carol accepts: she gets only what he may still grant.
    let (status, body) = app
        .rest(
            Method::PUT,
            &format!("/api/v1/organizations/{organization_id}/members/{bob_id}"),
            &alice.access,
            Some(json!({ "roles": ["viewer", "recruiter"] })),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, joined) = accept(&app, &to_carol, &carol).await;
    assert_eq!(status, 200, "{joined}");
    assert_eq!(joined["roles"], json!(["viewer"]));

    // Bob leaves: his pending invitation goes with him.
    let to_dave = invite("dave@example.com", json!(["viewer"])).await;
    let (status, _) = app
        .rest(
            Method::DELETE,
            &format!("/api/v1/organizations/{organization_id}/members/{bob_id}"),
            &alice.access,
            None,
        )
        .await;
    assert_eq!(status, 200);
    let (status, body) = accept(&app, &to_dave, &dave).await;
    assert_eq!(
        (status, body["reason"].as_str()),
        (409, Some("INVITATION_WITHDRAWN"))
    );
}
