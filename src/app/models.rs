//! `GET /v1/models` and `GET /v1/models/{id}`, in the shape each SDK expects: Anthropic's model
//! page when the request carries `anthropic-version` (the anthropic SDK always does), OpenAI's
//! list otherwise.

use std::time::{SystemTime, UNIX_EPOCH};

use super::Gateway;
use crate::api::anthropic::{ModelInfo, ModelPage};
use crate::api::openai::{ModelList, ModelObject};
use crate::error::{ApiError, ErrorKind};
use crate::http::{Request, Response};
use crate::plugins::{Principal, Target};

/// Seconds since the Unix epoch.
pub fn unix_now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// RFC 3339 (UTC, seconds) of a Unix time.
fn rfc3339(unix_s: u64) -> String {
    let days = (unix_s / 86_400) as i64;
    let rem = unix_s % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn anthropic_shape(req: &Request) -> bool {
    req.header("anthropic-version").is_some()
}

impl Gateway {
    /// When the gateway started, as the models' creation time.
    fn created_s(&self) -> u64 {
        unix_now_s().saturating_sub(self.started.elapsed().as_secs())
    }

    /// Whether `principal` may use model `id` (as a client names it): a virtual key's provider
    /// and model patterns, judged as for a request; everyone else may use every model.
    fn may_use(&self, principal: &Principal, id: &str) -> bool {
        let Principal::Key(key) = principal else {
            return true;
        };
        let Ok(route) = self.router.resolve(id) else {
            return false;
        };
        let Some(pool) = self.pools.get(route.pool) else {
            return false;
        };
        let target = Target {
            provider: pool.name().to_string(),
            kind: self
                .config
                .providers
                .get(pool.name())
                .map_or("", |p| p.kind.name()),
            model: route.upstream_model,
        };
        key.allows(&target, Some(id))
    }

    pub(super) fn models(&self, req: &Request) -> Result<Response, ApiError> {
        let principal = self.authorize(req)?;
        let created = self.created_s();
        // A virtual key sees the models it may use.
        let listed: Vec<&(String, String)> = self
            .router
            .listed_models()
            .iter()
            .filter(|(id, _)| self.may_use(&principal, id))
            .collect();
        let body = if anthropic_shape(req) {
            let at = rfc3339(created);
            let page = ModelPage {
                data: listed
                    .iter()
                    .map(|(id, _)| ModelInfo {
                        kind: "model",
                        id,
                        display_name: id,
                        created_at: &at,
                    })
                    .collect(),
                has_more: false,
                first_id: listed.first().map(|(id, _)| id.as_str()),
                last_id: listed.last().map(|(id, _)| id.as_str()),
            };
            serde_json::to_vec(&page)
        } else {
            let list = ModelList {
                object: "list",
                data: listed
                    .iter()
                    .map(|(id, owner)| ModelObject {
                        id,
                        object: "model",
                        created,
                        owned_by: owner,
                    })
                    .collect(),
            };
            serde_json::to_vec(&list)
        };
        Ok(Response::json(200, body.map_err(|_| ApiError::internal())?))
    }

    pub(super) fn model(&self, req: &Request, id: &str) -> Result<Response, ApiError> {
        let principal = self.authorize(req)?;
        // A model the key may not use is described as one that does not exist, as providers do.
        if !self.may_use(&principal, id) {
            self.router.resolve(id)?;
            return Err(ApiError::new(
                ErrorKind::NotFound,
                "model_not_found",
                format!(
                    "The model `{}` does not exist or this API key may not use it",
                    id.chars().take(200).collect::<String>()
                ),
            ));
        }
        let listed = self.router.listed_models().iter().find(|(m, _)| m == id);
        let owner = match listed {
            Some((_, owner)) => owner.as_str(),
            None => {
                // Routable but not listed (a provider that accepts any model): describe it too.
                self.router.resolve(id)?;
                id.split_once('/').map_or(id, |(p, _)| p)
            }
        };
        let created = self.created_s();
        let body = if anthropic_shape(req) {
            let at = rfc3339(created);
            serde_json::to_vec(&ModelInfo {
                kind: "model",
                id,
                display_name: id,
                created_at: &at,
            })
        } else {
            serde_json::to_vec(&ModelObject {
                id,
                object: "model",
                created,
                owned_by: owner,
            })
        };
        Ok(Response::json(200, body.map_err(|_| ApiError::internal())?))
    }
}

#[cfg(test)]
mod tests {
    use super::rfc3339;

    #[test]
    fn dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(784_111_777), "1994-11-06T08:49:37Z");
        assert_eq!(rfc3339(1_709_251_200), "2024-03-01T00:00:00Z");
    }
}
