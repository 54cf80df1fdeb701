//! Passkeys (WebAuthn): registered by a signed-in user, then a first factor on their own
//! (usernameless: the authenticator names the account) or a second factor after a password.
//!
//! `webauthn-rs` runs the ceremonies' checks (challenge, origin, relying party, user
//! verification, signature, counter); Keel keeps each started ceremony's state in the cache
//! for five minutes, spends it once, and moves a passkey's signature counter only forwards,
//! in the same statement that checks it, so a cloned authenticator or a replayed answer racing
//! the real one is refused.

use super::{AuthService, ClientInfo, LAST_SIGN_IN_METHOD, TokenPair, invalid_mfa_token, mfa_key};
use super::{account_disabled, throttle};
use crate::domain::clock::truncate_to_micros;
use crate::domain::error::{Error, ErrorKind, FieldViolation, Missing, Result};
use crate::domain::events::{Event, EventKind, Origin, PasskeyData, SignInFailureData};
use crate::domain::principal::Principal;
use crate::domain::secret;
use chrono::{DateTime, Duration, Utc};
use serde::Serialize;
use serde::de::DeserializeOwned;
use uuid::Uuid;
use webauthn_rs::prelude::{
    DiscoverableAuthentication, Passkey, PasskeyAuthentication, PasskeyRegistration,
    PublicKeyCredential, RegisterPublicKeyCredential, Url, Webauthn, WebauthnBuilder,
    WebauthnError,
};
use webauthn_rs_proto::ResidentKeyRequirement;

/// A passkey registered to an account.
#[derive(Debug, Clone)]
pub struct PasskeyRecord {
    pub id: Uuid,
    pub user_id: Uuid,
    pub name: String,
    /// The public key, its algorithm and flags, as `webauthn-rs` checks answers against it.
    pub credential: Passkey,
    /// The authenticator's signature counter at the last use (0 for synced passkeys).
    pub sign_count: u32,
    /// The passkey may be synced to other devices rather than bound to one authenticator.
    pub backup_eligible: bool,
    pub created_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
}

impl PasskeyRecord {
    pub fn credential_id(&self) -> &[u8] {
        self.credential.cred_id()
    }
}

/// A field of a new credential that `webauthn-rs` shows only in its serialised form.
fn registered_field(passkey: &Passkey, field: &str) -> Option<serde_json::Value> {
    serde_json::to_value(passkey)
        .ok()?
        .get("cred")?
        .get(field)
        .cloned()
}

#[async_trait::async_trait]
pub trait PasskeyStore: Send + Sync {
    /// `PASSKEY_TAKEN` when the credential is registered already.
    async fn insert_passkey(&self, passkey: &PasskeyRecord, events: &[Event]) -> Result<()>;
    async fn list_passkeys(&self, user_id: Uuid) -> Result<Vec<PasskeyRecord>>;
    async fn find_passkey_by_credential(
        &self,
        credential_id: &[u8],
    ) -> Result<Option<PasskeyRecord>>;
    async fn rename_passkey(
        &self,
        user_id: Uuid,
        id: Uuid,
        name: &str,
    ) -> Result<Option<PasskeyRecord>>;
    /// Stores the passkey as a sign-in left it, only if its counter moved forward from the
    /// stored one (or both are 0: synced passkeys count nothing). False otherwise.
    async fn record_passkey_use(&self, passkey: &PasskeyRecord, now: DateTime<Utc>)
    -> Result<bool>;
    /// False when the user has no such passkey; `LAST_SIGN_IN_METHOD` when it is the
    /// account's only way to sign in.
    async fn delete_passkey(&self, user_id: Uuid, id: Uuid, events: &[Event]) -> Result<bool>;
}

/// Who the passkeys are for: the relying party id (a domain) and the pages allowed to run
/// the ceremonies.
pub fn relying_party(rp_id: &str, origins: &[Url]) -> Result<Webauthn> {
    let (first, others) = origins
        .split_first()
        .ok_or_else(|| Error::internal("no passkey origins"))?;
    others
        .iter()
        .fold(
            WebauthnBuilder::new(rp_id, first).map_err(Error::internal)?,
            |builder, origin| builder.append_allowed_origin(origin),
        )
        .rp_name("Keel")
        .timeout(std::time::Duration::from_secs(
            CEREMONY_LIFETIME_MINUTES as u64 * 60,
        ))
        .build()
        .map_err(Error::internal)
}

pub const PASSKEY_TAKEN: &str = "PASSKEY_TAKEN";
const PASSKEY_REJECTED: &str = "PASSKEY_REJECTED";
const CEREMONY_LIFETIME_MINUTES: i64 = 5;
const DEFAULT_NAME: &str = "Passkey";

fn not_configured() -> Error {
    Error::new(
        ErrorKind::FailedPrecondition,
        "PASSKEYS_NOT_CONFIGURED",
        "passkeys need a domain name as relying party: set KEEL_PASSKEY_RP_ID (and \
         KEEL_PASSKEY_ORIGINS)",
    )
}

fn invalid_ceremony() -> Error {
    Error::invalid_argument(
        "INVALID_CEREMONY",
        "the passkey ceremony is unknown, spent or expired, or another user's: start again",
    )
}

fn invalid_credential(error: serde_json::Error) -> Error {
    Error::invalid_fields(vec![FieldViolation::new(
        "credential",
        "INVALID_CREDENTIAL",
        format!("is not the authenticator's answer as WebAuthn JSON: {error}"),
    )])
}

fn rejected(kind: ErrorKind, error: WebauthnError) -> Error {
    Error::new(
        kind,
        PASSKEY_REJECTED,
        format!("the passkey was refused: {error}"),
    )
}

fn unknown_passkey() -> Error {
    Error::unauthenticated(
        PASSKEY_REJECTED,
        "the passkey was refused: it is not registered to any account",
    )
}

fn possible_clone() -> Error {
    Error::unauthenticated(
        PASSKEY_REJECTED,
        "the passkey was refused: its signature counter went backwards, as a copied \
         authenticator's would; sign in another way and remove it",
    )
}

fn credential<T: DeserializeOwned>(json: serde_json::Value) -> Result<T> {
    serde_json::from_value(json).map_err(invalid_credential)
}

fn options_json(options: &impl Serialize) -> Result<serde_json::Map<String, serde_json::Value>> {
    match serde_json::to_value(options).map_err(Error::internal)? {
        serde_json::Value::Object(object) => Ok(object),
        _ => Err(Error::internal("WebAuthn options are not an object")),
    }
}

fn ceremony_key(kind: &str, id: &str) -> String {
    format!("passkey-{kind}:{}", secret::digest_hex(id))
}

/// A registration waiting for the authenticator's answer.
#[derive(Serialize, serde::Deserialize)]
struct PendingRegistration {
    user_id: Uuid,
    state: PasskeyRegistration,
}

/// A started ceremony, for the client: its id and the options for the browser.
pub struct PasskeyCeremony {
    pub id: String,
    pub options: serde_json::Map<String, serde_json::Value>,
}

impl AuthService {
    fn relying_party(&self) -> Result<&Webauthn> {
        self.webauthn.as_deref().ok_or_else(not_configured)
    }

    async fn park<T: Serialize>(&self, key: &str, state: &T) -> Result<()> {
        let encoded = serde_json::to_vec(state).map_err(Error::internal)?;
        let ttl = Duration::minutes(CEREMONY_LIFETIME_MINUTES)
            .to_std()
            .map_err(Error::internal)?;
        self.cache.set(key, &encoded, ttl).await
    }

    async fn unpark<T: DeserializeOwned>(&self, key: &str) -> Result<T> {
        self.cache
            .take(key)
            .await?
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .ok_or_else(invalid_ceremony)
    }

    pub async fn start_passkey_registration(&self, caller: &Principal) -> Result<PasskeyCeremony> {
        caller.session_id()?;
        let webauthn = self.relying_party()?;
        let user = &caller.user;
        let registered = self.passkeys.list_passkeys(user.id).await?;
        let exclude = registered
            .iter()
            .map(|passkey| passkey.credential.cred_id().clone())
            .collect();
        let display_name = if user.full_name.is_empty() {
            &user.email
        } else {
            &user.full_name
        };
        let (mut options, state) = webauthn
            .start_passkey_registration(user.id, &user.email, display_name, Some(exclude))
            .map_err(Error::internal)?;
        // Discoverable where the authenticator can keep one, for the usernameless sign-in.
        if let Some(selection) = options.public_key.authenticator_selection.as_mut() {
            selection.resident_key = Some(ResidentKeyRequirement::Preferred);
        }
        let id = secret::generate();
        let pending = PendingRegistration {
            user_id: user.id,
            state,
        };
        self.park(&ceremony_key("registration", &id), &pending)
            .await?;
        Ok(PasskeyCeremony {
            id,
            options: options_json(&options)?,
        })
    }

    pub async fn finish_passkey_registration(
        &self,
        caller: &Principal,
        registration_id: &str,
        name: &str,
        answer: serde_json::Value,
    ) -> Result<PasskeyRecord> {
        caller.session_id()?;
        let webauthn = self.relying_party()?;
        let answer: RegisterPublicKeyCredential = credential(answer)?;
        let pending: PendingRegistration = self
            .unpark(&ceremony_key("registration", registration_id))
            .await?;
        if pending.user_id != caller.user.id {
            return Err(invalid_ceremony());
        }
        let passkey = webauthn
            .finish_passkey_registration(&answer, &pending.state)
            .map_err(|error| rejected(ErrorKind::InvalidArgument, error))?;
        let name = name.trim();
        let record = PasskeyRecord {
            id: Uuid::now_v7(),
            user_id: caller.user.id,
            name: if name.is_empty() { DEFAULT_NAME } else { name }.to_owned(),
            sign_count: registered_field(&passkey, "counter")
                .and_then(|counter| counter.as_u64())
                .and_then(|counter| u32::try_from(counter).ok())
                .unwrap_or(0),
            backup_eligible: registered_field(&passkey, "backup_eligible")
                .and_then(|flag| flag.as_bool())
                .unwrap_or(false),
            credential: passkey,
            created_at: truncate_to_micros(self.clock.now()),
            last_used_at: None,
        };
        let added = self.passkey_event(EventKind::UserPasskeyAdded, caller, &record);
        self.passkeys.insert_passkey(&record, &[added]).await?;
        tracing::info!(user_id = %caller.user.id, passkey_id = %record.id, "passkey registered");
        Ok(record)
    }

    pub async fn list_passkeys(&self, user_id: Uuid) -> Result<Vec<PasskeyRecord>> {
        self.passkeys.list_passkeys(user_id).await
    }

    pub async fn rename_passkey(
        &self,
        user_id: Uuid,
        passkey_id: Uuid,
        name: &str,
    ) -> Result<PasskeyRecord> {
        let name = name.trim();
        if name.is_empty() {
            return Err(Error::invalid_fields(vec![FieldViolation::new(
                "name",
                "REQUIRED",
                "is required",
            )]));
        }
        self.passkeys
            .rename_passkey(user_id, passkey_id, name)
            .await?
            .ok_or_else(|| Missing::Passkey.into())
    }

    pub async fn delete_passkey(&self, caller: &Principal, passkey_id: Uuid) -> Result<()> {
        let Some(passkey) = self
            .passkeys
            .list_passkeys(caller.user.id)
            .await?
            .into_iter()
            .find(|passkey| passkey.id == passkey_id)
        else {
            return Err(Missing::Passkey.into());
        };
        let removed = self.passkey_event(EventKind::UserPasskeyRemoved, caller, &passkey);
        if !self
            .passkeys
            .delete_passkey(caller.user.id, passkey_id, &[removed])
            .await?
        {
            return Err(Missing::Passkey.into());
        }
        Ok(())
    }

    /// Starts a usernameless sign-in: the authenticator offers the account's discoverable
    /// credential.
    pub async fn start_passkey_sign_in(&self, client: &ClientInfo) -> Result<PasskeyCeremony> {
        let webauthn = self.relying_party()?;
        self.admit_client("passkey", client).await?;
        let (options, state) = webauthn
            .start_discoverable_authentication()
            .map_err(Error::internal)?;
        let id = secret::generate();
        self.park(&ceremony_key("sign-in", &id), &state).await?;
        Ok(PasskeyCeremony {
            id,
            options: options_json(&options)?,
        })
    }

    /// Finishes a passkey sign-in: user verification was the second factor, so it ends with
    /// tokens. Refusals are failed sign-ins on the audit record (`passkey_rejected`…).
    pub async fn finish_passkey_sign_in(
        &self,
        sign_in_id: &str,
        answer: serde_json::Value,
        client: ClientInfo,
    ) -> Result<TokenPair> {
        let webauthn = self.relying_party()?;
        self.admit_client("passkey", &client).await?;
        let answer: PublicKeyCredential = credential(answer)?;
        let state: DiscoverableAuthentication =
            self.unpark(&ceremony_key("sign-in", sign_in_id)).await?;
        let origin = Origin::anonymous(&client);
        let signed_in = async {
            let (user_id, credential_id) =
                webauthn
                    .identify_discoverable_authentication(&answer)
                    .map_err(|error| rejected(ErrorKind::Unauthenticated, error))?;
            let passkey = self
                .passkeys
                .find_passkey_by_credential(credential_id)
                .await?
                .filter(|passkey| passkey.user_id == user_id)
                .ok_or_else(unknown_passkey)?;
            let verified =
                webauthn.finish_discoverable_authentication_v2(&answer, state, &passkey.credential);
            self.spend_passkey(passkey, verified).await
        };
        let user_id = match signed_in.await {
            Ok(user_id) => user_id,
            Err(error) => {
                let reason = error.reason.to_ascii_lowercase();
                let failure = SignInFailureData::new(None, "", &reason);
                return Err(self.refused(&origin, failure, error).await);
            }
        };
        let user = self.user(user_id).await?;
        let refusal = if !user.is_active {
            Some(account_disabled())
        } else if let Err(unverified) = self.require_verified(&user) {
            Some(unverified)
        } else {
            self.refuse_if_sso_enforced(&user.email).await.err()
        };
        if let Some(error) = refusal {
            let reason = error.reason.to_ascii_lowercase();
            let failure = SignInFailureData::new(Some(user.id), &user.email, &reason);
            return Err(self.refused(&origin, failure, error).await);
        }
        tracing::info!(user_id = %user.id, "signed in with a passkey");
        self.open_session(&user, client).await
    }

    /// Checks a verified assertion's counter against the stored one and records the use;
    /// answers whose passkey it was.
    async fn spend_passkey(
        &self,
        mut passkey: PasskeyRecord,
        verified: std::result::Result<webauthn_rs::prelude::AuthenticationResult, WebauthnError>,
    ) -> Result<Uuid> {
        let result = verified.map_err(|error| match error {
            WebauthnError::CredentialPossibleCompromise => possible_clone(),
            other => rejected(ErrorKind::Unauthenticated, other),
        })?;
        passkey.credential.update_credential(&result);
        passkey.sign_count = result.counter();
        passkey.backup_eligible = result.backup_eligible();
        let now = truncate_to_micros(self.clock.now());
        if !self.passkeys.record_passkey_use(&passkey, now).await? {
            tracing::warn!(passkey_id = %passkey.id, "passkey counter went backwards");
            return Err(possible_clone());
        }
        Ok(passkey.user_id)
    }

    /// Starts the second factor of a password sign-in with one of the account's passkeys.
    pub async fn start_passkey_mfa(
        &self,
        mfa_token: &str,
    ) -> Result<serde_json::Map<String, serde_json::Value>> {
        let webauthn = self.relying_party()?;
        let pending = self.pending_mfa(mfa_token).await?;
        let passkeys: Vec<Passkey> = self
            .passkeys
            .list_passkeys(pending.user_id)
            .await?
            .into_iter()
            .map(|passkey| passkey.credential)
            .collect();
        if passkeys.is_empty() {
            return Err(Error::new(
                ErrorKind::FailedPrecondition,
                "NO_PASSKEYS",
                "the account has no passkey: finish with an authenticator or backup code",
            ));
        }
        let (options, state) = webauthn
            .start_passkey_authentication(&passkeys)
            .map_err(Error::internal)?;
        self.park(&ceremony_key("mfa", mfa_token), &state).await?;
        options_json(&options)
    }

    /// Finishes a password sign-in with a passkey as its second factor.
    pub async fn finish_passkey_mfa(
        &self,
        mfa_token: &str,
        answer: serde_json::Value,
    ) -> Result<TokenPair> {
        let webauthn = self.relying_party()?;
        let answer: PublicKeyCredential = credential(answer)?;
        let pending = self.pending_mfa(mfa_token).await?;
        let state: PasskeyAuthentication = self.unpark(&ceremony_key("mfa", mfa_token)).await?;
        let user = self.user(pending.user_id).await?;
        let account = throttle::account_key(&user.email);
        self.admit_attempt(&account, &pending.client).await?;
        let verified = async {
            let passkey = self
                .passkeys
                .find_passkey_by_credential(answer.get_credential_id())
                .await?
                .filter(|passkey| passkey.user_id == user.id)
                .ok_or_else(unknown_passkey)?;
            let verified = webauthn.finish_passkey_authentication(&answer, &state);
            self.spend_passkey(passkey, verified).await
        };
        let origin = Origin::anonymous(&pending.client);
        if let Err(error) = verified.await {
            let reason = error.reason.to_ascii_lowercase();
            let failure = SignInFailureData::new(Some(user.id), &user.email, &reason);
            return Err(self.refused(&origin, failure, error).await);
        }
        // Single use: a second answer with the same token finds nothing.
        if self.cache.take(&mfa_key(mfa_token)).await?.is_none() {
            return Err(invalid_mfa_token());
        }
        self.record_success(&account).await?;
        if !user.is_active {
            let failure = SignInFailureData::new(Some(user.id), &user.email, "account_disabled");
            return Err(self.refused(&origin, failure, account_disabled()).await);
        }
        self.open_session(&user, pending.client).await
    }

    fn passkey_event(&self, kind: EventKind, caller: &Principal, passkey: &PasskeyRecord) -> Event {
        let data = PasskeyData {
            passkey_id: passkey.id,
            user_id: passkey.user_id,
            name: passkey.name.clone(),
        };
        let origin = Origin::user(caller.user.id, &caller.client);
        Event::new(kind, &origin, self.clock.as_ref(), &data)
    }
}

/// The refusal of a last passkey that is the account's only way to sign in.
pub fn last_sign_in_method() -> Error {
    Error::new(
        ErrorKind::FailedPrecondition,
        LAST_SIGN_IN_METHOD,
        "this passkey is your account's only way to sign in: set a password first (with a \
         password reset), or add another passkey or identity",
    )
}
