//! The `[providers.<name>.bedrock]` table of a `type = "bedrock"` provider: its AWS region and
//! credentials, resolved when the config is loaded (so `--check` names what is missing): the
//! table's `access_key_id` / `secret_access_key` / `session_token` references, else the
//! standard `AWS_*` environment variables, else a profile of the shared credentials file.

use std::ffi::OsString;

use serde::Deserialize;

use super::aws_credentials::{self, ConfigKeys, Credentials, Source};
use super::{Checker, KeyConfig, ProviderType, Secret, KEY_WEIGHT_DEFAULT};

/// Environment variables read for the region when `bedrock.region` is absent, in order.
pub const REGION_ENV: [&str; 2] = ["AWS_REGION", "AWS_DEFAULT_REGION"];
/// Longest region name accepted (AWS region names are under 20 characters).
pub const REGION_CHARS_MAX: usize = 64;
/// Header-name prefix a `bedrock` provider may not set in `headers`: the SigV4 signer owns
/// `x-amz-date`, `x-amz-security-token` and the signature's inputs.
pub const RESERVED_HEADER_PREFIX: &str = "x-amz-";

/// `[providers.<name>.bedrock]` as written.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct BedrockFile {
    region: Option<String>,
    access_key_id: Option<String>,
    secret_access_key: Option<String>,
    session_token: Option<String>,
    profile: Option<String>,
}

/// A `bedrock` provider's validated settings.
#[derive(Clone, Debug)]
pub struct BedrockConfig {
    /// The AWS region requests are signed for (and the default endpoint's).
    pub region: String,
    /// The credentials every request is signed with.
    pub credentials: Credentials,
    /// Where they were found (safe to log).
    pub source: Source,
}

/// `https://bedrock-runtime.{region}.amazonaws.com`, the default `base_url` of a `bedrock`
/// provider.
pub fn runtime_base_url(region: &str) -> String {
    format!("https://bedrock-runtime.{region}.amazonaws.com")
}

fn region_ok(region: &str) -> bool {
    !region.is_empty()
        && region.len() <= REGION_CHARS_MAX
        && region
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

impl Checker<'_> {
    /// What a provider's type makes of its `bedrock` table, `base_url`, `keys` and `headers`:
    /// for `bedrock`, the resolved region and credentials, the endpoint (the region's unless
    /// `base_url` is set) and the implicit key; `keys` and `x-amz-*` headers are refused. Any
    /// other type may not have a `bedrock` table.
    pub(super) fn bedrock_provider(
        &mut self,
        at: &str,
        kind: Option<ProviderType>,
        file: Option<BedrockFile>,
        base_url: String,
        keys: Vec<KeyConfig>,
        headers: &[(String, String)],
    ) -> (Option<BedrockConfig>, String, Vec<KeyConfig>) {
        if kind != Some(ProviderType::Bedrock) {
            if file.is_some() {
                self.error(&format!("{at}.bedrock"), "only for type \"bedrock\"");
            }
            return (None, base_url, keys);
        }
        if !keys.is_empty() {
            self.error(
                &format!("{at}.keys"),
                "not used by type \"bedrock\": requests are signed with the AWS credentials of \
                 [providers.<name>.bedrock] or the AWS environment",
            );
        }
        for (name, _) in headers {
            if name
                .to_ascii_lowercase()
                .starts_with(RESERVED_HEADER_PREFIX)
            {
                let message = "x-amz-* headers are set by the request signer";
                self.error(&format!("{at}.headers.{name:?}"), message);
            }
        }
        let bedrock = self.bedrock(at, file);
        let base_url = match (&bedrock, base_url.is_empty()) {
            (Some(b), true) => runtime_base_url(&b.region),
            _ => base_url,
        };
        let keys = implicit_keys(bedrock.as_ref());
        (bedrock, base_url, keys)
    }

    /// The `bedrock` table of provider `at`; `None` after reporting what is wrong or missing.
    fn bedrock(&mut self, at: &str, f: Option<BedrockFile>) -> Option<BedrockConfig> {
        let key = format!("{at}.bedrock");
        let f = f.unwrap_or_default();
        let region = self.bedrock_region(&key, f.region);
        let reference = |checker: &mut Self, name: &str, value: Option<String>| {
            value.and_then(|r| checker.secret(&format!("{key}.{name}"), &r))
        };
        let given = [&f.access_key_id, &f.secret_access_key, &f.session_token]
            .iter()
            .filter(|r| r.is_some())
            .count();
        let id = reference(self, "access_key_id", f.access_key_id);
        let secret = reference(self, "secret_access_key", f.secret_access_key);
        let token = reference(self, "session_token", f.session_token);
        let resolved = [&id, &secret, &token]
            .iter()
            .filter(|r| r.is_some())
            .count();
        if let Some(p) = &f.profile {
            if p.is_empty() || p.contains([']', '\n', '\r']) {
                self.error(&format!("{key}.profile"), "not a profile name");
            }
        }
        let keys = ConfigKeys {
            access_key_id: id.as_ref().map(Secret::expose),
            secret_access_key: secret.as_ref().map(Secret::expose),
            session_token: token.as_ref().map(Secret::expose),
        };
        if resolved < given {
            // The references' own errors say what is wrong; no other source stands in for them.
            return None;
        }
        let env = self.env;
        let profile = f.profile;
        let lookup = |name: &str| -> Option<OsString> {
            match (&profile, name) {
                (Some(p), aws_credentials::ENV_PROFILE) => Some(OsString::from(p)),
                _ => env(name),
            }
        };
        let credentials = match aws_credentials::resolve(&keys, &lookup) {
            Ok(found) => Some(found),
            Err(e) => {
                self.error(&key, e);
                None
            }
        };
        let (credentials, source) = credentials?;
        Some(BedrockConfig {
            region: region?,
            credentials,
            source,
        })
    }

    fn bedrock_region(&mut self, key: &str, value: Option<String>) -> Option<String> {
        let from_env = || {
            REGION_ENV
                .iter()
                .find_map(|v| (self.env)(v).and_then(|s| s.into_string().ok()))
                .filter(|s| !s.is_empty())
        };
        let Some(region) = value.or_else(from_env) else {
            let vars = REGION_ENV.join(" or ");
            self.error(
                &format!("{key}.region"),
                format!("required (e.g. region = \"us-east-1\"), or set {vars}"),
            );
            return None;
        };
        if !region_ok(&region) {
            self.error(
                &format!("{key}.region"),
                format!("{region:?} is not a region name (a-z, 0-9 and -)"),
            );
            return None;
        }
        Some(region)
    }
}

/// The key pool of a `bedrock` provider: one implicit key standing for its AWS credentials. Its
/// secret is the secret access key, so that the redactor hides it from what upstreams send back;
/// the adapter signs with the credentials themselves.
pub(super) fn implicit_keys(bedrock: Option<&BedrockConfig>) -> Vec<KeyConfig> {
    bedrock
        .map(|b| KeyConfig {
            secret: Secret::new(b.credentials.secret_access_key().to_string()),
            weight: KEY_WEIGHT_DEFAULT as u32,
            models: Vec::new(),
        })
        .into_iter()
        .collect()
}

#[cfg(test)]
mod tests {
    use std::ffi::OsString;
    use std::path::Path;

    use super::super::{parse, Config, ProviderType};
    use super::*;

    fn check(text: &str, env: &[(&str, &str)]) -> Result<Config, String> {
        let lookup = |name: &str| {
            env.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| OsString::from(v))
        };
        parse(text, Path::new("test.toml"), &lookup, None).map_err(|e| e.to_string())
    }

    const KEYS: &[(&str, &str)] = &[
        ("AKID", "AKIDEXAMPLE"),
        ("SECRET", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"),
    ];

    #[test]
    fn credentials_from_the_table() {
        let text = "[providers.aws]\ntype = \"bedrock\"\n[providers.aws.bedrock]\nregion = \"eu-west-3\"\naccess_key_id = \"env:AKID\"\nsecret_access_key = \"env:SECRET\"\n";
        let c = check(text, KEYS).unwrap();
        let p = &c.providers["aws"];
        assert_eq!(p.kind, ProviderType::Bedrock);
        assert_eq!(
            p.base_url,
            "https://bedrock-runtime.eu-west-3.amazonaws.com"
        );
        let b = p.bedrock.as_ref().unwrap();
        assert_eq!(
            (b.region.as_str(), &b.source),
            ("eu-west-3", &Source::Config)
        );
        assert_eq!(b.credentials.access_key_id(), "AKIDEXAMPLE");
        assert_eq!(b.credentials.session_token(), None);
        // One implicit key: its secret is the secret access key (the redactor hides it).
        assert_eq!(p.keys.len(), 1);
        assert_eq!(
            p.keys[0].secret.expose(),
            "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
        );
        assert!(
            !format!("{p:?}").contains("wJalrXUtnFEMI"),
            "Debug hides secrets"
        );
        // base_url overrides the endpoint (tests, VPC endpoints).
        let text = text.replace(
            "type = \"bedrock\"\n",
            "type = \"bedrock\"\nbase_url = \"http://127.0.0.1:9/\"\n",
        );
        assert_eq!(
            check(&text, KEYS).unwrap().providers["aws"].base_url,
            "http://127.0.0.1:9"
        );
    }

    #[test]
    fn credentials_and_region_from_the_environment() {
        let text = "[providers.aws]\ntype = \"bedrock\"\n";
        let env = [
            ("AWS_ACCESS_KEY_ID", "AKIDENV"),
            ("AWS_SECRET_ACCESS_KEY", "secret-env"),
            ("AWS_SESSION_TOKEN", "token-env"),
            ("AWS_DEFAULT_REGION", "ap-south-1"),
        ];
        let c = check(text, &env).unwrap();
        let b = c.providers["aws"].bedrock.clone().unwrap();
        assert_eq!(
            (b.region.as_str(), &b.source),
            ("ap-south-1", &Source::Environment)
        );
        assert_eq!(b.credentials.session_token(), Some("token-env"));
    }

    #[test]
    fn credentials_from_a_profile_of_the_shared_file() {
        let path = std::env::temp_dir().join(format!(
            "deepintshield-config-{}-aws-credentials",
            std::process::id()
        ));
        std::fs::write(
            &path,
            "[default]\naws_access_key_id = AKIDDEFAULT\naws_secret_access_key = s1\n\n[work]\naws_access_key_id = AKIDWORK\naws_secret_access_key = s2\n",
        )
        .unwrap();
        let file = path.to_string_lossy().into_owned();
        let env = [
            ("AWS_SHARED_CREDENTIALS_FILE", file.as_str()),
            ("AWS_REGION", "us-west-2"),
        ];
        let text =
            "[providers.aws]\ntype = \"bedrock\"\n[providers.aws.bedrock]\nprofile = \"work\"\n";
        let b = check(text, &env).unwrap().providers["aws"]
            .bedrock
            .clone()
            .unwrap();
        assert_eq!(b.credentials.access_key_id(), "AKIDWORK");
        assert!(matches!(b.source, Source::SharedFile { ref profile, .. } if profile == "work"));
        let text = "[providers.aws]\ntype = \"bedrock\"\n";
        let b = check(text, &env).unwrap().providers["aws"]
            .bedrock
            .clone()
            .unwrap();
        assert_eq!(b.credentials.access_key_id(), "AKIDDEFAULT");
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn check_names_what_is_missing_or_wrong() {
        let e = check("[providers.aws]\ntype = \"bedrock\"\n", &[]).unwrap_err();
        assert!(e.contains("providers.aws.bedrock.region: required"), "{e}");
        assert!(
            e.contains("providers.aws.bedrock: no AWS credentials"),
            "{e}"
        );
        let e = check(
            "[providers.aws]\ntype = \"bedrock\"\n[providers.aws.bedrock]\nregion = \"us-east-1\"\naccess_key_id = \"env:AKID\"\n",
            KEYS,
        )
        .unwrap_err();
        assert!(e.contains("must be given together"), "{e}");
        let e = check(
            "[providers.aws]\ntype = \"bedrock\"\nkeys = [{ key = \"env:SECRET\" }]\nheaders = { \"X-Amz-Date\" = \"x\" }\n[providers.aws.bedrock]\nregion = \"US East\"\naccess_key_id = \"AKIDLITERAL\"\nsecret_access_key = \"env:SECRET\"\n",
            KEYS,
        )
        .unwrap_err();
        for needle in [
            "providers.aws.keys: not used by type \"bedrock\"",
            "providers.aws.headers.\"X-Amz-Date\": x-amz-* headers are set by the request signer",
            "providers.aws.bedrock.region: \"US East\" is not a region name",
            "providers.aws.bedrock.access_key_id: literal secrets are not allowed",
        ] {
            assert!(e.contains(needle), "{needle} in {e}");
        }
        assert!(!e.contains("wJalrXUtnFEMI"), "{e}");
        let e = check(
            "[providers.m]\ntype = \"mock\"\n[providers.m.bedrock]\nregion = \"us-east-1\"\n",
            &[],
        )
        .unwrap_err();
        assert!(
            e.contains("providers.m.bedrock: only for type \"bedrock\""),
            "{e}"
        );
    }
}
