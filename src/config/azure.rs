//! `[providers.<name>.azure]`: where an `azure` provider (Azure OpenAI) is, which API shape it
//! uses, which deployment serves each model, and how requests are authenticated (the key pool's
//! `api-key`, or a Microsoft Entra ID token from client credentials).

use std::collections::BTreeMap;

use serde::Deserialize;

use super::{check_base_url, is_model_name, Checker, Secret, MODELS_MAX};

/// `azure.api_version` of the `deployments` style: the latest generally available data-plane
/// version (the `v1` style needs none).
pub const AZURE_API_VERSION_DEFAULT: &str = "2024-10-21";
/// Longest `azure.api_version` and `azure.responses_api_version`, bytes.
pub const AZURE_API_VERSION_BYTES_MAX: usize = 64;
/// `azure.responses_api_version`: the `api-version` of the `deployments` style's Responses API
/// (`{endpoint}/openai/responses?api-version=...`). Azure serves Responses there only from
/// `2025-03-01-preview` on (the generally available `2024-10-21` of [`AZURE_API_VERSION_DEFAULT`]
/// predates it); this is the version Microsoft's documentation shows for it.
pub const AZURE_RESPONSES_API_VERSION_DEFAULT: &str = "2025-04-01-preview";
/// Longest deployment name, bytes (Azure allows 64: letters, digits, `-`, `_`, `.`).
pub const AZURE_DEPLOYMENT_BYTES_MAX: usize = 64;
/// `azure.token_url`: Microsoft Entra ID's token endpoint; `{tenant}` is replaced by the tenant.
pub const AZURE_TOKEN_URL_DEFAULT: &str =
    "https://login.microsoftonline.com/{tenant}/oauth2/v2.0/token";
/// `azure.scope`: the scope asked of Entra ID for Azure OpenAI (Cognitive Services).
pub const AZURE_SCOPE_DEFAULT: &str = "https://cognitiveservices.azure.com/.default";
/// Longest `azure.scope` and tenant id, bytes.
pub const AZURE_SCOPE_BYTES_MAX: usize = 256;
/// The placeholder of `azure.token_url` replaced by the tenant.
const TENANT_PLACEHOLDER: &str = "{tenant}";

/// Which URL shape the Azure OpenAI data plane is called with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AzureApiStyle {
    /// `{endpoint}/openai/deployments/{deployment}/chat/completions?api-version={version}`.
    Deployments,
    /// `{endpoint}/openai/v1/chat/completions`, the deployment as the body's `model`.
    V1,
}

/// How requests to Azure OpenAI are authenticated.
#[derive(Clone, Debug)]
pub enum AzureAuth {
    /// The `api-key` header, from the provider's key pool.
    ApiKey,
    /// `Authorization: Bearer <token>`, a Microsoft Entra ID token for client credentials.
    Entra(EntraConfig),
}

/// Client credentials for Microsoft Entra ID (resolved secrets, never printed).
#[derive(Clone, Debug)]
pub struct EntraConfig {
    pub client_id: Secret,
    pub client_secret: Secret,
    /// The token endpoint, the tenant filled in.
    pub token_url: String,
    pub scope: String,
}

/// A validated `[providers.<name>.azure]`.
#[derive(Clone, Debug)]
pub struct AzureConfig {
    /// `https://<resource>.openai.azure.com`, without a trailing `/`.
    pub endpoint: String,
    pub api_style: AzureApiStyle,
    /// The `api-version` query parameter; always set for `deployments` (default
    /// [`AZURE_API_VERSION_DEFAULT`]), only when configured for `v1`.
    pub api_version: Option<String>,
    /// The `api-version` of the `deployments` style's Responses API (default
    /// [`AZURE_RESPONSES_API_VERSION_DEFAULT`]); the `v1` style's Responses API takes
    /// `api_version` like its other routes.
    pub responses_api_version: String,
    /// Model name -> deployment name; a model without an entry is its own deployment name.
    pub deployments: BTreeMap<String, String>,
    pub auth: AzureAuth,
}

impl AzureConfig {
    /// The deployment that serves `model`.
    pub fn deployment<'a>(&'a self, model: &'a str) -> &'a str {
        self.deployments.get(model).map_or(model, String::as_str)
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct AzureFile {
    endpoint: Option<String>,
    api_style: Option<String>,
    api_version: Option<String>,
    responses_api_version: Option<String>,
    deployments: Option<BTreeMap<String, String>>,
    auth: Option<String>,
    tenant: Option<String>,
    client_id: Option<String>,
    client_secret: Option<String>,
    token_url: Option<String>,
    scope: Option<String>,
}

/// Letters, digits, `.`, `_` and `-`, 1..=`max` bytes.
fn is_name(value: &str, max: usize) -> bool {
    !value.is_empty()
        && value.len() <= max
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

impl Checker<'_> {
    /// `f` of provider `at` (`providers.<name>`); `None` (and an error) when it is missing.
    /// `has_keys`: whether the provider lists keys (required with `auth = "api_key"`, refused
    /// with `"entra"`).
    pub(super) fn azure(
        &mut self,
        at: &str,
        f: Option<AzureFile>,
        has_keys: bool,
    ) -> Option<AzureConfig> {
        let at = format!("{at}.azure");
        let Some(f) = f else {
            let example = "e.g. endpoint = \"https://my-resource.openai.azure.com\"";
            self.error(&at, format!("required for type \"azure\" ({example})"));
            return None;
        };
        let key = |leaf: &str| format!("{at}.{leaf}");
        let endpoint = match f.endpoint {
            None => {
                self.error(&key("endpoint"), "required");
                String::new()
            }
            Some(url) => {
                if let Err(problem) = check_base_url(&url) {
                    self.error(&key("endpoint"), problem);
                }
                url.trim_end_matches('/').to_string()
            }
        };
        let api_style = self.choice(
            &key("api_style"),
            f.api_style.as_deref(),
            &[
                ("deployments", AzureApiStyle::Deployments),
                ("v1", AzureApiStyle::V1),
            ],
        );
        let api_version = match (f.api_version, api_style) {
            (None, AzureApiStyle::Deployments) => Some(AZURE_API_VERSION_DEFAULT.to_string()),
            (None, AzureApiStyle::V1) => None,
            (Some(v), _) if is_name(&v, AZURE_API_VERSION_BYTES_MAX) => Some(v),
            (Some(v), _) => {
                let rule = format!(
                    "1..={AZURE_API_VERSION_BYTES_MAX} letters, digits, '.', '_' or '-', \
                     e.g. \"{AZURE_API_VERSION_DEFAULT}\""
                );
                self.error(&key("api_version"), rule);
                Some(v)
            }
        };
        let responses_api_version = match (f.responses_api_version, api_style) {
            (None, _) => AZURE_RESPONSES_API_VERSION_DEFAULT.to_string(),
            (Some(v), AzureApiStyle::V1) => {
                self.error(
                    &key("responses_api_version"),
                    "only used with api_style = \"deployments\" (the v1 API's Responses route \
                     takes api_version like its other routes)",
                );
                v
            }
            (Some(v), AzureApiStyle::Deployments) => {
                if !is_name(&v, AZURE_API_VERSION_BYTES_MAX) {
                    let rule = format!(
                        "1..={AZURE_API_VERSION_BYTES_MAX} letters, digits, '.', '_' or '-', \
                         e.g. \"{AZURE_RESPONSES_API_VERSION_DEFAULT}\""
                    );
                    self.error(&key("responses_api_version"), rule);
                }
                v
            }
        };
        let deployments = f.deployments.unwrap_or_default();
        if deployments.len() > MODELS_MAX {
            self.error(
                &key("deployments"),
                format!("more than {MODELS_MAX} entries"),
            );
        }
        for (model, deployment) in &deployments {
            let at = format!("{}.{model:?}", key("deployments"));
            if !is_model_name(model) {
                self.error(&at, "model names are 1..=256 visible ASCII characters");
            } else if !is_name(deployment, AZURE_DEPLOYMENT_BYTES_MAX) {
                let rule = format!(
                    "deployment names are 1..={AZURE_DEPLOYMENT_BYTES_MAX} letters, digits, \
                     '.', '_' or '-'"
                );
                self.error(&at, rule);
            }
        }
        let auth = match f.auth.as_deref() {
            None | Some("api_key") => {
                if !has_keys {
                    let example = "e.g. keys = [{ key = \"env:AZURE_OPENAI_API_KEY\" }]";
                    self.error(
                        &format!("{}.keys", at.trim_end_matches(".azure")),
                        format!(
                            "required for type \"azure\" with auth = \"api_key\": at least one \
                             key ({example})"
                        ),
                    );
                }
                for leaf in ["tenant", "client_id", "client_secret", "token_url", "scope"] {
                    let set = match leaf {
                        "tenant" => f.tenant.is_some(),
                        "client_id" => f.client_id.is_some(),
                        "client_secret" => f.client_secret.is_some(),
                        "token_url" => f.token_url.is_some(),
                        _ => f.scope.is_some(),
                    };
                    if set {
                        self.error(&key(leaf), "only used with auth = \"entra\"");
                    }
                }
                AzureAuth::ApiKey
            }
            Some("entra") => {
                if has_keys {
                    self.error(
                        &format!("{}.keys", at.trim_end_matches(".azure")),
                        "not used with auth = \"entra\" (the token comes from client_id and \
                         client_secret); remove them",
                    );
                }
                match self.entra(
                    &at,
                    f.tenant,
                    f.client_id,
                    f.client_secret,
                    f.token_url,
                    f.scope,
                ) {
                    Some(entra) => AzureAuth::Entra(entra),
                    None => AzureAuth::ApiKey,
                }
            }
            Some(other) => {
                let expected = "expected one of \"api_key\", \"entra\"";
                self.error(&key("auth"), format!("{expected} (found {other:?})"));
                AzureAuth::ApiKey
            }
        };
        Some(AzureConfig {
            endpoint,
            api_style,
            api_version,
            responses_api_version,
            deployments,
            auth,
        })
    }

    /// Entra ID client credentials: `client_id` and `client_secret` (and `tenant` when the token
    /// URL names one) as `env:`/`file:` references.
    fn entra(
        &mut self,
        at: &str,
        tenant: Option<String>,
        client_id: Option<String>,
        client_secret: Option<String>,
        token_url: Option<String>,
        scope: Option<String>,
    ) -> Option<EntraConfig> {
        let key = |leaf: &str| format!("{at}.{leaf}");
        let reference = |checker: &mut Self, leaf: &str, value: Option<String>| match value {
            None => {
                let example = format!("e.g. {leaf} = \"env:AZURE_{}\"", leaf.to_uppercase());
                checker.error(
                    &key(leaf),
                    format!("required with auth = \"entra\" ({example})"),
                );
                None
            }
            Some(r) => checker.secret(&key(leaf), &r),
        };
        let client_id = reference(self, "client_id", client_id);
        let client_secret = reference(self, "client_secret", client_secret);
        let template = token_url.unwrap_or_else(|| AZURE_TOKEN_URL_DEFAULT.to_string());
        let token_url = if template.contains(TENANT_PLACEHOLDER) {
            let tenant = reference(self, "tenant", tenant)?;
            if !is_name(tenant.expose(), AZURE_SCOPE_BYTES_MAX) {
                self.error(
                    &key("tenant"),
                    "a tenant id or domain is letters, digits, '.', '_' or '-' (value hidden)",
                );
                return None;
            }
            template.replace(TENANT_PLACEHOLDER, tenant.expose())
        } else {
            if tenant.is_some() {
                self.error(&key("tenant"), "token_url names no {tenant} to fill in");
            }
            template
        };
        if let Err(problem) = check_base_url(&token_url) {
            self.error(&key("token_url"), problem);
        }
        let scope = scope.unwrap_or_else(|| AZURE_SCOPE_DEFAULT.to_string());
        if scope.is_empty()
            || scope.len() > AZURE_SCOPE_BYTES_MAX
            || !scope.bytes().all(|b| b.is_ascii_graphic())
        {
            let rule = format!("1..={AZURE_SCOPE_BYTES_MAX} visible ASCII characters");
            self.error(&key("scope"), rule);
        }
        Some(EntraConfig {
            client_id: client_id?,
            client_secret: client_secret?,
            token_url,
            scope,
        })
    }
}
