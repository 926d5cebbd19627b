//! Model -> provider pool resolution (`provider/model` names and aliases), and reading the
//! `Authorization: Bearer` scheme.

use std::collections::HashMap;

use crate::config::Config;
use crate::error::{ApiError, ErrorKind};

/// Where a request goes.
#[derive(Debug, PartialEq, Eq)]
pub struct Route {
    /// Index into the gateway's pools (config order of providers).
    pub pool: usize,
    /// The model name sent upstream.
    pub upstream_model: String,
}

struct ProviderEntry {
    pool: usize,
    /// Models the provider serves; empty = any.
    models: Vec<String>,
}

pub struct Router {
    providers: HashMap<String, ProviderEntry>,
    aliases: HashMap<String, String>,
    fallbacks: HashMap<String, Vec<String>>,
    /// Ids listed by `GET /v1/models` with their owner, in a stable order.
    listed: Vec<(String, String)>,
}

impl Router {
    /// Pools are numbered in the order of `config.providers` (sorted by name).
    pub fn new(config: &Config) -> Self {
        let mut providers = HashMap::new();
        let mut listed = Vec::new();
        for (i, (name, p)) in config.providers.iter().enumerate() {
            providers.insert(
                name.clone(),
                ProviderEntry {
                    pool: i,
                    models: p.models.clone(),
                },
            );
            for m in &p.models {
                listed.push((format!("{name}/{m}"), name.clone()));
            }
        }
        for (alias, target) in &config.aliases {
            let owner = target.split_once('/').map(|(p, _)| p).unwrap_or(target);
            listed.push((alias.clone(), owner.to_string()));
        }
        listed.sort();
        listed.dedup();
        Router {
            providers,
            aliases: config.aliases.clone().into_iter().collect(),
            fallbacks: config.fallbacks.clone().into_iter().collect(),
            listed,
        }
    }

    /// Resolve a client's `model`: an alias, or `<provider>/<model>`.
    pub fn resolve(&self, model: &str) -> Result<Route, ApiError> {
        let target = self.aliases.get(model).map(String::as_str).unwrap_or(model);
        let not_found = || {
            ApiError::new(
                ErrorKind::NotFound,
                "model_not_found",
                format!(
                    "The model `{}` does not exist: use <provider>/<model> with a configured provider, or an alias (GET /v1/models lists them)",
                    truncate(model, 200)
                ),
            )
        };
        let (provider, upstream_model) = target.split_once('/').ok_or_else(not_found)?;
        let entry = self.providers.get(provider).ok_or_else(not_found)?;
        if upstream_model.is_empty()
            || (!entry.models.is_empty() && !entry.models.iter().any(|m| m == upstream_model))
        {
            return Err(not_found());
        }
        Ok(Route {
            pool: entry.pool,
            upstream_model: upstream_model.to_string(),
        })
    }

    /// The configured fallbacks of a model name as clients send it, in order.
    pub fn fallbacks_for(&self, model: &str) -> &[String] {
        self.fallbacks.get(model).map_or(&[], Vec::as_slice)
    }

    /// The pool of the provider named `provider` (pools are numbered in config order).
    pub fn pool_index(&self, provider: &str) -> Option<usize> {
        self.providers.get(provider).map(|e| e.pool)
    }

    /// `(id, owned_by)` of every model `GET /v1/models` lists.
    pub fn listed_models(&self) -> &[(String, String)] {
        &self.listed
    }
}

/// The credentials of an `Authorization: Bearer <token>` value; the scheme name is
/// case-insensitive (RFC 9110 section 11.1), `BEARER` and `bearer` included.
pub fn bearer_token(value: &[u8]) -> Option<&[u8]> {
    const SCHEME: &[u8] = b"bearer";
    let scheme = value.get(..SCHEME.len())?;
    let rest = &value[SCHEME.len()..];
    (scheme.eq_ignore_ascii_case(SCHEME) && rest.first() == Some(&b' ')).then_some(rest)
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_scheme_is_case_insensitive() {
        for v in [&b"Bearer k"[..], b"bearer k", b"BEARER k", b"bEaReR k"] {
            assert_eq!(bearer_token(v), Some(&b" k"[..]), "{v:?}");
        }
        for v in [&b"Bearerk"[..], b"Basic k", b"Bear k", b"", b"Bearer"] {
            assert_eq!(bearer_token(v), None, "{v:?}");
        }
    }
}
