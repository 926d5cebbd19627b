//! The config of governance: client authentication (`server.auth`, `server.client_keys` as
//! hashes or references, `server.admin_token`), the plugin pipeline (`[plugins]`), the embedded
//! store (`[store]`) and the price table override (`[prices]`).

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{Checker, Secret, TIMEOUT_MS_RANGE};

/// Prefix of a SHA-256 hash written in the config: `sha256:` and 64 hex digits.
pub const HASH_PREFIX: &str = "sha256:";

/// Rows the ledger's queue holds before new rows are dropped (and counted).
pub const STORE_QUEUE_CAPACITY_DEFAULT: u64 = 65_536;
pub const STORE_QUEUE_CAPACITY_RANGE: std::ops::RangeInclusive<u64> = 1..=16_777_216;
/// Most rows the writer commits in one transaction.
pub const STORE_BATCH_ROWS_MAX_DEFAULT: u64 = 1024;
pub const STORE_BATCH_ROWS_MAX_RANGE: std::ops::RangeInclusive<u64> = 1..=65_536;
/// Longest a row waits in the writer before its batch is committed, ms.
pub const STORE_BATCH_INTERVAL_MS_DEFAULT: u64 = 200;
pub const STORE_BATCH_INTERVAL_MS_RANGE: std::ops::RangeInclusive<u64> = 1..=60_000;
/// Ledger rows older than this many days are deleted (hourly, in bounded steps).
pub const STORE_RETENTION_DAYS_DEFAULT: u64 = 400;
pub const STORE_RETENTION_DAYS_RANGE: std::ops::RangeInclusive<u64> = 1..=36_500;
/// How long a database statement waits for a lock held by another connection, ms.
pub const STORE_BUSY_TIMEOUT_MS_DEFAULT: u64 = 5_000;
/// How often the gateway looks for key and team changes made by another process (the CLI), ms.
pub const STORE_KEYS_POLL_MS_DEFAULT: u64 = 1_000;
pub const STORE_KEYS_POLL_MS_RANGE: std::ops::RangeInclusive<u64> = 100..=3_600_000;

const _: () = assert!(super::within(
    STORE_QUEUE_CAPACITY_DEFAULT,
    &STORE_QUEUE_CAPACITY_RANGE
));
const _: () = assert!(super::within(
    STORE_BATCH_ROWS_MAX_DEFAULT,
    &STORE_BATCH_ROWS_MAX_RANGE
));
const _: () = assert!(STORE_BATCH_ROWS_MAX_DEFAULT <= STORE_QUEUE_CAPACITY_DEFAULT);
const _: () = assert!(super::within(
    STORE_BATCH_INTERVAL_MS_DEFAULT,
    &STORE_BATCH_INTERVAL_MS_RANGE
));
const _: () = assert!(super::within(
    STORE_RETENTION_DAYS_DEFAULT,
    &STORE_RETENTION_DAYS_RANGE
));
const _: () = assert!(super::within(
    STORE_BUSY_TIMEOUT_MS_DEFAULT,
    &TIMEOUT_MS_RANGE
));
const _: () = assert!(super::within(
    STORE_KEYS_POLL_MS_DEFAULT,
    &STORE_KEYS_POLL_MS_RANGE
));
// Monthly budgets are rebuilt from the ledger at start: it must hold a whole month.
const _: () = assert!(*STORE_RETENTION_DAYS_RANGE.start() >= 1);

/// Whether API requests must present a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthMode {
    /// A client key (`server.client_keys`) or a virtual key (the governance plugin) is required.
    Keys,
    /// Every request is admitted without a key; only ever set explicitly.
    Off,
}

/// A compiled-in plugin, by its name in `[plugins] order`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PluginName {
    /// Virtual keys, rate limits and budgets.
    Governance,
    /// One usage row per request in the store.
    Ledger,
}

impl PluginName {
    pub const ALL: [(&'static str, PluginName); 2] = [
        ("governance", PluginName::Governance),
        ("ledger", PluginName::Ledger),
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            PluginName::Governance => "governance",
            PluginName::Ledger => "ledger",
        }
    }
}

/// A credential known by its SHA-256 only: the config gave the hash (`sha256:<hex>`), or a
/// reference to the plain secret, which was hashed at load (`plain`: deprecated for client keys).
#[derive(Clone, PartialEq, Eq)]
pub struct KeyHash {
    pub sha256: [u8; 32],
    /// Read as plain text from an `env:`/`file:` reference rather than given as a hash.
    pub plain: bool,
}

impl std::fmt::Debug for KeyHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.plain {
            "KeyHash(plain)"
        } else {
            "KeyHash"
        })
    }
}

/// SHA-256 of `bytes`.
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// `sha256:<64 lower-case hex digits>` of `bytes` (what `deepintshield hash-key` prints).
pub fn hash_text(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(HASH_PREFIX.len() + 64);
    out.push_str(HASH_PREFIX);
    for b in sha256(bytes) {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// The 32 bytes of 64 hex digits.
pub fn parse_hex32(hex: &str) -> Option<[u8; 32]> {
    if hex.len() != 64 || !hex.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

#[derive(Clone, Debug)]
pub struct PluginsConfig {
    /// Plugins in the order their pre-hooks run; default none.
    pub order: Vec<PluginName>,
}

#[derive(Clone, Debug)]
pub struct StoreConfig {
    /// The SQLite database file (created at start); relative paths are relative to the config.
    pub path: PathBuf,
    pub queue_capacity: usize,
    pub batch_rows_max: usize,
    pub batch_interval: Duration,
    pub retention_days: u32,
    pub busy_timeout: Duration,
    pub keys_poll_interval: Duration,
}

impl StoreConfig {
    /// Every default, at `path`.
    pub fn at(path: PathBuf) -> StoreConfig {
        StoreConfig {
            path,
            queue_capacity: STORE_QUEUE_CAPACITY_DEFAULT as usize,
            batch_rows_max: STORE_BATCH_ROWS_MAX_DEFAULT as usize,
            batch_interval: Duration::from_millis(STORE_BATCH_INTERVAL_MS_DEFAULT),
            retention_days: STORE_RETENTION_DAYS_DEFAULT as u32,
            busy_timeout: Duration::from_millis(STORE_BUSY_TIMEOUT_MS_DEFAULT),
            keys_poll_interval: Duration::from_millis(STORE_KEYS_POLL_MS_DEFAULT),
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct PricesConfig {
    /// A price file read over the bundled table (its entries win); reloaded on SIGHUP.
    pub path: Option<PathBuf>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct PluginsFile {
    order: Option<Vec<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct StoreFile {
    path: Option<String>,
    queue_capacity: Option<u64>,
    batch_rows_max: Option<u64>,
    batch_interval_ms: Option<u64>,
    retention_days: Option<u64>,
    busy_timeout_ms: Option<u64>,
    keys_poll_ms: Option<u64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct PricesFile {
    path: Option<String>,
}

impl Checker<'_> {
    pub(super) fn plugins(&mut self, f: PluginsFile) -> PluginsConfig {
        let mut order = Vec::new();
        for (i, name) in f.order.unwrap_or_default().iter().enumerate() {
            let key = format!("plugins.order[{i}]");
            match PluginName::ALL.iter().find(|(n, _)| n == name) {
                Some((_, p)) if order.contains(p) => {
                    self.error(&key, format!("plugin {name:?} is listed twice"))
                }
                Some((_, p)) => order.push(*p),
                None => {
                    let known: Vec<&str> = PluginName::ALL.iter().map(|(n, _)| *n).collect();
                    self.error(
                        &key,
                        format!("unknown plugin {name:?} (known: {})", known.join(", ")),
                    );
                }
            }
        }
        PluginsConfig { order }
    }

    pub(super) fn store(&mut self, f: StoreFile) -> Option<StoreConfig> {
        let Some(path) = f.path.as_deref() else {
            let other = f.queue_capacity.is_some()
                || f.batch_rows_max.is_some()
                || f.batch_interval_ms.is_some()
                || f.retention_days.is_some()
                || f.busy_timeout_ms.is_some()
                || f.keys_poll_ms.is_some();
            if other {
                self.error("store.path", "the [store] settings need a path");
            }
            return None;
        };
        if path.is_empty() {
            self.error("store.path", "must not be empty");
            return None;
        }
        let mut c = StoreConfig::at(self.dir.join(path));
        c.queue_capacity = self.size(
            "store.queue_capacity",
            f.queue_capacity,
            STORE_QUEUE_CAPACITY_DEFAULT,
            &STORE_QUEUE_CAPACITY_RANGE,
        );
        c.batch_rows_max = self.size(
            "store.batch_rows_max",
            f.batch_rows_max,
            STORE_BATCH_ROWS_MAX_DEFAULT,
            &STORE_BATCH_ROWS_MAX_RANGE,
        );
        c.batch_interval = Duration::from_millis(self.int(
            "store.batch_interval_ms",
            f.batch_interval_ms,
            STORE_BATCH_INTERVAL_MS_DEFAULT,
            &STORE_BATCH_INTERVAL_MS_RANGE,
        ));
        c.retention_days = self.int(
            "store.retention_days",
            f.retention_days,
            STORE_RETENTION_DAYS_DEFAULT,
            &STORE_RETENTION_DAYS_RANGE,
        ) as u32;
        c.busy_timeout = self.timeout(
            "store.busy_timeout_ms",
            f.busy_timeout_ms,
            STORE_BUSY_TIMEOUT_MS_DEFAULT,
        );
        c.keys_poll_interval = Duration::from_millis(self.int(
            "store.keys_poll_ms",
            f.keys_poll_ms,
            STORE_KEYS_POLL_MS_DEFAULT,
            &STORE_KEYS_POLL_MS_RANGE,
        ));
        Some(c)
    }

    pub(super) fn prices(&mut self, f: PricesFile) -> PricesConfig {
        match f.path.as_deref() {
            None => PricesConfig::default(),
            Some("") => {
                self.error("prices.path", "must not be empty");
                PricesConfig::default()
            }
            Some(p) => PricesConfig {
                path: Some(self.dir.join(p)),
            },
        }
    }

    pub(super) fn auth(&mut self, value: Option<&str>) -> AuthMode {
        self.choice(
            "server.auth",
            value,
            &[("keys", AuthMode::Keys), ("off", AuthMode::Off)],
        )
    }

    /// A credential given as `sha256:<hex>` or as an `env:`/`file:` reference (hashed here).
    pub(super) fn key_hash(&mut self, key: &str, value: &str) -> Option<KeyHash> {
        if let Some(hex) = value.strip_prefix(HASH_PREFIX) {
            let hash = parse_hex32(&hex.to_ascii_lowercase());
            if hash.is_none() {
                self.error(key, "a hash is \"sha256:\" and 64 hex digits");
            }
            return hash.map(|sha256| KeyHash {
                sha256,
                plain: false,
            });
        }
        let secret: Secret = self.secret(key, value)?;
        Some(KeyHash {
            sha256: sha256(secret.expose().as_bytes()),
            plain: true,
        })
    }

    /// The cross-section rules of governance, checked once every section is read.
    pub(super) fn governance_rules(&mut self, config: &super::Config) {
        let s = &config.server;
        for (name, plugin) in PluginName::ALL {
            if config.plugins.order.contains(&plugin) && config.store.is_none() {
                self.error(
                    "plugins.order",
                    format!("the {name} plugin needs a database: set store.path"),
                );
            }
        }
        if s.auth == AuthMode::Off && !s.client_keys.is_empty() {
            self.error(
                "server.auth",
                "\"off\" admits requests without a key, yet server.client_keys is set: remove one",
            );
        }
        if s.admin_token.is_none() && !s.admin_listen.ip().is_loopback() {
            self.error(
                "server.admin_token",
                format!(
                    "the admin listener ({}) is not on loopback: set an admin token (it guards \
                     /stats, /metrics and the admin API of keys and usage) or listen on 127.0.0.1",
                    s.admin_listen
                ),
            );
        }
    }
}

impl super::Config {
    /// Why this config cannot serve: authentication is on (`server.auth = "keys"`, the default)
    /// but no key could ever be accepted. Checked at start, at reload and by `--check`, not when
    /// the file is parsed, so that tools can read a config that serves nobody (the CLI does).
    pub fn auth_problem(&self) -> Option<String> {
        let s = &self.server;
        let governance = self.plugins.order.contains(&PluginName::Governance);
        (s.auth == AuthMode::Keys && s.client_keys.is_empty() && !governance).then(|| {
            format!(
                "{}: server.auth: no key can be accepted: set server.client_keys, add \
                 \"governance\" to plugins.order (virtual keys), or switch authentication off \
                 explicitly with server.auth = \"off\"",
                self.path.display()
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOCK: &str = "[providers.mock]\ntype = \"mock\"\n";

    fn load(text: &str) -> Result<super::super::Config, String> {
        let env = |name: &str| (name == "TOKEN").then(|| std::ffi::OsString::from("t0ken"));
        super::super::parse(text, std::path::Path::new("/etc/g.toml"), &env, None)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn governance_sections_parse_with_their_defaults() {
        let c = load(&format!(
            "[server]\nadmin_token = \"env:TOKEN\"\n[plugins]\norder = [\"ledger\", \"governance\"]\n\
             [store]\npath = \"db/g.db\"\nretention_days = 30\n[prices]\npath = \"p.toml\"\n{MOCK}"
        ))
        .unwrap();
        assert_eq!(
            c.plugins.order,
            [PluginName::Ledger, PluginName::Governance]
        );
        let store = c.store.as_ref().unwrap();
        assert_eq!(store.path, std::path::Path::new("/etc/db/g.db"));
        assert_eq!(store.retention_days, 30);
        assert_eq!(store.batch_rows_max, STORE_BATCH_ROWS_MAX_DEFAULT as usize);
        assert_eq!(
            c.prices.path.as_deref(),
            Some(std::path::Path::new("/etc/p.toml"))
        );
        assert_eq!(
            c.server.admin_token.as_ref().unwrap().sha256,
            sha256(b"t0ken")
        );
        assert_eq!(c.server.auth, AuthMode::Keys);
        assert!(c.auth_problem().is_none(), "governance accepts keys");
        let hashed = load(&format!(
            "[server]\nclient_keys = [\"{}\"]\n{MOCK}",
            hash_text(b"k")
        ))
        .unwrap();
        assert_eq!(hashed.server.client_keys[0].sha256, sha256(b"k"));
        assert!(!hashed.server.client_keys[0].plain);
    }

    #[test]
    fn governance_mistakes_are_named() {
        let cases = [
            (
                "[plugins]\norder = [\"cache\"]\n",
                "plugins.order[0]: unknown plugin \"cache\"",
            ),
            (
                "[plugins]\norder = [\"ledger\", \"ledger\"]\n[store]\npath = \"x\"\n",
                "listed twice",
            ),
            (
                "[plugins]\norder = [\"governance\"]\n",
                "the governance plugin needs a database",
            ),
            (
                "[store]\nretention_days = 3\n",
                "store.path: the [store] settings need a path",
            ),
            (
                "[store]\npath = \"x\"\nretention_days = 0\n",
                "store.retention_days: 0 is out of range",
            ),
            (
                "[server]\nauth = \"maybe\"\n",
                "server.auth: expected one of",
            ),
            (
                "[server]\nauth = \"off\"\nclient_keys = [\"env:TOKEN\"]\n",
                "server.auth: \"off\" admits",
            ),
            (
                "[server]\nclient_keys = [\"sha256:abc\"]\n",
                "a hash is \"sha256:\" and 64 hex digits",
            ),
            (
                "[server]\nadmin_listen = \"0.0.0.0:9090\"\n[store]\npath = \"x\"\n",
                "server.admin_token: the admin listener (0.0.0.0:9090) is not on loopback",
            ),
            (
                "[server]\nadmin_listen = \"[::]:9090\"\n",
                "server.admin_token: the admin listener ([::]:9090) is not on loopback",
            ),
        ];
        for (text, expected) in cases {
            let e = load(&format!("{text}{MOCK}")).unwrap_err();
            assert!(e.contains(expected), "{text}: {e}");
        }
        let open = load(MOCK).unwrap();
        assert!(open
            .auth_problem()
            .unwrap()
            .contains("server.auth: no key can be accepted"));
    }

    #[test]
    fn hashes_round_trip() {
        let text = hash_text(b"dis-abc");
        assert!(text.starts_with(HASH_PREFIX) && text.len() == 71);
        assert_eq!(parse_hex32(&text[7..]), Some(sha256(b"dis-abc")));
        assert_eq!(parse_hex32("zz"), None);
        assert_eq!(parse_hex32(&"g".repeat(64)), None);
    }
}
