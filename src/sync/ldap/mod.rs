//! LDAP and Active Directory source (to be written).

use serde::Deserialize;

use super::{Batch, ReadOutcome, ReadRequest, Source, SourceError};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LdapConfig {
    pub url: String,
}

impl LdapConfig {
    pub fn from_toml(value: toml::Value) -> Result<Self, String> {
        LdapConfig::deserialize(value).map_err(|e| e.to_string())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LdapError {
    #[error("LDAP source not implemented")]
    Unimplemented,
}

pub struct LdapSource {
    pub config: LdapConfig,
}

impl LdapSource {
    /// Builds the source from its config; does no IO.
    pub fn new(config: &LdapConfig) -> Result<Self, LdapError> {
        Ok(LdapSource {
            config: config.clone(),
        })
    }
}

impl Source for LdapSource {
    async fn read(
        &mut self,
        _request: &ReadRequest,
        _batch: &mut Batch,
    ) -> Result<ReadOutcome, SourceError> {
        Err(LdapError::Unimplemented.into())
    }
}
