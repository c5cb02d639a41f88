//! Entra ID source through Microsoft Graph (to be written).

use serde::Deserialize;

use super::{Batch, ReadOutcome, ReadRequest, Source, SourceError};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntraConfig {
    pub url: String,
}

impl EntraConfig {
    pub fn from_toml(value: toml::Value) -> Result<Self, String> {
        EntraConfig::deserialize(value).map_err(|e| e.to_string())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EntraError {
    #[error("Entra source not implemented")]
    Unimplemented,
}

pub struct EntraSource {
    pub config: EntraConfig,
}

impl EntraSource {
    /// Builds the source from its config; does no IO.
    pub fn new(config: &EntraConfig) -> Result<Self, EntraError> {
        Ok(EntraSource {
            config: config.clone(),
        })
    }
}

impl Source for EntraSource {
    async fn read(
        &mut self,
        _request: &ReadRequest,
        _batch: &mut Batch,
    ) -> Result<ReadOutcome, SourceError> {
        Err(EntraError::Unimplemented.into())
    }
}
