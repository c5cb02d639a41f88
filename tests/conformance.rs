//! Placeholder replaced below once scim2-cli's output format is known.
