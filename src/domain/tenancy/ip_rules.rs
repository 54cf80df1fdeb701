//! Which client addresses may call into an organization: its allow and deny lists of CIDR
//! blocks (IPv4 and IPv6), checked by `AccessControl` on every call admitted to it. The
//! instance's own deny list (`KEEL_IP_DENY`) is made of the same blocks.

use super::access::{Access, AccessControl};
use crate::domain::clock::Clock;
use crate::domain::error::{Error, ErrorKind, FieldViolation, Result};
use crate::domain::events::{Event, EventKind, IpRestrictionsData};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::sync::Arc;
use uuid::Uuid;

/// Entries each list may hold.
pub const MAX_ENTRIES: usize = 200;

/// An address block: `10.0.0.0/8`, `2001:db8::/32`, or one address (`203.0.113.7`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct AddressBlock(IpNet);

#[derive(Debug, thiserror::Error)]
#[error("`{0}` is not an IP address or CIDR block (10.0.0.0/8, 2001:db8::/32, 203.0.113.7)")]
pub struct InvalidBlock(String);

impl FromStr for AddressBlock {
    type Err = InvalidBlock;

    /// Host bits are dropped: `10.1.2.3/8` is `10.0.0.0/8`.
    fn from_str(text: &str) -> std::result::Result<Self, InvalidBlock> {
        let text = text.trim();
        let network = match text.parse::<IpNet>() {
            Ok(network) => network,
            Err(_) => IpNet::from(
                text.parse::<IpAddr>()
                    .map_err(|_| InvalidBlock(text.to_owned()))?,
            ),
        };
        Ok(Self(network.trunc()))
    }
}

impl fmt::Display for AddressBlock {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(formatter)
    }
}

impl AddressBlock {
    /// IPv4 addresses mapped into IPv6 (`::ffff:10.0.0.1`) count as the IPv4 address.
    pub fn contains(&self, address: IpAddr) -> bool {
        self.0.contains(&address.to_canonical())
    }
}

/// An organization's lists. With an allow list, only its addresses get in; the deny list
/// refuses its addresses either way.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpRules {
    pub allow: Vec<AddressBlock>,
    pub deny: Vec<AddressBlock>,
}

impl IpRules {
    pub fn is_empty(&self) -> bool {
        self.allow.is_empty() && self.deny.is_empty()
    }

    /// Whether a caller from `address` gets in; an unknown address gets in only where no
    /// rule is set.
    pub fn admits(&self, address: Option<&str>) -> bool {
        if self.is_empty() {
            return true;
        }
        let Some(address) = address.and_then(|address| address.parse::<IpAddr>().ok()) else {
            return false;
        };
        let matches = |list: &[AddressBlock]| list.iter().any(|block| block.contains(address));
        !matches(&self.deny) && (self.allow.is_empty() || matches(&self.allow))
    }
}

/// The answer to a call from an address an organization (or the instance) refuses.
pub fn not_allowed() -> Error {
    Error::permission_denied(
        "IP_NOT_ALLOWED",
        "calls from your network address are not allowed here",
    )
}

#[async_trait::async_trait]
pub trait IpRuleStore: Send + Sync {
    /// The organization's lists (empty when it has none).
    async fn find_ip_rules(&self, organization_id: Uuid) -> Result<IpRules>;
    /// Replaces them, with `events`, in one transaction.
    async fn save_ip_rules(
        &self,
        organization_id: Uuid,
        rules: &IpRules,
        events: &[Event],
    ) -> Result<()>;
}

/// Reading and changing organizations' IP restrictions.
pub struct IpRestrictionService {
    store: Arc<dyn IpRuleStore>,
    access: Arc<AccessControl>,
    clock: Arc<dyn Clock>,
}

impl IpRestrictionService {
    pub fn new(
        store: Arc<dyn IpRuleStore>,
        access: Arc<AccessControl>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            store,
            access,
            clock,
        }
    }

    pub async fn get(&self, access: &Access) -> Result<IpRules> {
        self.store.find_ip_rules(access.organization_id).await
    }

    /// Replaces the lists, each entry written in network form, deduplicated and sorted. The
    /// caller's own address must pass the new lists, so nobody locks themselves out by
    /// mistake. Applies from the next call, on every replica.
    pub async fn set(&self, access: &Access, allow: &[String], deny: &[String]) -> Result<IpRules> {
        let rules = IpRules {
            allow: normalized("allow", allow)?,
            deny: normalized("deny", deny)?,
        };
        if !rules.admits(access.principal.client.ip_address.as_deref()) {
            return Err(Error::new(
                ErrorKind::FailedPrecondition,
                "WOULD_LOCK_YOU_OUT",
                format!(
                    "these lists refuse your own address ({}): add it to allow, or take it \
                     out of deny",
                    access
                        .principal
                        .client
                        .ip_address
                        .as_deref()
                        .unwrap_or("unknown")
                ),
            ));
        }
        let event = Event::new(
            EventKind::OrganizationIpRestrictionsUpdated,
            &access.origin(),
            self.clock.as_ref(),
            &IpRestrictionsData {
                organization_id: access.organization_id,
                allow: rules.allow.iter().map(AddressBlock::to_string).collect(),
                deny: rules.deny.iter().map(AddressBlock::to_string).collect(),
            },
        );
        self.store
            .save_ip_rules(access.organization_id, &rules, &[event])
            .await?;
        self.access.forget_ip_rules(access.organization_id).await?;
        Ok(rules)
    }
}

/// `entries` as blocks in network form, or a violation per entry that is not one.
fn normalized(field: &str, entries: &[String]) -> Result<Vec<AddressBlock>> {
    if entries.len() > MAX_ENTRIES {
        return Err(Error::invalid_fields(vec![FieldViolation::new(
            field,
            "repeated.max_items",
            format!("at most {MAX_ENTRIES} entries"),
        )]));
    }
    let mut blocks = Vec::new();
    let mut violations = Vec::new();
    for (index, entry) in entries.iter().enumerate() {
        match entry.parse::<AddressBlock>() {
            Ok(block) => blocks.push(block),
            Err(error) => violations.push(FieldViolation::new(
                &format!("{field}[{index}]"),
                "INVALID_CIDR",
                error.to_string(),
            )),
        }
    }
    if !violations.is_empty() {
        return Err(Error::invalid_fields(violations));
    }
    blocks.sort_unstable();
    blocks.dedup();
    Ok(blocks)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(allow: &[&str], deny: &[&str]) -> IpRules {
        let owned = |list: &[&str]| list.iter().map(|entry| entry.parse().unwrap()).collect();
        IpRules {
            allow: owned(allow),
            deny: owned(deny),
        }
    }

    #[test]
    fn blocks_parse_in_network_form() {
        let block = |text: &str| text.parse::<AddressBlock>().map(|block| block.to_string());
        assert_eq!(block("10.1.2.3/8").unwrap(), "10.0.0.0/8");
        assert_eq!(block(" 203.0.113.7 ").unwrap(), "203.0.113.7/32");
        assert_eq!(block("2001:db8::1/32").unwrap(), "2001:db8::/32");
        assert!(block("10.0.0.0/33").is_err());
        let all_v4: AddressBlock = "0.0.0.0/0".parse().unwrap();
        assert!(all_v4.contains("203.0.113.7".parse().unwrap()));
        assert!(all_v4.contains("::ffff:203.0.113.7".parse().unwrap()));
        assert!(!all_v4.contains("2001:db8::1".parse().unwrap()));
        assert!(block("example.com").is_err());
        assert!(block("").is_err());
    }

    #[test]
    fn deny_wins_and_allow_narrows() {
        let lists = rules(&["10.0.0.0/8", "2001:db8::/32"], &["10.9.0.0/16"]);
        assert!(lists.admits(Some("10.1.2.3")));
        assert!(lists.admits(Some("::ffff:10.1.2.3")), "IPv4-mapped IPv6");
        assert!(lists.admits(Some("2001:db8::7")));
        assert!(
            !lists.admits(Some("10.9.1.1")),
            "denied inside the allowed block"
        );
        assert!(!lists.admits(Some("192.0.2.1")), "outside the allow list");
        assert!(!lists.admits(None), "unknown address with rules set");
        assert!(IpRules::default().admits(None));
        let deny_only = rules(&[], &["192.0.2.0/24"]);
        assert!(deny_only.admits(Some("198.51.100.1")));
        assert!(!deny_only.admits(Some("192.0.2.200")));
    }
}
