//! Model tiers (small and large) and their names, in one place: the
//! configuration, the registry's records, the OpenAI API's routing hints and
//! the metrics labels all spell a tier the same way.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Size class of a model.
///
/// Serialized as its lowercase name (`"small"`, `"large"`), which is what
/// configuration files and Redis worker records hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    Small,
    Large,
}

impl Tier {
    /// Every tier, smallest first.
    pub const ALL: [Tier; 2] = [Tier::Small, Tier::Large];

    /// Quality assumed for a model of this tier until something better is known.
    ///
    /// The numbers are the mean correctness of a 7B-9B and a GPT-4-class model
    /// over the RouteLLM/LLMRouter evaluation rows in `shared/data`, rounded.
    pub fn default_quality_prior(self) -> f64 {
        match self {
            Tier::Small => 0.55,
            Tier::Large => 0.80,
        }
    }

    /// The tier's name, as serde writes it and [`FromStr`] reads it.
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Small => "small",
            Tier::Large => "large",
        }
    }
}

/// The tier on the wire (`routemesh.v1.Tier`).
impl From<Tier> for routemesh_proto::v1::Tier {
    fn from(tier: Tier) -> Self {
        match tier {
            Tier::Small => routemesh_proto::v1::Tier::Small,
            Tier::Large => routemesh_proto::v1::Tier::Large,
        }
    }
}

impl Tier {
    /// The tier a wire value names; `None` for unspecified or unknown values.
    pub fn from_wire(value: i32) -> Option<Self> {
        match routemesh_proto::v1::Tier::try_from(value) {
            Ok(routemesh_proto::v1::Tier::Small) => Some(Tier::Small),
            Ok(routemesh_proto::v1::Tier::Large) => Some(Tier::Large),
            _ => None,
        }
    }

    /// The tier as a wire value.
    pub fn to_wire(self) -> i32 {
        routemesh_proto::v1::Tier::from(self) as i32
    }
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A string that names no tier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{given:?} is not \"small\" or \"large\"")]
pub struct ParseTierError {
    /// What was given instead.
    pub given: String,
}

impl FromStr for Tier {
    type Err = ParseTierError;

    /// Reads a tier's exact name (lowercase, as [`Tier::as_str`] writes it).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Tier::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| ParseTierError {
                given: s.to_owned(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for tier in Tier::ALL {
            assert_eq!(tier.as_str().parse::<Tier>(), Ok(tier));
            assert_eq!(tier.to_string(), tier.as_str());
        }
        assert_eq!("small".parse::<Tier>(), Ok(Tier::Small));
        assert_eq!("large".parse::<Tier>(), Ok(Tier::Large));
    }

    #[test]
    fn unknown_names_are_refused_with_what_was_given() {
        for bad in ["", "Small", "LARGE", "medium", " small"] {
            let e = bad.parse::<Tier>().unwrap_err();
            assert_eq!(e.given, bad);
            assert_eq!(
                e.to_string(),
                format!("{bad:?} is not \"small\" or \"large\"")
            );
        }
    }

    /// serde and `as_str` spell every tier the same, so configs and Redis
    /// records written before the move still parse.
    #[test]
    fn serde_uses_the_same_names() {
        for tier in Tier::ALL {
            let json = format!("\"{}\"", tier.as_str());
            assert_eq!(serde_json::to_string(&tier).unwrap(), json);
            assert_eq!(serde_json::from_str::<Tier>(&json).unwrap(), tier);
        }
        assert_eq!(serde_json::to_string(&Tier::Large).unwrap(), r#""large""#);
        assert!(serde_json::from_str::<Tier>(r#""Large""#).is_err());
    }
}
