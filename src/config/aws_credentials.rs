//! AWS credentials for SigV4 signing: an access key id, a secret access key and an optional
//! session token, found in the gateway's config, in the standard AWS environment variables or in
//! the shared credentials file (`~/.aws/credentials`), in that order. Secrets never appear in
//! `Debug` output, errors or logs: only the access key id and where the keys came from are named.

use std::ffi::OsString;
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

/// Largest shared credentials file read, in bytes; a larger one is an error, not a truncation.
pub const SHARED_FILE_BYTES_MAX: u64 = 1024 * 1024;
/// Longest access key id accepted (AWS documents 16..=128 characters).
pub const ACCESS_KEY_ID_CHARS_MAX: usize = 128;
/// Longest secret access key or session token accepted (session tokens run to a few KiB).
pub const SECRET_CHARS_MAX: usize = 16 * 1024;
/// The profile used when `AWS_PROFILE` is not set.
pub const PROFILE_DEFAULT: &str = "default";

pub const ENV_ACCESS_KEY_ID: &str = "AWS_ACCESS_KEY_ID";
pub const ENV_SECRET_ACCESS_KEY: &str = "AWS_SECRET_ACCESS_KEY";
pub const ENV_SESSION_TOKEN: &str = "AWS_SESSION_TOKEN";
pub const ENV_SHARED_CREDENTIALS_FILE: &str = "AWS_SHARED_CREDENTIALS_FILE";
pub const ENV_PROFILE: &str = "AWS_PROFILE";

/// Reads one environment variable (injectable for tests; the process environment in production).
pub type EnvLookup<'a> = &'a dyn Fn(&str) -> Option<OsString>;

/// A secret string: compared and used like a string, printed as `<redacted>`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The secret itself, for signing. Never format it into a message.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// One set of AWS credentials. The access key id is an identifier (AWS prints it in its own error
/// messages); the secret access key and the session token are secrets.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    access_key_id: String,
    secret_access_key: Secret,
    session_token: Option<Secret>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &self.secret_access_key)
            .field(
                "session_token",
                &self.session_token.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

impl Credentials {
    /// Checked credentials: a non-empty access key id of visible ASCII, a non-empty secret and
    /// token without whitespace or control characters (both go into a header or an HMAC as is).
    pub fn new(
        access_key_id: &str,
        secret_access_key: &str,
        session_token: Option<&str>,
    ) -> Result<Credentials, CredentialsError> {
        let id_ok = !access_key_id.is_empty()
            && access_key_id.len() <= ACCESS_KEY_ID_CHARS_MAX
            && access_key_id.bytes().all(|b| b.is_ascii_graphic());
        if !id_ok {
            return Err(CredentialsError::Invalid("access key id"));
        }
        if !secret_ok(secret_access_key) {
            return Err(CredentialsError::Invalid("secret access key"));
        }
        let session_token = match session_token {
            Some(t) if !secret_ok(t) => return Err(CredentialsError::Invalid("session token")),
            Some(t) => Some(Secret::new(t)),
            None => None,
        };
        Ok(Credentials {
            access_key_id: access_key_id.to_string(),
            secret_access_key: Secret::new(secret_access_key),
            session_token,
        })
    }

    pub fn access_key_id(&self) -> &str {
        &self.access_key_id
    }

    /// The secret access key, for deriving signing keys only.
    pub fn secret_access_key(&self) -> &str {
        self.secret_access_key.expose()
    }

    /// The session token of temporary credentials (sent as `x-amz-security-token`).
    pub fn session_token(&self) -> Option<&str> {
        self.session_token.as_ref().map(Secret::expose)
    }
}

fn secret_ok(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= SECRET_CHARS_MAX
        && s.chars().all(|c| !c.is_whitespace() && !c.is_control())
}

/// Where a set of credentials was found (safe to log).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// The provider's `access_key_id` / `secret_access_key` / `session_token` settings.
    Config,
    /// `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` and `AWS_SESSION_TOKEN`.
    Environment,
    /// A profile of the shared credentials file.
    SharedFile { path: PathBuf, profile: String },
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Config => f.write_str("the provider config"),
            Source::Environment => f.write_str("the AWS_* environment variables"),
            Source::SharedFile { path, profile } => {
                write!(f, "profile [{profile}] of {}", path.display())
            }
        }
    }
}

/// Why no credentials could be had. Messages name settings, variables, files and profiles, never
/// a secret.
#[derive(Debug, PartialEq, Eq)]
pub enum CredentialsError {
    /// A value is empty, too long or has characters that cannot be signed with.
    Invalid(&'static str),
    /// One of a required pair is set without the other (e.g. `AWS_ACCESS_KEY_ID` alone).
    Incomplete(String),
    /// The shared credentials file could not be read or is larger than the bound.
    File { path: PathBuf, reason: String },
    /// The profile exists but holds no static keys (e.g. only `role_arn` or `sso_session`).
    ProfileWithoutKeys { path: PathBuf, profile: String },
    /// Nothing found anywhere.
    NotFound,
}

impl fmt::Display for CredentialsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CredentialsError::Invalid(what) => write!(
                f,
                "the AWS {what} is empty, too long or contains whitespace or control characters"
            ),
            CredentialsError::Incomplete(what) => write!(f, "incomplete AWS credentials: {what}"),
            CredentialsError::File { path, reason } => {
                write!(f, "AWS credentials file {}: {reason}", path.display())
            }
            CredentialsError::ProfileWithoutKeys { path, profile } => write!(
                f,
                "profile [{profile}] of {} has no aws_access_key_id and aws_secret_access_key \
                 (role, SSO and process credentials are not supported)",
                path.display()
            ),
            CredentialsError::NotFound => f.write_str(
                "no AWS credentials: set access_key_id and secret_access_key, or \
                 AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or a shared credentials file",
            ),
        }
    }
}

impl std::error::Error for CredentialsError {}

/// The provider's own settings, already resolved from their `env:`/`file:` references.
#[derive(Clone, Default)]
pub struct ConfigKeys<'a> {
    pub access_key_id: Option<&'a str>,
    pub secret_access_key: Option<&'a str>,
    pub session_token: Option<&'a str>,
}

/// Credentials from the first source that has any: the config, then the environment, then the
/// shared credentials file. A source that is partly set is an error, not a fall-through, so a
/// typo cannot silently pick other keys.
pub fn resolve(
    config: &ConfigKeys<'_>,
    env: EnvLookup<'_>,
) -> Result<(Credentials, Source), CredentialsError> {
    if let Some(c) = from_config(config)? {
        return Ok((c, Source::Config));
    }
    if let Some(c) = from_env(env)? {
        return Ok((c, Source::Environment));
    }
    let Some(path) = shared_file_path(env) else {
        return Err(CredentialsError::NotFound);
    };
    let profile = env_string(env, ENV_PROFILE).unwrap_or_else(|| PROFILE_DEFAULT.to_string());
    match from_shared_file(&path, &profile)? {
        Some(c) => Ok((c, Source::SharedFile { path, profile })),
        None => Err(CredentialsError::NotFound),
    }
}

/// From the config: `None` when none of the three settings is given.
pub fn from_config(keys: &ConfigKeys<'_>) -> Result<Option<Credentials>, CredentialsError> {
    match (keys.access_key_id, keys.secret_access_key) {
        (None, None) if keys.session_token.is_none() => Ok(None),
        (Some(id), Some(secret)) => Credentials::new(id, secret, keys.session_token).map(Some),
        _ => Err(CredentialsError::Incomplete(
            "access_key_id and secret_access_key must be given together".into(),
        )),
    }
}

/// From `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` and `AWS_SESSION_TOKEN` (empty values count
/// as unset, as in the AWS SDKs): `None` when neither key variable is set.
pub fn from_env(env: EnvLookup<'_>) -> Result<Option<Credentials>, CredentialsError> {
    let id = env_string(env, ENV_ACCESS_KEY_ID);
    let secret = env_string(env, ENV_SECRET_ACCESS_KEY);
    let token = env_string(env, ENV_SESSION_TOKEN);
    match (id, secret) {
        (None, None) => Ok(None),
        (Some(id), Some(secret)) => Credentials::new(&id, &secret, token.as_deref()).map(Some),
        (Some(_), None) => Err(CredentialsError::Incomplete(format!(
            "{ENV_ACCESS_KEY_ID} is set but {ENV_SECRET_ACCESS_KEY} is not"
        ))),
        (None, Some(_)) => Err(CredentialsError::Incomplete(format!(
            "{ENV_SECRET_ACCESS_KEY} is set but {ENV_ACCESS_KEY_ID} is not"
        ))),
    }
}

/// `AWS_SHARED_CREDENTIALS_FILE`, else `$HOME/.aws/credentials`; `None` without either.
pub fn shared_file_path(env: EnvLookup<'_>) -> Option<PathBuf> {
    if let Some(p) = env(ENV_SHARED_CREDENTIALS_FILE).filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    let home = env("HOME").filter(|h| !h.is_empty())?;
    Some(Path::new(&home).join(".aws").join("credentials"))
}

/// The static keys of `profile` in the shared credentials file at `path`: `None` when the file
/// does not exist or has no such profile.
pub fn from_shared_file(
    path: &Path,
    profile: &str,
) -> Result<Option<Credentials>, CredentialsError> {
    let file_err = |reason: String| CredentialsError::File {
        path: path.to_path_buf(),
        reason,
    };
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(file_err(e.to_string())),
    };
    let mut text = String::new();
    file.take(SHARED_FILE_BYTES_MAX + 1)
        .read_to_string(&mut text)
        .map_err(|e| file_err(e.to_string()))?;
    if text.len() as u64 > SHARED_FILE_BYTES_MAX {
        return Err(file_err(format!(
            "larger than {SHARED_FILE_BYTES_MAX} bytes"
        )));
    }
    let Some(props) = parse_profile(&text, profile) else {
        return Ok(None);
    };
    let get = |k: &str| {
        props
            .iter()
            .rev()
            .find(|(name, _)| name == k)
            .map(|(_, v)| v.as_str())
            .filter(|v| !v.is_empty())
    };
    let token = get("aws_session_token").or_else(|| get("aws_security_token"));
    match (get("aws_access_key_id"), get("aws_secret_access_key")) {
        (Some(id), Some(secret)) => Credentials::new(id, secret, token).map(Some),
        (None, None) => Err(CredentialsError::ProfileWithoutKeys {
            path: path.to_path_buf(),
            profile: profile.to_string(),
        }),
        _ => Err(CredentialsError::Incomplete(format!(
            "profile [{profile}] of {} needs both aws_access_key_id and aws_secret_access_key",
            path.display()
        ))),
    }
}

/// The properties of one profile of an AWS shared credentials file, in file order (a profile
/// given twice is merged; a later property wins), or `None` when the profile is absent.
///
/// The format: `[name]` section lines, `key = value` properties, full-line comments starting with
/// `#` or `;`, a comment after a section header or after whitespace in a value, and indented
/// continuation lines (sub-properties such as `s3 =`), which are skipped.
pub fn parse_profile(text: &str, profile: &str) -> Option<Vec<(String, String)>> {
    let mut in_profile = false;
    let mut found = false;
    let mut props = Vec::new();
    for line in text.lines() {
        if line.starts_with([' ', '\t']) {
            continue; // a continuation of the previous property
        }
        let line = line.trim_end_matches('\r');
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with(['#', ';']) {
            continue;
        }
        if let Some(rest) = trimmed.strip_prefix('[') {
            in_profile = match rest.split_once(']') {
                Some((name, after))
                    if after.trim().is_empty() || after.trim_start().starts_with(['#', ';']) =>
                {
                    name.trim() == profile
                }
                _ => false, // a malformed section header: its properties belong to no profile
            };
            found |= in_profile;
            continue;
        }
        if !in_profile {
            continue;
        }
        let Some((key, value)) = trimmed.split_once('=') else {
            continue;
        };
        props.push((key.trim().to_string(), strip_comment(value).to_string()));
    }
    found.then_some(props)
}

/// A value without a trailing comment: `#` or `;` preceded by whitespace starts one.
fn strip_comment(value: &str) -> &str {
    let bytes = value.as_bytes();
    let end = (1..bytes.len())
        .find(|&i| matches!(bytes[i], b'#' | b';') && bytes[i - 1].is_ascii_whitespace())
        .unwrap_or(bytes.len());
    value[..end].trim()
}

fn env_string(env: EnvLookup<'_>, name: &str) -> Option<String> {
    env(name)
        .and_then(|v| v.into_string().ok())
        .filter(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env_of(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<OsString> {
        let map: HashMap<String, OsString> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), OsString::from(v)))
            .collect();
        move |name| map.get(name).cloned()
    }

    /// A credentials file in a fresh folder, removed when dropped.
    struct TempFile(PathBuf);

    impl TempFile {
        fn new(name: &str, text: &str) -> TempFile {
            let dir =
                std::env::temp_dir().join(format!("dis-aws-creds-{}-{name}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            let path = dir.join("credentials");
            std::fs::write(&path, text).unwrap();
            TempFile(path)
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            if let Some(dir) = self.0.parent() {
                let _ = std::fs::remove_dir_all(dir);
            }
        }
    }

    const FILE: &str = "\
# a comment
[default]
aws_access_key_id = AKIDDEFAULT
aws_secret_access_key = secret/default+key ; trailing comment
[work] # comment after the header
aws_access_key_id=AKIDWORK
aws_secret_access_key=worksecret
aws_session_token = tokenwork
s3 =
  max_concurrent_requests = 10
[sso-only]
sso_session = corp
role_arn = arn:aws:iam::123456789012:role/x
[half]
aws_access_key_id = AKIDHALF
[default]
aws_secret_access_key = overridden
";

    #[test]
    fn secrets_never_in_debug() {
        let c = Credentials::new("AKIDEXAMPLE", "s3cr3t-value", Some("t0k3n-value")).unwrap();
        let dbg = format!("{c:?}");
        assert!(dbg.contains("AKIDEXAMPLE"), "{dbg}");
        assert!(!dbg.contains("s3cr3t") && !dbg.contains("t0k3n"), "{dbg}");
        assert_eq!(format!("{:?}", Secret::new("x")), "<redacted>");
        assert_eq!(c.secret_access_key(), "s3cr3t-value");
        assert_eq!(c.session_token(), Some("t0k3n-value"));
    }

    #[test]
    fn rejects_unusable_values_without_echoing_them() {
        for (id, secret, token) in [
            ("", "s", None),
            ("AKID", "", None),
            ("AK ID", "s", None),
            ("AKID", "SECRET VALUE", None),
            ("AKID", "s", Some("TOKEN\nVALUE")),
            ("AKID", "s", Some("")),
        ] {
            let e = Credentials::new(id, secret, token).unwrap_err();
            let msg = format!("{e} {e:?}");
            assert!(!msg.contains("VALUE"), "{msg}");
        }
        assert!(Credentials::new(&"A".repeat(ACCESS_KEY_ID_CHARS_MAX + 1), "s", None).is_err());
    }

    #[test]
    fn config_first_then_environment() {
        let env = env_of(&[
            ("AWS_ACCESS_KEY_ID", "AKIDENV"),
            ("AWS_SECRET_ACCESS_KEY", "envs"),
        ]);
        let cfg = ConfigKeys {
            access_key_id: Some("AKIDCFG"),
            secret_access_key: Some("cfgs"),
            session_token: Some("cfgt"),
        };
        let (c, src) = resolve(&cfg, &env).unwrap();
        assert_eq!((c.access_key_id(), src), ("AKIDCFG", Source::Config));
        assert_eq!(c.session_token(), Some("cfgt"));
        let (c, src) = resolve(&ConfigKeys::default(), &env).unwrap();
        assert_eq!((c.access_key_id(), src), ("AKIDENV", Source::Environment));
        assert_eq!(c.session_token(), None);
        let half = ConfigKeys {
            access_key_id: Some("AKIDCFG"),
            ..ConfigKeys::default()
        };
        assert!(matches!(
            resolve(&half, &env),
            Err(CredentialsError::Incomplete(_))
        ));
        let token_only = ConfigKeys {
            session_token: Some("t"),
            ..ConfigKeys::default()
        };
        assert!(from_config(&token_only).is_err());
    }

    #[test]
    fn environment_pairs_and_empty_values() {
        let env = env_of(&[
            ("AWS_ACCESS_KEY_ID", "AKIDENV"),
            ("AWS_SECRET_ACCESS_KEY", "envs"),
            ("AWS_SESSION_TOKEN", "envt"),
        ]);
        let c = from_env(&env).unwrap().unwrap();
        assert_eq!(c.session_token(), Some("envt"));
        let env = env_of(&[
            ("AWS_ACCESS_KEY_ID", "AKIDENV"),
            ("AWS_SECRET_ACCESS_KEY", ""),
        ]);
        let e = from_env(&env).unwrap_err();
        assert!(
            e.to_string().contains("AWS_SECRET_ACCESS_KEY is set")
                || e.to_string().contains("is not")
        );
        assert_eq!(
            from_env(&env_of(&[("AWS_SESSION_TOKEN", "t")])).unwrap(),
            None
        );
    }

    #[test]
    fn shared_file_profiles() {
        let file = TempFile::new("profiles", FILE);
        let path = file.0.clone();
        let c = from_shared_file(&path, "default").unwrap().unwrap();
        assert_eq!(c.access_key_id(), "AKIDDEFAULT");
        assert_eq!(
            c.secret_access_key(),
            "overridden",
            "a later [default] wins"
        );
        let c = from_shared_file(&path, "work").unwrap().unwrap();
        assert_eq!(
            (c.access_key_id(), c.secret_access_key(), c.session_token()),
            ("AKIDWORK", "worksecret", Some("tokenwork"))
        );
        assert_eq!(from_shared_file(&path, "absent").unwrap(), None);
        assert!(matches!(
            from_shared_file(&path, "sso-only"),
            Err(CredentialsError::ProfileWithoutKeys { .. })
        ));
        assert!(matches!(
            from_shared_file(&path, "half"),
            Err(CredentialsError::Incomplete(_))
        ));
        assert_eq!(
            from_shared_file(&path.with_file_name("missing"), "default").unwrap(),
            None
        );
    }

    #[test]
    fn shared_file_through_resolve_with_profile_and_location() {
        let file = TempFile::new("resolve", FILE);
        let path = file.0.clone();
        let p = path.to_str().unwrap();
        let env = env_of(&[("AWS_SHARED_CREDENTIALS_FILE", p), ("AWS_PROFILE", "work")]);
        let (c, src) = resolve(&ConfigKeys::default(), &env).unwrap();
        assert_eq!(c.access_key_id(), "AKIDWORK");
        assert_eq!(
            src,
            Source::SharedFile {
                path: path.clone(),
                profile: "work".into()
            }
        );
        assert!(src.to_string().contains("[work]"));
        let env = env_of(&[("HOME", "/home/someone")]);
        assert_eq!(
            shared_file_path(&env),
            Some(PathBuf::from("/home/someone/.aws/credentials"))
        );
        assert_eq!(shared_file_path(&env_of(&[])), None);
        assert_eq!(
            resolve(&ConfigKeys::default(), &env_of(&[])),
            Err(CredentialsError::NotFound)
        );
    }

    #[test]
    fn oversized_shared_file_is_an_error() {
        let big = format!(
            "[default]\naws_access_key_id = A\naws_secret_access_key = s\n{}",
            "#".repeat(SHARED_FILE_BYTES_MAX as usize)
        );
        let file = TempFile::new("big", &big);
        let path = file.0.clone();
        let e = from_shared_file(&path, "default").unwrap_err();
        assert!(e.to_string().contains("larger than"), "{e}");
    }

    #[test]
    fn ini_details() {
        let text = "[a]\r\nk = v # c\r\nx=y;z\r\n[ b ]\nk=w\n[broken\nk=no\n";
        assert_eq!(
            parse_profile(text, "a").unwrap(),
            vec![("k".into(), "v".into()), ("x".into(), "y;z".into())]
        );
        assert_eq!(
            parse_profile(text, "b").unwrap(),
            vec![("k".into(), "w".into())]
        );
        assert_eq!(parse_profile(text, "broken"), None);
        assert_eq!(parse_profile("", "default"), None);
        assert_eq!(parse_profile("[default]\n", "default"), Some(vec![]));
    }
}
