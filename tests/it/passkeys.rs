//! Passkeys through the doors users use, with a software authenticator
//! (`webauthn-authenticator-rs`'s soft passkey) playing the user's device and the test playing
//! the browser between it and Keel.

use crate::backend_tests;
use crate::harness::{Backend, PASSWORD, TestApp, grpc_reason, rest_violations, with_token};
use crate::totp::{enroll, mfa_token};
use keel::api::pb::keel::auth::v1::passkey_service_client::PasskeyServiceClient;
use keel::api::pb::keel::auth::v1::{
    FinishPasskeyMfaRequest, FinishPasskeyRegistrationRequest, FinishPasskeySignInRequest,
    ListPasskeysRequest, LoginRequest, RenamePasskeyRequest, StartPasskeyMfaRequest,
    StartPasskeyRegistrationRequest, StartPasskeySignInRequest,
};
use keel::api::{json_to_struct, struct_to_json};
use keel::config::Settings;
use reqwest::Method;
use serde_json::{Value, json};
use tonic::Code;
use tonic::transport::Channel;
use webauthn_authenticator_rs::WebauthnAuthenticator;
use webauthn_authenticator_rs::softpasskey::SoftPasskey;
use webauthn_rs::prelude::{CreationChallengeResponse, RequestChallengeResponse, Url};
use webauthn_rs_proto::AllowCredentials;

backend_tests!(
    passkeys_register_sign_in_and_are_managed_on_both_doors,
    a_passkey_is_a_second_factor,
    forged_cloned_and_foreign_answers_are_refused,
);

/// The page that runs the ceremonies (a single-page app beside the API).
const ORIGIN: &str = "http://localhost:3000";

/// Passkeys for pages at `ORIGIN` (the tests' public URL is no relying party).
pub fn with_passkeys(settings: &mut Settings) {
    settings.passkey_rp_id = Some("localhost".into());
    settings.passkey_origins = Some(ORIGIN.into());
}

async fn keel(backend: Backend) -> TestApp {
    TestApp::spawn_with(backend, with_passkeys).await
}

/// A user's device as the browser presents it: the soft passkey signs (with user
/// verification), and the device remembers which account each of its credentials is for, as
/// a discoverable credential does (the soft passkey keeps no user handle itself).
pub struct Device {
    passkey: SoftPasskey,
    origin: Url,
    credentials: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Device {
    pub fn new() -> Self {
        Self {
            passkey: SoftPasskey::new(true),
            origin: Url::parse(ORIGIN).unwrap(),
            credentials: Vec::new(),
        }
    }

    /// `navigator.credentials.create(options)`, answered as `PublicKeyCredential.toJSON()`.
    fn create(&mut self, options: Value) -> Value {
        let options: CreationChallengeResponse = serde_json::from_value(options).unwrap();
        let user_handle = options.public_key.user.id.to_vec();
        let created = self
            .passkey
            .do_registration(self.origin.clone(), options)
            .expect("the authenticator registers");
        self.credentials
            .push((created.raw_id.to_vec(), user_handle));
        serde_json::to_value(created).unwrap()
    }

    /// `navigator.credentials.get(options)`: with no credentials listed, the device offers
    /// its own for the relying party, with the account's user handle.
    fn get(&mut self, options: Value) -> Value {
        let mut options: RequestChallengeResponse = serde_json::from_value(options).unwrap();
        let discoverable = options.public_key.allow_credentials.is_empty();
        if discoverable {
            options.public_key.allow_credentials = self
                .credentials
                .iter()
                .map(|(id, _)| AllowCredentials {
                    type_: "public-key".into(),
                    id: id.clone(),
                    transports: None,
                })
                .collect();
        }
        let mut assertion = self
            .passkey
            .do_authentication(self.origin.clone(), options)
            .expect("the authenticator signs");
        if discoverable {
            let (_, user_handle) = &self.credentials[0];
            assertion.response.user_handle = Some(user_handle.clone());
        }
        serde_json::to_value(assertion).unwrap()
    }
}

fn object(value: Value) -> serde_json::Map<String, Value> {
    match value {
        Value::Object(object) => object,
        other => panic!("not an object: {other}"),
    }
}

async fn post(app: &TestApp, path: &str, token: &str, body: Value) -> (u16, Value) {
    let (status, body) = app.rest(Method::POST, path, token, Some(body)).await;
    (status.as_u16(), body)
}

/// Registers a passkey of `device` over REST; answers the passkey.
pub async fn register(app: &TestApp, access: &str, device: &mut Device, name: &str) -> Value {
    let (status, start) = post(
        app,
        "/api/v1/auth/passkeys/register/start",
        access,
        json!({}),
    )
    .await;
    assert_eq!(status, 200, "{start}");
    let credential = device.create(start["options"].clone());
    let (status, passkey) = post(
        app,
        "/api/v1/auth/passkeys/register/finish",
        access,
        json!({ "registration_id": start["registration_id"], "name": name, "credential": credential }),
    )
    .await;
    assert_eq!(status, 201, "{passkey}");
    passkey
}

async fn start_sign_in(app: &TestApp) -> Value {
    let (status, start) = post(app, "/api/v1/auth/passkeys/login/start", "", json!({})).await;
    assert_eq!(status, 200, "{start}");
    start
}

/// A usernameless sign-in over REST; answers status and body.
async fn rest_sign_in(app: &TestApp, device: &mut Device) -> (u16, Value) {
    let start = start_sign_in(app).await;
    let credential = device.get(start["options"].clone());
    post(
        app,
        "/api/v1/auth/passkeys/login/finish",
        "",
        json!({ "sign_in_id": start["sign_in_id"], "credential": credential }),
    )
    .await
}

async fn client(app: &TestApp) -> PasskeyServiceClient<Channel> {
    PasskeyServiceClient::new(app.channel().await)
}

fn json_of(options: Option<prost_types::Struct>) -> Value {
    Value::Object(struct_to_json(options.expect("options")))
}

async fn email_of(app: &TestApp, access: &str) -> String {
    let (status, me) = app.rest(Method::GET, "/api/v1/auth/me", access, None).await;
    assert_eq!(status, 200, "{me}");
    me["email"].as_str().unwrap().to_owned()
}

async fn passkeys_register_sign_in_and_are_managed_on_both_doors(backend: Backend) {
    let app = keel(backend).await;
    let email = "ada@example.com";
    let tokens = app.verified(email).await;

    // REST: the options ask for user verification and a discoverable credential, for the
    // relying party the settings name.
    let (status, start) = post(
        &app,
        "/api/v1/auth/passkeys/register/start",
        &tokens.access,
        json!({}),
    )
    .await;
    assert_eq!(status, 200, "{start}");
    let public_key = &start["options"]["publicKey"];
    assert_eq!(public_key["rp"]["id"], "localhost");
    assert_eq!(public_key["user"]["name"], email);
    assert_eq!(
        public_key["authenticatorSelection"]["userVerification"],
        "required"
    );
    assert_eq!(
        public_key["authenticatorSelection"]["residentKey"],
        "preferred"
    );
    let mut laptop = Device::new();
    let credential = laptop.create(start["options"].clone());
    let finish = json!({
        "registration_id": start["registration_id"], "name": "Laptop", "credential": credential,
    });
    let (status, passkey) = post(
        &app,
        "/api/v1/auth/passkeys/register/finish",
        &tokens.access,
        finish.clone(),
    )
    .await;
    assert_eq!(status, 201, "{passkey}");
    assert_eq!(passkey["name"], "Laptop");
    assert!(passkey["last_used_at"].is_null(), "{passkey}");
    let laptop_id = passkey["id"].as_str().unwrap().to_owned();
    // A ceremony is spent once.
    let (status, answer) = post(
        &app,
        "/api/v1/auth/passkeys/register/finish",
        &tokens.access,
        finish,
    )
    .await;
    assert_eq!(
        (status, answer["reason"].as_str()),
        (400, Some("INVALID_CEREMONY"))
    );

    // A usernameless sign-in over REST opens a session for the account.
    let (status, signed_in) = rest_sign_in(&app, &mut laptop).await;
    assert_eq!(status, 200, "{signed_in}");
    assert_eq!(signed_in["token_type"], "bearer");
    assert_eq!(
        email_of(&app, signed_in["access_token"].as_str().unwrap()).await,
        email
    );

    // gRPC: a second device registers and signs in.
    let mut grpc = client(&app).await;
    let start = grpc
        .start_passkey_registration(with_token(
            StartPasskeyRegistrationRequest {},
            &tokens.access,
        ))
        .await
        .unwrap()
        .into_inner();
    let mut phone = Device::new();
    let credential = phone.create(json_of(start.options));
    let phone_key = grpc
        .finish_passkey_registration(with_token(
            FinishPasskeyRegistrationRequest {
                registration_id: start.registration_id,
                name: String::new(),
                credential: Some(json_to_struct(object(credential))),
            },
            &tokens.access,
        ))
        .await
        .unwrap()
        .into_inner()
        .passkey
        .unwrap();
    assert_eq!(
        phone_key.name, "Passkey",
        "an unnamed passkey has the default name"
    );
    let start = grpc
        .start_passkey_sign_in(StartPasskeySignInRequest {})
        .await
        .unwrap()
        .into_inner();
    let credential = phone.get(json_of(start.options));
    let signed_in = grpc
        .finish_passkey_sign_in(FinishPasskeySignInRequest {
            sign_in_id: start.sign_in_id,
            credential: Some(json_to_struct(object(credential))),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(email_of(&app, &signed_in.access_token).await, email);

    // Renamed over gRPC; both listed, both used.
    let renamed = grpc
        .rename_passkey(with_token(
            RenamePasskeyRequest {
                passkey_id: phone_key.id.clone(),
                name: "Phone".into(),
            },
            &tokens.access,
        ))
        .await
        .unwrap()
        .into_inner()
        .passkey
        .unwrap();
    assert_eq!(renamed.name, "Phone");
    let listed = grpc
        .list_passkeys(with_token(ListPasskeysRequest {}, &tokens.access))
        .await
        .unwrap()
        .into_inner()
        .passkeys;
    let names: Vec<&str> = listed.iter().map(|passkey| passkey.name.as_str()).collect();
    assert_eq!(names, ["Laptop", "Phone"]);
    assert!(listed.iter().all(|passkey| passkey.last_used_at.is_some()));

    // Another user sees none of them and cannot touch them.
    let other = app.verified("grace@example.com").await;
    let (status, theirs) = app
        .rest(Method::GET, "/api/v1/auth/passkeys", &other.access, None)
        .await;
    assert_eq!((status.as_u16(), &theirs["passkeys"]), (200, &json!([])));
    let laptop_path = format!("/api/v1/auth/passkeys/{laptop_id}");
    for (method, body) in [
        (Method::DELETE, None),
        (Method::PATCH, Some(json!({ "name": "Mine" }))),
    ] {
        let (status, reason) = app
            .status_and_reason(method, &laptop_path, &other.access, body)
            .await;
        assert_eq!((status, reason.as_str()), (404, "PASSKEY_NOT_FOUND"));
    }

    // Removed over REST, the laptop's passkey signs in no more.
    let (status, _) = app
        .rest(Method::DELETE, &laptop_path, &tokens.access, None)
        .await;
    assert_eq!(status, 200);
    let (status, refused) = rest_sign_in(&app, &mut laptop).await;
    assert_eq!(
        (status, refused["reason"].as_str()),
        (401, Some("PASSKEY_REJECTED")),
        "{refused}"
    );
}

async fn a_passkey_is_a_second_factor(backend: Backend) {
    let app = keel(backend).await;
    let email = "ada@example.com";
    let tokens = app.verified(email).await;
    enroll(&app, &tokens.access).await;
    let mut device = Device::new();
    register(&app, &tokens.access, &mut device, "Key").await;

    // REST: after the password, the passkey instead of a code; the MFA token is spent.
    let mfa = mfa_token(&app, email).await;
    let (status, start) = post(
        &app,
        "/api/v1/auth/login/mfa/passkey/start",
        "",
        json!({ "mfa_token": mfa }),
    )
    .await;
    assert_eq!(status, 200, "{start}");
    assert_eq!(
        start["options"]["publicKey"]["allowCredentials"]
            .as_array()
            .map(Vec::len),
        Some(1),
        "the account's passkeys are offered: {start}"
    );
    let finish = json!({ "mfa_token": mfa, "credential": device.get(start["options"].clone()) });
    let (status, signed_in) = post(
        &app,
        "/api/v1/auth/login/mfa/passkey/finish",
        "",
        finish.clone(),
    )
    .await;
    assert_eq!(status, 200, "{signed_in}");
    assert_eq!(
        email_of(&app, signed_in["access_token"].as_str().unwrap()).await,
        email
    );
    let (status, spent) = post(
        &app,
        "/api/v1/auth/login/mfa",
        "",
        json!({ "mfa_token": mfa, "code": "123456" }),
    )
    .await;
    assert_eq!(
        (status, spent["reason"].as_str()),
        (401, Some("INVALID_MFA_TOKEN"))
    );

    // gRPC, from the password sign-in on.
    let login = app
        .grpc()
        .await
        .login(LoginRequest {
            email: email.into(),
            password: PASSWORD.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(login.mfa_required && login.access_token.is_empty());
    let mut grpc = client(&app).await;
    let options = grpc
        .start_passkey_mfa(StartPasskeyMfaRequest {
            mfa_token: login.mfa_token.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .options;
    let credential = device.get(json_of(options));
    let signed_in = grpc
        .finish_passkey_mfa(FinishPasskeyMfaRequest {
            mfa_token: login.mfa_token,
            credential: Some(json_to_struct(object(credential))),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(email_of(&app, &signed_in.access_token).await, email);

    // An account without passkeys is told to use its code.
    let other = app.verified("grace@example.com").await;
    enroll(&app, &other.access).await;
    let mfa = mfa_token(&app, "grace@example.com").await;
    let (status, refused) = post(
        &app,
        "/api/v1/auth/login/mfa/passkey/start",
        "",
        json!({ "mfa_token": mfa }),
    )
    .await;
    assert_eq!(
        (status, refused["reason"].as_str()),
        (409, Some("NO_PASSKEYS"))
    );
}

async fn forged_cloned_and_foreign_answers_are_refused(backend: Backend) {
    let app = keel(backend).await;
    let tokens = app.verified("ada@example.com").await;
    let mut device = Device::new();
    register(&app, &tokens.access, &mut device, "Key").await;

    let finish = |sign_in: &Value, credential: Value| json!({ "sign_in_id": sign_in["sign_in_id"], "credential": credential });
    let refusal = |(status, body): (u16, Value)| {
        (
            status,
            body["reason"].as_str().unwrap_or_default().to_owned(),
            body["message"].as_str().unwrap_or_default().to_owned(),
        )
    };

    // A clone: an answer signed earlier (a lower counter) arrives after a later one.
    let (early, late) = (start_sign_in(&app).await, start_sign_in(&app).await);
    let early_answer = device.get(early["options"].clone());
    let late_answer = device.get(late["options"].clone());
    let (status, _) = post(
        &app,
        "/api/v1/auth/passkeys/login/finish",
        "",
        finish(&late, late_answer),
    )
    .await;
    assert_eq!(status, 200);
    let (status, reason, message) = refusal(
        post(
            &app,
            "/api/v1/auth/passkeys/login/finish",
            "",
            finish(&early, early_answer),
        )
        .await,
    );
    assert_eq!((status, reason.as_str()), (401, "PASSKEY_REJECTED"));
    assert!(message.contains("counter"), "{message}");

    // A forged signature.
    let sign_in = start_sign_in(&app).await;
    let mut forged = device.get(sign_in["options"].clone());
    let signature = forged["response"]["signature"].as_str().unwrap().to_owned();
    let flipped = if signature.starts_with('A') { "B" } else { "A" };
    forged["response"]["signature"] = json!(format!("{flipped}{}", &signature[1..]));
    let (status, reason, _) = refusal(
        post(
            &app,
            "/api/v1/auth/passkeys/login/finish",
            "",
            finish(&sign_in, forged),
        )
        .await,
    );
    assert_eq!((status, reason.as_str()), (401, "PASSKEY_REJECTED"));

    // A page on an origin the settings do not list (a phishing site relaying the challenge).
    let sign_in = start_sign_in(&app).await;
    device.origin = Url::parse("https://evil.localhost:3000").unwrap();
    let answer = device.get(sign_in["options"].clone());
    let (status, reason, _) = refusal(
        post(
            &app,
            "/api/v1/auth/passkeys/login/finish",
            "",
            finish(&sign_in, answer),
        )
        .await,
    );
    assert_eq!((status, reason.as_str()), (401, "PASSKEY_REJECTED"));

    // Not a WebAuthn answer at all, or none: refused before the ceremony is spent, so the
    // real answer still signs in.
    device.origin = Url::parse(ORIGIN).unwrap();
    let sign_in = start_sign_in(&app).await;
    for body in [
        finish(&sign_in, json!({ "id": "x" })),
        json!({ "sign_in_id": sign_in["sign_in_id"] }),
    ] {
        let (status, answer) = post(&app, "/api/v1/auth/passkeys/login/finish", "", body).await;
        assert_eq!(status, 400, "{answer}");
        assert_eq!(rest_violations(&answer)[0].0, "credential", "{answer}");
    }
    let answer = device.get(sign_in["options"].clone());
    let (status, signed_in) = post(
        &app,
        "/api/v1/auth/passkeys/login/finish",
        "",
        finish(&sign_in, answer.clone()),
    )
    .await;
    assert_eq!(status, 200, "{signed_in}");

    // A ceremony never started (over gRPC).
    let unknown = client(&app)
        .await
        .finish_passkey_sign_in(FinishPasskeySignInRequest {
            sign_in_id: "never-started".into(),
            credential: Some(json_to_struct(object(answer))),
        })
        .await
        .unwrap_err();
    assert_eq!(
        (unknown.code(), grpc_reason(&unknown).as_str()),
        (Code::InvalidArgument, "INVALID_CEREMONY")
    );

    // An instance whose public URL cannot be a relying party says so.
    let plain = TestApp::spawn(backend).await;
    let (status, answer) = post(&plain, "/api/v1/auth/passkeys/login/start", "", json!({})).await;
    assert_eq!(
        (status, answer["reason"].as_str()),
        (409, Some("PASSKEYS_NOT_CONFIGURED"))
    );
}
