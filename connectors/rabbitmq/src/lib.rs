//! Placeholder until the connector lands.
