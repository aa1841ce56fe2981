//! Who is asking and what they may spend: API keys and tenants, rate limits
//! and budgets, per-tenant cost targets, and the cost report.

pub mod auth;
pub mod cost;
pub mod cost_text;
pub mod keys;
pub(crate) mod limits;
pub mod tenants;
