//! End-to-end: the mock's Bedrock runtime endpoints over loopback, with requests signed by the
//! gateway's SigV4 signer and streams read by its event stream decoder.

mod common;

use std::time::SystemTime;

use common::{Mock, Reply};
use deepintshield::providers::aws_credentials::Credentials;
use deepintshield::providers::eventstream::{DecodeError, Decoder, Message, MessageKind};
use deepintshield::providers::sigv4::{
    bedrock_model_path, Payload, Request, Signer, SERVICE_BEDROCK,
};
use serde_json::{json, Value};

const AKID: &str = "AKIDMOCKTEST";
const SECRET: &str = "mock/secret+key";
const ARN: &str = "arn:aws:bedrock:us-east-1:123456789012:inference-profile/\
                   us.anthropic.claude-3-5-sonnet-20240620-v1:0";

/// The mock with four chunks a stream, the test credentials, and `extra`.
fn start(extra: &[&str]) -> Mock {
    let base = [
        "--stream-chunks",
        "4",
        "--aws-access-key-id",
        AKID,
        "--aws-secret-access-key",
        SECRET,
    ];
    Mock::start(&[&base[..], extra].concat())
}

impl Mock {
    fn signer(&self, secret: &str, token: Option<&str>) -> Signer {
        Signer::new(
            Credentials::new(AKID, secret, token).unwrap(),
            "us-east-1",
            SERVICE_BEDROCK,
        )
        .unwrap()
    }

    /// POST `body` to `path`, signed with `signer` (unsigned when `None`).
    fn post(&self, path: &str, body: &[u8], signer: Option<&Signer>) -> Reply {
        let url = format!("http://{}{path}", self.addr);
        let mut headers = vec![("content-type".to_string(), "application/json".to_string())];
        if let Some(s) = signer {
            let signed = s
                .sign(
                    &Request {
                        method: "POST",
                        url: &url,
                        headers: &[("content-type", "application/json")],
                        payload: Payload::Bytes(body),
                    },
                    SystemTime::now(),
                )
                .unwrap();
            assert_eq!(signed.host, self.addr.to_string());
            for (n, v) in signed.headers {
                headers.push((n.to_string(), v));
            }
        }
        self.send(path, &headers, body)
    }

    fn send(&self, path: &str, headers: &[(String, String)], body: &[u8]) -> Reply {
        let headers: Vec<(&str, &str)> = headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        self.call("POST", path, &headers, body)
    }

    fn converse(&self, model: &str, op: &str, body: &Value) -> Reply {
        let signer = self.signer(SECRET, None);
        self.post(
            &bedrock_model_path(model, op),
            &serde_json::to_vec(body).unwrap(),
            Some(&signer),
        )
    }
}

impl Reply {
    /// The AWS error type (`x-amzn-errortype` before its `:namespace`).
    fn error_type(&self) -> &str {
        self.header("x-amzn-errortype")
            .and_then(|v| v.split(':').next())
            .unwrap_or("")
    }

    fn events(&self) -> Result<Vec<Message>, DecodeError> {
        let mut d = Decoder::new();
        let mut out = Vec::new();
        // Fed in small slices, as a network read would hand them over.
        for piece in self.body.chunks(7) {
            d.decode_all(piece, &mut out)?;
        }
        d.finish()?;
        Ok(out)
    }
}

fn user(text: &str) -> Value {
    json!({"messages": [{"role": "user", "content": [{"text": text}]}]})
}

fn kinds(msgs: &[Message]) -> Vec<String> {
    msgs.iter()
        .map(|m| match m.kind() {
            MessageKind::Event { event_type } => event_type.to_string(),
            MessageKind::Exception { exception_type } => format!("!{exception_type}"),
            MessageKind::Error { code, .. } => format!("error:{code}"),
            MessageKind::Malformed => "?".to_string(),
        })
        .collect()
}

fn payload(m: &Message) -> Value {
    serde_json::from_slice(&m.payload).unwrap()
}

fn weather_tools() -> Value {
    json!({"tools": [{"toolSpec": {
        "name": "get_weather",
        "description": "the weather in a city",
        "inputSchema": {"json": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        }},
    }}]})
}

#[test]
fn converse_echoes_for_model_ids_and_arns() {
    let mock = start(&[]);
    let mut body = user("Hello Bedrock");
    body["system"] = json!([{"text": "be brief"}, {"cachePoint": {"type": "default"}}]);
    let r = mock.converse(ARN, "converse", &body);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert!(r.header("x-amzn-requestid").is_some());
    let v = r.json();
    assert_eq!(
        v["output"]["message"],
        json!({"role": "assistant", "content": [{"text": "mock: Hello Bedrock"}]})
    );
    assert_eq!(v["stopReason"], "end_turn");
    assert_eq!(
        v["usage"],
        json!({"inputTokens": 4, "outputTokens": 5, "totalTokens": 11,
               "cacheReadInputTokens": 2, "cacheWriteInputTokens": 0})
    );
    assert!(v["metrics"]["latencyMs"].is_u64());
    let stats = mock.stats();
    assert_eq!(stats["last_model"], ARN, "the model id arrives URL-decoded");
    assert!(stats["last_authorization"]
        .as_str()
        .unwrap()
        .starts_with("AWS4-HMAC-SHA256 Credential=AKIDMOCKTEST/"));

    let r = mock.converse(
        "anthropic.claude-3-haiku-20240307-v1:0",
        "converse",
        &user("hi"),
    );
    assert_eq!(
        r.json()["output"]["message"]["content"][0]["text"],
        "mock: hi"
    );
    assert_eq!(mock.stats()["bedrock"]["ok"], 2);
}

#[test]
fn converse_calls_a_tool_when_asked() {
    let mock = start(&[]);
    let mut body = user("Please use tool for Paris");
    body["toolConfig"] = weather_tools();
    let v = mock.converse("m.v1:0", "converse", &body).json();
    assert_eq!(v["stopReason"], "tool_use");
    let content = v["output"]["message"]["content"].as_array().unwrap();
    assert_eq!(content[0]["text"], "mock: calling get_weather");
    let tool = &content[1]["toolUse"];
    assert_eq!(tool["name"], "get_weather");
    assert_eq!(tool["input"], json!({"city": "Please use tool for Paris"}));
    assert!(tool["toolUseId"].as_str().unwrap().starts_with("tooluse_"));
    // Without the trigger, the same request is answered with text.
    let mut body = user("just talk");
    body["toolConfig"] = weather_tools();
    assert_eq!(
        mock.converse("m", "converse", &body).json()["stopReason"],
        "end_turn"
    );
    // toolResult without toolConfig: AWS's ValidationException.
    let bad = json!({"messages": [
        {"role": "user", "content": [{"text": "q"}]},
        {"role": "assistant", "content": [{"toolUse": {"toolUseId": "t1", "name": "get_weather", "input": {}}}]},
        {"role": "user", "content": [{"toolResult": {"toolUseId": "t1", "content": [{"text": "sunny"}]}}]},
    ]});
    let r = mock.converse("m", "converse", &bad);
    assert_eq!((r.status, r.error_type()), (400, "ValidationException"));
    assert!(r.json()["message"].as_str().unwrap().contains("toolConfig"));
}

#[test]
fn converse_stream_is_a_faithful_event_stream() {
    let mock = start(&[]);
    let r = mock.converse(ARN, "converse-stream", &user("stream this text"));
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-type"),
        Some("application/vnd.amazon.eventstream")
    );
    let msgs = r.events().unwrap();
    assert_eq!(
        kinds(&msgs),
        [
            "messageStart",
            "contentBlockDelta",
            "contentBlockDelta",
            "contentBlockDelta",
            "contentBlockDelta",
            "contentBlockStop",
            "messageStop",
            "metadata"
        ]
    );
    let text: String = msgs[1..5]
        .iter()
        .map(|m| payload(m)["delta"]["text"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(text, "mock: stream this text");
    assert_eq!(payload(&msgs[0])["role"], "assistant");
    assert_eq!(payload(&msgs[6])["stopReason"], "end_turn");
    let meta = payload(&msgs[7]);
    assert_eq!(
        meta["usage"]["totalTokens"],
        meta["usage"]["inputTokens"].as_u64().unwrap()
            + meta["usage"]["outputTokens"].as_u64().unwrap()
    );
    assert!(
        meta["usage"]["cacheReadInputTokens"].is_u64()
            && meta["usage"]["cacheWriteInputTokens"].is_u64()
    );
    assert!(meta["metrics"]["latencyMs"].is_u64());

    let mut body = user("use tool please");
    body["toolConfig"] = weather_tools();
    let msgs = mock
        .converse("m", "converse-stream", &body)
        .events()
        .unwrap();
    let k = kinds(&msgs);
    let start = k.iter().position(|e| e == "contentBlockStart").unwrap();
    assert_eq!(
        payload(&msgs[start])["start"]["toolUse"]["name"],
        "get_weather"
    );
    let index = payload(&msgs[start])["contentBlockIndex"].clone();
    let input: String = msgs[start + 1..]
        .iter()
        .take_while(|m| {
            m.kind()
                == MessageKind::Event {
                    event_type: "contentBlockDelta",
                }
        })
        .map(|m| {
            let p = payload(m);
            assert_eq!(p["contentBlockIndex"], index);
            p["delta"]["toolUse"]["input"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(
        serde_json::from_str::<Value>(&input).unwrap(),
        json!({"city": "use tool please"})
    );
    assert_eq!(
        &k[k.len() - 3..],
        ["contentBlockStop", "messageStop", "metadata"]
    );
    assert_eq!(payload(&msgs[msgs.len() - 2])["stopReason"], "tool_use");
    let stats = mock.stats();
    assert_eq!(stats["bedrock"]["streams_completed"], 2, "{stats}");
}

#[test]
fn signatures_are_checked_as_aws_does() {
    let mock = start(&[]);
    let path = bedrock_model_path(ARN, "converse");
    let body = serde_json::to_vec(&user("x")).unwrap();
    let check = |r: Reply, ty: &str| {
        assert_eq!(
            (r.status, r.error_type()),
            (403, ty),
            "{}",
            String::from_utf8_lossy(&r.body)
        );
        assert!(r.json()["message"].is_string());
        r
    };
    let r = check(
        mock.post(&path, &body, Some(&mock.signer("a-wrong-secret", None))),
        "InvalidSignatureException",
    );
    assert!(r.json()["message"]
        .as_str()
        .unwrap()
        .starts_with("The request signature we calculated"));
    check(
        mock.post(&path, &body, None),
        "MissingAuthenticationTokenException",
    );
    let other = Signer::new(
        Credentials::new("AKIDOTHER", SECRET, None).unwrap(),
        "us-east-1",
        "bedrock",
    )
    .unwrap();
    check(
        mock.post(&path, &body, Some(&other)),
        "UnrecognizedClientException",
    );
    let west = Signer::new(
        Credentials::new(AKID, SECRET, None).unwrap(),
        "us-west-2",
        "bedrock",
    )
    .unwrap();
    check(
        mock.post(&path, &body, Some(&west)),
        "InvalidSignatureException",
    );
    check(
        mock.post(&path, &body, Some(&mock.signer(SECRET, Some("a-token")))),
        "UnrecognizedClientException",
    );
    // Signed for one body, sent with another.
    let signer = mock.signer(SECRET, None);
    let url = format!("http://{}{path}", mock.addr);
    let signed = signer
        .sign(
            &Request {
                method: "POST",
                url: &url,
                headers: &[("content-type", "application/json")],
                payload: Payload::Bytes(&body),
            },
            SystemTime::now(),
        )
        .unwrap();
    let mut headers = vec![("content-type".to_string(), "application/json".to_string())];
    headers.extend(
        signed
            .headers
            .iter()
            .map(|(n, v)| (n.to_string(), v.clone())),
    );
    let tampered = serde_json::to_vec(&user("y")).unwrap();
    check(
        mock.send(&path, &headers, &tampered),
        "InvalidSignatureException",
    );
    assert_eq!(
        mock.send(&path, &headers, &body).status,
        200,
        "the untampered request passes"
    );
    assert_eq!(mock.stats()["bedrock"]["signature_rejected"], 6);
}

#[test]
fn session_tokens_are_required_when_configured() {
    let mock = start(&[
        "--aws-session-token",
        "FwoGZXIvYXdzEXAMPLE",
        "--aws-region",
        "eu-west-3",
    ]);
    let path = bedrock_model_path("m", "converse");
    let body = serde_json::to_vec(&user("x")).unwrap();
    let signer = |token| {
        Signer::new(
            Credentials::new(AKID, SECRET, token).unwrap(),
            "eu-west-3",
            "bedrock",
        )
        .unwrap()
    };
    assert_eq!(
        mock.post(&path, &body, Some(&signer(Some("FwoGZXIvYXdzEXAMPLE"))))
            .status,
        200
    );
    let r = mock.post(&path, &body, Some(&signer(None)));
    assert_eq!(
        (r.status, r.error_type()),
        (403, "UnrecognizedClientException")
    );
}

#[test]
fn injected_errors_have_bedrock_types() {
    let mock = start(&[]);
    for (model, status, ty) in [
        ("mock.status-429", 429, "ThrottlingException"),
        ("mock.status-400", 400, "ValidationException"),
        ("mock.status-503", 503, "ServiceUnavailableException"),
        ("mock.status-424", 424, "ModelErrorException"),
        ("mock.status-500", 500, "InternalServerException"),
    ] {
        for op in ["converse", "converse-stream"] {
            let r = mock.converse(model, op, &user("x"));
            assert_eq!((r.status, r.error_type()), (status, ty), "{model} {op}");
            assert!(r.json()["message"].is_string());
        }
    }
    let r = mock.converse("m", "converse", &json!({"messages": "nope"}));
    assert_eq!((r.status, r.error_type()), (400, "ValidationException"));
    let throttled = start(&["--error-rate", "429:1"]);
    let r = throttled.converse("m", "converse", &user("x"));
    assert_eq!((r.status, r.error_type()), (429, "ThrottlingException"));
    assert_eq!(throttled.stats()["injected"]["status_429"], 1);
}

#[test]
fn mid_stream_exceptions_errors_and_bad_crcs() {
    let mock = start(&[]);
    let stream =
        |model: &str| mock.converse(model, "converse-stream", &user("a longer answer here"));
    let msgs = stream("mock.failafter-2").events().unwrap();
    assert_eq!(
        kinds(&msgs),
        [
            "messageStart",
            "contentBlockDelta",
            "contentBlockDelta",
            "!modelStreamErrorException"
        ]
    );
    let e = payload(&msgs[3]);
    assert!(e["message"].is_string() && e["originalStatusCode"].is_u64());
    let msgs = stream("mock.throttleafter-1").events().unwrap();
    assert_eq!(kinds(&msgs).last().unwrap(), "!throttlingException");
    let msgs = stream("mock.errorafter-0").events().unwrap();
    assert_eq!(kinds(&msgs), ["messageStart", "error:InternalFailure"]);
    let e = stream("mock.badcrcafter-1").events().unwrap_err();
    assert!(matches!(e, DecodeError::MessageCrc { .. }), "{e}");
    let e = stream("mock.garbage").events().unwrap_err();
    assert!(matches!(e, DecodeError::PreludeCrc { .. }), "{e}");
    let stats = mock.stats()["bedrock"].clone();
    assert_eq!(
        (
            stats["streams_failed"].as_u64(),
            stats["crc_corrupted"].as_u64()
        ),
        (Some(3), Some(1))
    );

    let always = start(&["--bedrock-bad-crc-after", "0"]);
    let r = always.converse("m", "converse-stream", &user("x"));
    let mut d = Decoder::new();
    let mut out = Vec::new();
    let e = d.decode_all(&r.body, &mut out).unwrap_err();
    assert!(matches!(e, DecodeError::MessageCrc { .. }), "{e}");
    assert_eq!(kinds(&out), ["messageStart"]);
}

#[test]
fn embeddings_through_invoke() {
    let mock = start(&[]);
    let invoke = |model: &str, body: Value| mock.converse(model, "invoke", &body);
    let r = invoke(
        "amazon.titan-embed-text-v2:0",
        json!({"inputText": "hello world", "dimensions": 512, "normalize": true}),
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let v = r.json();
    let e = v["embedding"].as_array().unwrap();
    assert_eq!(e.len(), 512);
    let norm: f64 = e
        .iter()
        .map(|x| x.as_f64().unwrap().powi(2))
        .sum::<f64>()
        .sqrt();
    assert!((norm - 1.0).abs() < 1e-3);
    assert_eq!(v["inputTextTokenCount"], 3);
    assert_eq!(r.header("x-amzn-bedrock-input-token-count"), Some("3"));
    let r = invoke(
        "cohere.embed-english-v3",
        json!({"texts": ["a", "b", "c"], "input_type": "search_query"}),
    );
    let v = r.json();
    assert_eq!(v["embeddings"].as_array().unwrap().len(), 3);
    assert_eq!(v["embeddings"][0].as_array().unwrap().len(), 1024);
    assert_eq!(v["response_type"], "embeddings_floats");
    let r = invoke("cohere.embed-english-v3", json!({"texts": ["a"]}));
    assert_eq!((r.status, r.error_type()), (400, "ValidationException"));
    assert!(r.json()["message"].as_str().unwrap().contains("input_type"));
    let r = invoke(
        "amazon.titan-embed-text-v2:0",
        json!({"input": "openai-style"}),
    );
    assert_eq!((r.status, r.error_type()), (400, "ValidationException"));
}

#[test]
fn unknown_operations_and_unencoded_arns_are_not_found() {
    let mock = start(&[]);
    let signer = mock.signer(SECRET, None);
    let body = serde_json::to_vec(&user("x")).unwrap();
    for path in [
        "/model/m/chat".to_string(),
        format!("/model/{ARN}/converse"), // the ARN's '/' not encoded
    ] {
        let r = mock.post(&path, &body, Some(&signer));
        assert_eq!(
            (r.status, r.error_type()),
            (404, "UnknownOperationException"),
            "{path}"
        );
    }
}
