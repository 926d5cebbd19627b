//! AWS's SigV4 test suite (the `v4` cases of the AWS signing test suite, as published with the
//! AWS Common Runtime's auth library and vendored unchanged in `tests/fixtures/aws-sigv4/v4`:
//! `<case>/request.txt`, `context.json`, `header-canonical-request.txt`,
//! `header-string-to-sign.txt`, `header-signature.txt`, `header-signed-request.txt`) driven
//! through `providers::sigv4`: every step of every case must match, and the verifier must accept
//! what the signer produced. `DEEPINTSHIELD_SIGV4_SUITE` points it at another copy of the folder.

use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use deepintshield::providers::aws_credentials::Credentials;
use deepintshield::providers::sigv4::{
    self, AmzTime, Expected, Incoming, Payload, Request, Settings,
};
use serde_json::Value;

const SUITE_ENV: &str = "DEEPINTSHIELD_SIGV4_SUITE";
/// The vendored suite, relative to the crate.
const SUITE_SUBDIR: &str = "tests/fixtures/aws-sigv4/v4";
/// The cases of the vendored suite: all of them must be found and run.
const SUITE_CASES: usize = 38;

fn suite_dir() -> (PathBuf, bool) {
    match std::env::var_os(SUITE_ENV) {
        Some(dir) => (PathBuf::from(dir), false),
        None => (
            Path::new(env!("CARGO_MANIFEST_DIR")).join(SUITE_SUBDIR),
            true,
        ),
    }
}

/// A parsed `request.txt`: request line, headers (continuation lines joined), body.
struct SuiteRequest {
    method: String,
    path_and_query: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

fn parse_request(raw: &[u8]) -> SuiteRequest {
    let text = String::from_utf8(raw.to_vec()).expect("request.txt is UTF-8");
    let (head, body) = match text.find("\n\n") {
        Some(i) => (&text[..i], text.as_bytes()[i + 2..].to_vec()),
        None => (text.trim_end_matches('\n'), Vec::new()),
    };
    let mut lines = head.lines();
    let request_line = lines.next().expect("a request line");
    let mut parts = request_line.splitn(2, ' ');
    let method = parts.next().unwrap().to_string();
    let rest = parts.next().expect("a request target");
    let path_and_query = rest
        .strip_suffix(" HTTP/1.1")
        .expect("HTTP/1.1")
        .to_string();
    let mut headers: Vec<(String, String)> = Vec::new();
    for line in lines {
        if line.starts_with([' ', '\t']) {
            let last = headers.last_mut().expect("a continuation follows a header");
            last.1.push('\n');
            last.1.push_str(line);
        } else {
            let (n, v) = line.split_once(':').expect("Name:value");
            headers.push((n.to_string(), v.to_string()));
        }
    }
    SuiteRequest {
        method,
        path_and_query,
        headers,
        body,
    }
}

fn read(dir: &Path, name: &str) -> String {
    std::fs::read_to_string(dir.join(name))
        .unwrap_or_else(|e| panic!("{}/{name}: {e}", dir.display()))
}

/// The value of `name` in `header-signed-request.txt`.
fn signed_header(signed_request: &str, name: &str) -> Option<String> {
    signed_request.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.eq_ignore_ascii_case(name).then(|| v.to_string())
    })
}

fn run_case(dir: &Path) -> Result<(), String> {
    let ctx: Value = serde_json::from_str(&read(dir, "context.json")).map_err(|e| e.to_string())?;
    let s = |k: &str| ctx[k].as_str().map(str::to_string);
    let creds = &ctx["credentials"];
    let credentials = Credentials::new(
        creds["access_key_id"].as_str().ok_or("no access_key_id")?,
        creds["secret_access_key"].as_str().ok_or("no secret")?,
        creds["token"].as_str(),
    )
    .map_err(|e| e.to_string())?;
    let region = s("region").ok_or("no region")?;
    let service = s("service").ok_or("no service")?;
    let stamp: String = s("timestamp")
        .ok_or("no timestamp")?
        .chars()
        .filter(|c| *c != '-' && *c != ':')
        .collect();
    let when = AmzTime::parse(&stamp).ok_or("bad timestamp")?;
    let time = UNIX_EPOCH + Duration::from_secs(when.unix_s() as u64);
    let settings = Settings {
        normalize_uri_path: ctx["normalize"].as_bool().unwrap_or(true),
        double_uri_encode: true,
        content_sha256_header: ctx["sign_body"].as_bool().unwrap_or(false),
        sign_session_token: !ctx["omit_session_token"].as_bool().unwrap_or(false),
    };

    let req = parse_request(&std::fs::read(dir.join("request.txt")).map_err(|e| e.to_string())?);
    let url = format!("https://example.amazonaws.com{}", req.path_and_query);
    let headers: Vec<(&str, &str)> = req
        .headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    let signed = sigv4::sign(
        &Request {
            method: &req.method,
            url: &url,
            headers: &headers,
            payload: Payload::Bytes(&req.body),
        },
        &credentials,
        &region,
        &service,
        &settings,
        time,
    )
    .map_err(|e| e.to_string())?;

    let expect = |what: &str, got: &str, want: &str| {
        if got == want {
            Ok(())
        } else {
            Err(format!("{what}:\n--- expected\n{want}\n--- got\n{got}"))
        }
    };
    expect(
        "canonical request",
        &signed.canonical_request,
        &read(dir, "header-canonical-request.txt"),
    )?;
    expect(
        "string to sign",
        &signed.string_to_sign,
        &read(dir, "header-string-to-sign.txt"),
    )?;
    expect(
        "signature",
        &signed.signature,
        read(dir, "header-signature.txt").trim(),
    )?;
    let signed_request = read(dir, "header-signed-request.txt");
    for name in [
        "authorization",
        "x-amz-date",
        "x-amz-security-token",
        "x-amz-content-sha256",
    ] {
        let want = signed_header(&signed_request, name);
        expect(
            name,
            signed.header(name).unwrap_or("<absent>"),
            want.as_deref().unwrap_or("<absent>"),
        )?;
    }

    // The verifier accepts the signed request as a server receives it.
    let (path, query) = req
        .path_and_query
        .split_once('?')
        .unwrap_or((&req.path_and_query, ""));
    let mut wire: Vec<(String, Vec<u8>)> = req
        .headers
        .iter()
        .map(|(n, v)| (n.clone(), v.clone().into_bytes()))
        .collect();
    for (n, v) in &signed.headers {
        wire.push((n.to_string(), v.clone().into_bytes()));
    }
    let wire: Vec<(&str, &[u8])> = wire
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_slice()))
        .collect();
    sigv4::verify(
        &Incoming {
            method: &req.method,
            path,
            query,
            headers: &wire,
            body: &req.body,
        },
        &Expected {
            credentials: &credentials,
            region: &region,
            service: &service,
            settings,
        },
        time + Duration::from_secs(1),
    )
    .map_err(|e| format!("verifier refused: {e}"))?;
    Ok(())
}

#[test]
fn aws_sigv4_test_suite() {
    let (dir, vendored) = suite_dir();
    assert!(dir.is_dir(), "{} is not a folder", dir.display());
    let mut cases: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("read the suite folder")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("request.txt").is_file())
        .collect();
    cases.sort();
    assert!(!cases.is_empty(), "no cases in {}", dir.display());
    if vendored {
        assert_eq!(cases.len(), SUITE_CASES, "cases in {}", dir.display());
    }
    let mut failures = Vec::new();
    for case in &cases {
        if let Err(e) = run_case(case) {
            failures.push(format!("{}: {e}", case.display()));
        }
    }
    println!(
        "AWS SigV4 suite: {} of {} cases pass",
        cases.len() - failures.len(),
        cases.len()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
