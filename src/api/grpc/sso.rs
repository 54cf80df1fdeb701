//! `keel.sso.v1.SsoService`.

use super::{access, principal, timestamp};
use crate::api::pb::keel::sso::v1::sso_service_server::SsoService;
use crate::api::pb::keel::sso::v1::*;
use crate::domain::tenancy::sso::{self, ConnectionSettings};
use std::sync::Arc;
use tonic::{Request, Response, Status};

pub struct SsoApi {
    sso: Arc<sso::SsoService>,
}

impl SsoApi {
    pub fn new(sso: Arc<sso::SsoService>) -> Self {
        Self { sso }
    }
}

fn connection_to_proto(connection: sso::SsoConnection) -> SsoConnection {
    SsoConnection {
        organization_id: connection.organization_id.to_string(),
        provider: connection.provider_name(),
        issuer: connection.issuer,
        client_id: connection.client_id,
        scopes: connection.scopes,
        default_role: connection.default_role,
        enforce: connection.enforce,
        trust_mfa: connection.trust_mfa,
        groups_claim: connection.groups_claim,
        role_mappings: connection
            .role_mappings
            .into_iter()
            .map(|(group, role)| RoleMapping { group, role })
            .collect(),
        created_at: Some(timestamp(connection.created_at)),
        updated_at: Some(timestamp(connection.updated_at)),
    }
}

fn domain_to_proto(domain: sso::SsoDomain) -> SsoDomain {
    let (verification_record_name, verification_record_text) = domain.verification_record();
    SsoDomain {
        verification_record_name,
        verification_record_text,
        domain: domain.domain,
        organization_id: domain.organization_id.to_string(),
        approved: domain.approved_at.is_some(),
        created_at: Some(timestamp(domain.created_at)),
        approved_at: domain.approved_at.map(timestamp),
    }
}

#[tonic::async_trait]
impl SsoService for SsoApi {
    async fn get_sso_connection(
        &self,
        request: Request<GetSsoConnectionRequest>,
    ) -> Result<Response<GetSsoConnectionResponse>, Status> {
        let connection = self.sso.connection(&access(&request)?).await?;
        Ok(Response::new(GetSsoConnectionResponse {
            connection: Some(connection_to_proto(connection)),
        }))
    }

    async fn set_sso_connection(
        &self,
        request: Request<SetSsoConnectionRequest>,
    ) -> Result<Response<SetSsoConnectionResponse>, Status> {
        let access = access(&request)?;
        let body = request.into_inner();
        let settings = ConnectionSettings {
            issuer: body.issuer,
            client_id: body.client_id,
            client_secret: body.client_secret,
            scopes: body.scopes,
            default_role: body.default_role,
            enforce: body.enforce,
            trust_mfa: body.trust_mfa,
            groups_claim: body.groups_claim,
            role_mappings: body
                .role_mappings
                .into_iter()
                .map(|mapping| (mapping.group, mapping.role))
                .collect(),
        };
        let connection = self.sso.set_connection(&access, settings).await?;
        Ok(Response::new(SetSsoConnectionResponse {
            connection: Some(connection_to_proto(connection)),
        }))
    }

    async fn delete_sso_connection(
        &self,
        request: Request<DeleteSsoConnectionRequest>,
    ) -> Result<Response<DeleteSsoConnectionResponse>, Status> {
        self.sso.delete_connection(&access(&request)?).await?;
        Ok(Response::new(DeleteSsoConnectionResponse {}))
    }

    async fn add_sso_domain(
        &self,
        request: Request<AddSsoDomainRequest>,
    ) -> Result<Response<AddSsoDomainResponse>, Status> {
        let access = access(&request)?;
        let domain = self
            .sso
            .add_domain(&access, &request.get_ref().domain)
            .await?;
        Ok(Response::new(AddSsoDomainResponse {
            domain: Some(domain_to_proto(domain)),
        }))
    }

    async fn list_sso_domains(
        &self,
        request: Request<ListSsoDomainsRequest>,
    ) -> Result<Response<ListSsoDomainsResponse>, Status> {
        let domains = self.sso.domains(&access(&request)?).await?;
        Ok(Response::new(ListSsoDomainsResponse {
            domains: domains.into_iter().map(domain_to_proto).collect(),
        }))
    }

    async fn verify_sso_domain(
        &self,
        request: Request<VerifySsoDomainRequest>,
    ) -> Result<Response<VerifySsoDomainResponse>, Status> {
        let access = access(&request)?;
        let domain = self
            .sso
            .verify_domain(&access, &request.get_ref().domain)
            .await?;
        Ok(Response::new(VerifySsoDomainResponse {
            domain: Some(domain_to_proto(domain)),
        }))
    }

    async fn remove_sso_domain(
        &self,
        request: Request<RemoveSsoDomainRequest>,
    ) -> Result<Response<RemoveSsoDomainResponse>, Status> {
        let access = access(&request)?;
        self.sso
            .remove_domain(&access, &request.get_ref().domain)
            .await?;
        Ok(Response::new(RemoveSsoDomainResponse {}))
    }

    async fn approve_sso_domain(
        &self,
        request: Request<ApproveSsoDomainRequest>,
    ) -> Result<Response<ApproveSsoDomainResponse>, Status> {
        let caller = principal(&request)?;
        let domain = self
            .sso
            .approve_domain(&caller, &request.get_ref().domain)
            .await?;
        Ok(Response::new(ApproveSsoDomainResponse {
            domain: Some(domain_to_proto(domain)),
        }))
    }

    async fn discover_sso(
        &self,
        request: Request<DiscoverSsoRequest>,
    ) -> Result<Response<DiscoverSsoResponse>, Status> {
        let found = self.sso.discover(&request.get_ref().email).await?;
        Ok(Response::new(match found {
            Some((connection, organization_name)) => DiscoverSsoResponse {
                sso: true,
                provider: connection.provider_name(),
                organization_name,
                enforced: connection.enforce,
            },
            None => DiscoverSsoResponse::default(),
        }))
    }
}
