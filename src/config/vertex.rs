//! `[providers.<name>.vertex]`: where a `vertex` provider's models live (project, location) and
//! the Google service account it authenticates as, read and checked at load time (a bad key
//! file is a config error at `--check` and at start, naming the file, never its content).

use std::fmt;
use std::io::Read;
use std::sync::Arc;

use base64::Engine as _;
use serde::Deserialize;

use super::{check_base_url, describe_reference, is_env_name, Checker, ProviderType};

/// `providers.<name>.base_url` of type `gemini` when absent (Google AI Studio).
pub const GEMINI_BASE_URL_DEFAULT: &str = "https://generativelanguage.googleapis.com/v1beta";
/// Where a service account's signed assertion is exchanged for an access token when neither the
/// key file nor `vertex.token_uri` says otherwise.
pub const VERTEX_TOKEN_URI_DEFAULT: &str = "https://oauth2.googleapis.com/token";
/// Largest service-account key file read, bytes (Google's are about 2.3 KiB).
pub const VERTEX_CREDENTIALS_BYTES_MAX: u64 = 64 * 1024;
/// Longest `vertex.project`, bytes (project ids are at most 30 characters; domain-scoped ones,
/// `example.com:project`, are longer).
pub const VERTEX_PROJECT_BYTES_MAX: usize = 128;
/// Longest `vertex.location`, bytes.
pub const VERTEX_LOCATION_BYTES_MAX: usize = 64;

/// A Google service account's private key (PKCS#8 DER). Never printed.
#[derive(Clone)]
pub struct PrivateKey(Arc<[u8]>);

impl PrivateKey {
    pub fn pkcs8_der(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// The service account a `vertex` provider authenticates as.
#[derive(Clone, Debug)]
pub struct ServiceAccount {
    /// The JWT's `iss`.
    pub client_email: String,
    /// The JWT header's `kid`, when the key file names it.
    pub private_key_id: Option<String>,
    /// Checked to be an RSA key `ring` can sign with.
    pub private_key: PrivateKey,
}

/// A `vertex` provider's settings.
#[derive(Clone, Debug)]
pub struct VertexConfig {
    /// Google Cloud project id.
    pub project: String,
    /// Region (`us-central1`, `europe-west4`, ...) or `global`.
    pub location: String,
    pub account: ServiceAccount,
    /// Where access tokens come from: `vertex.token_uri`, else the key file's `token_uri`, else
    /// [`VERTEX_TOKEN_URI_DEFAULT`]. Also the JWT's `aud`.
    pub token_uri: String,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct VertexFile {
    project: Option<String>,
    location: Option<String>,
    credentials_file: Option<String>,
    token_uri: Option<String>,
}

/// The fields of a service-account key file the gateway reads (the others are ignored).
#[derive(Deserialize)]
struct KeyFile {
    #[serde(rename = "type", default)]
    ty: Option<String>,
    #[serde(default)]
    client_email: Option<String>,
    #[serde(default)]
    private_key_id: Option<String>,
    #[serde(default)]
    private_key: Option<String>,
    #[serde(default)]
    token_uri: Option<String>,
}

/// `https://{location}-aiplatform.googleapis.com/v1`, or the global endpoint for `global`: a
/// `vertex` provider's `base_url` when absent.
pub fn vertex_base_url(location: &str) -> String {
    if location == "global" {
        "https://aiplatform.googleapis.com/v1".to_string()
    } else {
        format!("https://{location}-aiplatform.googleapis.com/v1")
    }
}

impl Checker<'_> {
    /// The `vertex` table: required for type `vertex`, refused for the others.
    pub(super) fn vertex(
        &mut self,
        at: &str,
        kind: Option<ProviderType>,
        f: Option<VertexFile>,
    ) -> Option<VertexConfig> {
        let key = format!("{at}.vertex");
        let is_vertex = kind == Some(ProviderType::Vertex);
        let f = match (f, is_vertex) {
            (None, false) => return None,
            (Some(_), false) => {
                self.error(&key, "only for type \"vertex\"");
                return None;
            }
            (None, true) => {
                let example = "project, location and credentials_file";
                self.error(&key, format!("required for type \"vertex\" ({example})"));
                return None;
            }
            (Some(f), true) => f,
        };
        let project = self.vertex_name(
            &format!("{key}.project"),
            f.project,
            VERTEX_PROJECT_BYTES_MAX,
            |b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-.:".contains(&b),
        );
        let location = self.vertex_name(
            &format!("{key}.location"),
            f.location,
            VERTEX_LOCATION_BYTES_MAX,
            |b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-',
        );
        let creds_key = format!("{key}.credentials_file");
        let Some(reference) = f.credentials_file else {
            let example = "e.g. \"file:/etc/deepintshield/vertex-sa.json\"";
            self.error(&creds_key, format!("required ({example})"));
            return None;
        };
        let (account, file_token_uri) = match self.service_account(&reference) {
            Ok(found) => found,
            Err(message) => {
                self.error(&creds_key, message);
                return None;
            }
        };
        let token_uri = f
            .token_uri
            .or(file_token_uri)
            .unwrap_or_else(|| VERTEX_TOKEN_URI_DEFAULT.to_string());
        if let Err(problem) = check_base_url(&token_uri) {
            self.error(&format!("{key}.token_uri"), problem);
        }
        Some(VertexConfig {
            project: project?,
            location: location?,
            account,
            token_uri,
        })
    }

    fn vertex_name(
        &mut self,
        key: &str,
        value: Option<String>,
        bytes_max: usize,
        allowed: impl Fn(u8) -> bool,
    ) -> Option<String> {
        let Some(v) = value else {
            self.error(key, "required");
            return None;
        };
        if v.is_empty() || v.len() > bytes_max || !v.bytes().all(allowed) {
            let rule = format!("1..={bytes_max} characters of a-z, 0-9 and -");
            self.error(key, format!("{v:?} is not a valid name ({rule})"));
            return None;
        }
        Some(v)
    }

    /// Reads and checks the key file of a `file:PATH` (relative to the config's directory) or
    /// `env:VAR` reference. Messages name the reference, never the content.
    fn service_account(&self, reference: &str) -> Result<(ServiceAccount, Option<String>), String> {
        let shown = describe_reference(reference);
        let text = if let Some(path) = reference.strip_prefix("file:") {
            if path.is_empty() {
                return Err("\"file:\" must be followed by a path".into());
            }
            let full = self.dir.join(path);
            let mut text = String::new();
            std::fs::File::open(&full)
                .and_then(|f| {
                    f.take(VERTEX_CREDENTIALS_BYTES_MAX + 1)
                        .read_to_string(&mut text)
                })
                .map_err(|e| format!("cannot read \"{}\": {e}", full.display()))?;
            text
        } else if let Some(var) = reference.strip_prefix("env:") {
            if !is_env_name(var) {
                return Err("\"env:\" must be followed by a variable name".into());
            }
            (self.env)(var)
                .and_then(|v| v.into_string().ok())
                .ok_or_else(|| format!("environment variable {var} is not set (or not UTF-8)"))?
        } else {
            return Err(
                "expected \"file:PATH\" (a service-account key file) or \"env:VAR\"".to_string(),
            );
        };
        if text.len() as u64 > VERTEX_CREDENTIALS_BYTES_MAX {
            return Err(format!(
                "{shown} is larger than {VERTEX_CREDENTIALS_BYTES_MAX} bytes"
            ));
        }
        let file: KeyFile = serde_json::from_str(&text).map_err(|e| {
            format!(
                "{shown} is not a service-account key (JSON: line {}, column {})",
                e.line(),
                e.column()
            )
        })?;
        if let Some(ty) = file.ty.as_deref().filter(|t| *t != "service_account") {
            return Err(format!(
                "{shown} holds credentials of type {ty:?}; only \"service_account\" keys are supported"
            ));
        }
        let client_email = file
            .client_email
            .filter(|e| !e.is_empty())
            .ok_or_else(|| format!("{shown} has no client_email"))?;
        let pem = file
            .private_key
            .ok_or_else(|| format!("{shown} has no private_key"))?;
        let der = pkcs8_der(&pem).ok_or_else(|| {
            format!("{shown}: private_key is not a PEM \"PRIVATE KEY\" (PKCS#8) block")
        })?;
        ring::signature::RsaKeyPair::from_pkcs8(&der).map_err(|e| {
            format!("{shown}: private_key is not an RSA key the gateway can sign with ({e})")
        })?;
        Ok((
            ServiceAccount {
                client_email,
                private_key_id: file.private_key_id.filter(|k| !k.is_empty()),
                private_key: PrivateKey(der.into()),
            },
            file.token_uri,
        ))
    }
}

/// The DER inside a PEM `PRIVATE KEY` block.
fn pkcs8_der(pem: &str) -> Option<Vec<u8>> {
    const BEGIN: &str = "-----BEGIN PRIVATE KEY-----";
    const END: &str = "-----END PRIVATE KEY-----";
    let start = pem.find(BEGIN)? + BEGIN.len();
    let end = start + pem[start..].find(END)?;
    let body: String = pem[start..end]
        .chars()
        .filter(|c| !c.is_ascii_whitespace())
        .collect();
    base64::engine::general_purpose::STANDARD.decode(body).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_bodies_decode() {
        let pem = "-----BEGIN PRIVATE KEY-----\nAAEC\nAw==\n-----END PRIVATE KEY-----\n";
        assert_eq!(pkcs8_der(pem), Some(vec![0, 1, 2, 3]));
        assert_eq!(
            pkcs8_der("-----BEGIN RSA PRIVATE KEY-----\nAA==\n-----END RSA PRIVATE KEY-----"),
            None
        );
        assert_eq!(
            pkcs8_der("-----BEGIN PRIVATE KEY-----\n!!\n-----END PRIVATE KEY-----"),
            None
        );
    }

    #[test]
    fn base_urls_by_location() {
        assert_eq!(
            vertex_base_url("us-central1"),
            "https://us-central1-aiplatform.googleapis.com/v1"
        );
        assert_eq!(
            vertex_base_url("global"),
            "https://aiplatform.googleapis.com/v1"
        );
    }
}
