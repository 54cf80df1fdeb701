//! `keel.flag.v1.FeatureFlagService`.

use super::{access, id, principal, timestamp};
use crate::api::pb::keel::flag::v1::feature_flag_service_server::FeatureFlagService;
use crate::api::pb::keel::flag::v1::*;
use crate::domain::flags::{self, FlagChange};
use std::collections::BTreeSet;
use std::sync::Arc;
use tonic::{Request, Response, Status};
use uuid::Uuid;

pub struct FeatureFlagApi {
    flags: Arc<flags::FeatureFlagService>,
}

impl FeatureFlagApi {
    pub fn new(flags: Arc<flags::FeatureFlagService>) -> Self {
        Self { flags }
    }
}

fn ids(field: &str, raw: &[String]) -> Result<BTreeSet<Uuid>, Status> {
    raw.iter().map(|one| id(field, one)).collect()
}

fn targeting_from_proto(targeting: Option<Targeting>) -> Result<flags::Targeting, Status> {
    let targeting = targeting.unwrap_or_default();
    Ok(flags::Targeting {
        user_ids: ids("targeting.user_ids", &targeting.user_ids)?,
        emails: targeting.emails.into_iter().collect(),
        email_domains: targeting.email_domains.into_iter().collect(),
        organization_ids: ids("targeting.organization_ids", &targeting.organization_ids)?,
    })
}

fn flag_to_proto(flag: flags::FeatureFlag) -> FeatureFlag {
    let text = |ids: BTreeSet<Uuid>| ids.iter().map(Uuid::to_string).collect();
    FeatureFlag {
        id: flag.id.to_string(),
        name: flag.name,
        description: flag.description,
        is_enabled: flag.is_enabled,
        rollout_percentage: flag.rollout,
        targeting_rules: Some(Targeting {
            user_ids: text(flag.targeting.user_ids),
            emails: flag.targeting.emails.into_iter().collect(),
            email_domains: flag.targeting.email_domains.into_iter().collect(),
            organization_ids: text(flag.targeting.organization_ids),
        }),
        created_at: Some(timestamp(flag.created_at)),
        updated_at: Some(timestamp(flag.updated_at)),
    }
}

fn organization(raw: &str) -> Result<Option<Uuid>, Status> {
    (!raw.is_empty())
        .then(|| id("organization_id", raw))
        .transpose()
}

#[tonic::async_trait]
impl FeatureFlagService for FeatureFlagApi {
    async fn create_feature_flag(
        &self,
        request: Request<CreateFeatureFlagRequest>,
    ) -> Result<Response<CreateFeatureFlagResponse>, Status> {
        let caller = principal(&request)?;
        let body = request.into_inner();
        let flag = self
            .flags
            .create(
                &caller,
                &body.name,
                &body.description,
                body.is_enabled,
                body.rollout_percentage.unwrap_or(1.0),
                targeting_from_proto(body.targeting_rules)?,
            )
            .await?;
        Ok(Response::new(CreateFeatureFlagResponse {
            flag: Some(flag_to_proto(flag)),
        }))
    }

    async fn list_feature_flags(
        &self,
        _request: Request<ListFeatureFlagsRequest>,
    ) -> Result<Response<ListFeatureFlagsResponse>, Status> {
        let flags = self.flags.list().await?;
        Ok(Response::new(ListFeatureFlagsResponse {
            flags: flags.into_iter().map(flag_to_proto).collect(),
        }))
    }

    async fn get_feature_flag(
        &self,
        request: Request<GetFeatureFlagRequest>,
    ) -> Result<Response<GetFeatureFlagResponse>, Status> {
        let flag_id = id("flag_id", &request.get_ref().flag_id)?;
        let flag = self.flags.get(flag_id).await?;
        Ok(Response::new(GetFeatureFlagResponse {
            flag: Some(flag_to_proto(flag)),
        }))
    }

    async fn update_feature_flag(
        &self,
        request: Request<UpdateFeatureFlagRequest>,
    ) -> Result<Response<UpdateFeatureFlagResponse>, Status> {
        let caller = principal(&request)?;
        let body = request.into_inner();
        let change = FlagChange {
            description: body.description,
            is_enabled: body.is_enabled,
            rollout: body.rollout_percentage,
            targeting: None,
        };
        let flag = self
            .flags
            .update(&caller, id("flag_id", &body.flag_id)?, change)
            .await?;
        Ok(Response::new(UpdateFeatureFlagResponse {
            flag: Some(flag_to_proto(flag)),
        }))
    }

    async fn set_feature_flag_targeting(
        &self,
        request: Request<SetFeatureFlagTargetingRequest>,
    ) -> Result<Response<SetFeatureFlagTargetingResponse>, Status> {
        let caller = principal(&request)?;
        let body = request.into_inner();
        let change = FlagChange {
            targeting: Some(targeting_from_proto(body.targeting)?),
            ..FlagChange::default()
        };
        let flag = self
            .flags
            .update(&caller, id("flag_id", &body.flag_id)?, change)
            .await?;
        Ok(Response::new(SetFeatureFlagTargetingResponse {
            flag: Some(flag_to_proto(flag)),
        }))
    }

    async fn delete_feature_flag(
        &self,
        request: Request<DeleteFeatureFlagRequest>,
    ) -> Result<Response<DeleteFeatureFlagResponse>, Status> {
        let caller = principal(&request)?;
        let flag_id = id("flag_id", &request.get_ref().flag_id)?;
        self.flags.delete(&caller, flag_id).await?;
        Ok(Response::new(DeleteFeatureFlagResponse {}))
    }

    async fn check_feature_flag(
        &self,
        request: Request<CheckFeatureFlagRequest>,
    ) -> Result<Response<CheckFeatureFlagResponse>, Status> {
        let caller = principal(&request)?;
        let body = request.into_inner();
        let organization_id = organization(&body.organization_id)?;
        let names = [body.flag_name];
        let checked = self.flags.check(&caller, &names, organization_id).await?;
        let [(flag_name, is_enabled)] = <[_; 1]>::try_from(checked)
            .map_err(|_| Status::internal("one flag asked, one answered"))?;
        Ok(Response::new(CheckFeatureFlagResponse {
            flag_name,
            is_enabled,
        }))
    }

    async fn check_feature_flags(
        &self,
        request: Request<CheckFeatureFlagsRequest>,
    ) -> Result<Response<CheckFeatureFlagsResponse>, Status> {
        let caller = principal(&request)?;
        let body = request.into_inner();
        let organization_id = organization(&body.organization_id)?;
        let checked = self
            .flags
            .check(&caller, &body.flag_names, organization_id)
            .await?;
        Ok(Response::new(CheckFeatureFlagsResponse {
            flags: checked.into_iter().collect(),
        }))
    }

    async fn list_feature_flag_overrides(
        &self,
        request: Request<ListFeatureFlagOverridesRequest>,
    ) -> Result<Response<ListFeatureFlagOverridesResponse>, Status> {
        let access = access(&request)?;
        let overrides = self.flags.overrides(&access).await?;
        Ok(Response::new(ListFeatureFlagOverridesResponse {
            overrides: overrides
                .into_iter()
                .map(|(name, decided)| override_to_proto(name, decided))
                .collect(),
        }))
    }

    async fn set_feature_flag_override(
        &self,
        request: Request<SetFeatureFlagOverrideRequest>,
    ) -> Result<Response<SetFeatureFlagOverrideResponse>, Status> {
        let access = access(&request)?;
        let body = request.into_inner();
        let decided = self
            .flags
            .set_override(&access, &body.flag_name, body.is_enabled)
            .await?;
        Ok(Response::new(SetFeatureFlagOverrideResponse {
            r#override: Some(override_to_proto(body.flag_name, decided)),
        }))
    }

    async fn delete_feature_flag_override(
        &self,
        request: Request<DeleteFeatureFlagOverrideRequest>,
    ) -> Result<Response<DeleteFeatureFlagOverrideResponse>, Status> {
        let access = access(&request)?;
        self.flags
            .delete_override(&access, &request.get_ref().flag_name)
            .await?;
        Ok(Response::new(DeleteFeatureFlagOverrideResponse {}))
    }
}

fn override_to_proto(flag_name: String, decided: flags::FlagOverride) -> FeatureFlagOverride {
    FeatureFlagOverride {
        flag_name,
        is_enabled: decided.is_enabled,
        updated_at: Some(timestamp(decided.updated_at)),
    }
}
