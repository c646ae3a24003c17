//! The socket protocol as other programs see it: every example request of docs/protocol.md sent
//! to the real agent (fake FreeBSD tools, see tests/common) gets the documented response; other
//! versions, version-1 requests and invalid fields get the documented errors, and every
//! connection is answered.

mod common;

use std::io::{BufRead as _, BufReader, Write as _};
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::Duration;

use common::Host;
use serde_json::{Value, json};

/// The value docs/protocol.md writes for a field whose value varies from host to host.
const VARIES: &str = "<varies>";

/// The host the documented session runs on: the jail `web` (jid 3) at 10.13.37.2, the VNET jail
/// `cni-1` (jid 7) holding a container's network, and the default route on em0 (192.0.2.10).
fn documented_host() -> Host {
    let h = Host::new();
    h.set_jails(json!([Host::jail("web", 3, &["10.13.37.2"]), Host::vnet_jail("cni-1", 7, &["10.88.0.5/16"])]));
    h
}

/// Sends one line on a fresh connection and reads the one-line answer (within 10 s: the agent
/// must answer, never leave the client hanging).
fn send(h: &Host, line: &str) -> String {
    let mut s = UnixStream::connect(h.socket()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(line.as_bytes()).unwrap();
    s.write_all(b"\n").unwrap();
    let mut answer = String::new();
    BufReader::new(&s).read_line(&mut answer).unwrap_or_else(|e| panic!("no answer to {line}: {e}"));
    assert!(answer.ends_with('\n'), "one whole line: {answer:?}");
    answer
}

/// `send`, parsed.
fn ask(h: &Host, line: &str) -> Value {
    let answer = send(h, line);
    serde_json::from_str(&answer).unwrap_or_else(|e| panic!("not JSON: {answer:?}: {e}"))
}

/// One documented exchange.
#[derive(Debug)]
struct Example {
    /// Where the request block starts in docs/protocol.md (1-based).
    line: usize,
    request: String,
    response: Value,
}

/// The ```json request / ```json response pairs of docs/protocol.md, in order.
fn examples() -> Vec<Example> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/protocol.md");
    let text = std::fs::read_to_string(path).unwrap();
    let mut out = Vec::new();
    let mut lines = text.lines().enumerate();
    let mut request: Option<(usize, String)> = None;
    while let Some((n, line)) = lines.next() {
        let kind = match line.trim_end() {
            "```json request" => "request",
            "```json response" => "response",
            _ => continue,
        };
        let body: Vec<&str> = lines.by_ref().map(|(_, l)| l).take_while(|l| l.trim_end() != "```").collect();
        let body = body.join("\n");
        match (kind, request.take()) {
            ("request", None) => {
                assert_eq!(body.lines().count(), 1, "docs/protocol.md:{}: a request is one line", n + 1);
                request = Some((n + 1, body));
            }
            ("response", Some((line, request))) => {
                let response = serde_json::from_str(&body)
                    .unwrap_or_else(|e| panic!("docs/protocol.md:{}: the response is not JSON: {e}", n + 1));
                out.push(Example { line, request, response });
            }
            (_, _) => panic!("docs/protocol.md:{}: requests and responses must alternate, request first", n + 1),
        }
    }
    assert!(request.is_none(), "docs/protocol.md: the last request has no response");
    out
}

/// Whether `got` is `want`, where `want` may hold [`VARIES`] for any value.
fn matches(want: &Value, got: &Value) -> bool {
    match (want, got) {
        (Value::String(s), _) if s == VARIES => true,
        (Value::Array(w), Value::Array(g)) => w.len() == g.len() && w.iter().zip(g).all(|(w, g)| matches(w, g)),
        (Value::Object(w), Value::Object(g)) => {
            w.len() == g.len() && w.iter().all(|(k, w)| g.get(k).is_some_and(|g| matches(w, g)))
        }
        _ => want == got,
    }
}

#[test]
fn every_documented_example_gets_the_documented_response() {
    let examples = examples();
    let ops: Vec<String> = examples
        .iter()
        .filter_map(|e| serde_json::from_str::<Value>(&e.request).ok())
        .filter_map(|r| r["op"].as_str().map(str::to_string))
        .collect();
    for op in ["publish", "unpublish", "list", "rules", "check", "reconcile", "stats"] {
        assert!(ops.iter().any(|o| o == op), "docs/protocol.md has no example of {op}");
    }
    let h = documented_host();
    let _agent = h.start_agent();
    let mut wrong = Vec::new();
    for e in &examples {
        let line = send(&h, &e.request);
        assert!(line.starts_with(r#"{"version":2,"ok":"#), "docs/protocol.md:{}: the members' order: {line}", e.line);
        let got: Value = serde_json::from_str(&line).unwrap();
        if !matches(&e.response, &got) {
            wrong.push(format!(
                "docs/protocol.md:{}: {}\nthe agent answered:\n{}\nthe documentation says:\n{}",
                e.line,
                e.request,
                serde_json::to_string_pretty(&got).unwrap(),
                serde_json::to_string_pretty(&e.response).unwrap()
            ));
        }
    }
    assert!(wrong.is_empty(), "{} of {} examples differ:\n\n{}", wrong.len(), examples.len(), wrong.join("\n\n"));
}

#[test]
fn ls_json_prints_the_list_data_and_the_traffic_of_active_publications() {
    let h = documented_host();
    let _agent = h.start_agent();
    let out =
        h.ctl(&["publish", "-j", "web", "--source", "192.0.2.0/24", "--log", "em0:8443:443", "[2001:db8::10]:80:8080"]);
    assert_eq!(out.code, 0, "{out:?}");
    let data = ask(&h, r#"{"version":2,"op":"list"}"#)["data"].clone();
    let mut printed: Value = serde_json::from_str(&h.ctl(&["ls", "--json"]).stdout).unwrap();
    let traffic: Vec<Value> = printed
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .map(|p| p.as_object_mut().unwrap().remove("traffic"))
        .map(Option::unwrap_or_default)
        .collect();
    assert_eq!(printed, data, "the list data, and traffic");
    assert_eq!(traffic[0]["bytes_in"], 0, "em0:8443:443 is active: {traffic:?}");
    assert_eq!(traffic[1], Value::Null, "the IPv6 address publication has no rules (error): no traffic member");
    let table = h.ctl(&["ls"]).stdout;
    assert!(table.contains("[2001:db8::10]:80 "), "{table}");
    assert!(table.contains("em0:8443 "), "{table}");
}

#[test]
fn other_versions_get_the_version_error_and_an_answer() {
    let h = documented_host();
    let _agent = h.start_agent();
    for (version, sent) in [
        ("1", "version 1"),
        ("3", "version 3"),
        ("99999999999", "version 99999999999"),
        (r#""2""#, r#"version "2" (not a version number)"#),
        ("null", "version null (not a version number)"),
        ("[2]", "version [2] (not a version number)"),
    ] {
        // Another version's request is not read further: its fields are that version's.
        for rest in [r#""op":"check""#, r#""op":"list","jail":"web","page":2"#, r#""op":"shutdown""#] {
            let request = format!(r#"{{"version":{version},{rest}}}"#);
            let r = ask(&h, &request);
            let want = format!(
                "this agent speaks protocol version 2, the client sent {sent}: use a kleenectl of the same release \
                 as the agent"
            );
            assert_eq!(r, json!({"version": 2, "ok": false, "error": "version", "message": want}), "{request}");
        }
    }
}

#[test]
fn version_1_requests_are_answered_with_the_version_message() {
    let h = documented_host();
    let _agent = h.start_agent();
    let want = "this agent speaks protocol version 2, the client sent version 1 (no version field): use a kleenectl \
                of the same release as the agent";
    for v1 in [
        r#"{"op":"check"}"#,
        r#"{"op":"list"}"#,
        r#"{"op":"list","jail":"web"}"#,
        r#"{"op":"rules"}"#,
        r#"{"op":"publish","jail":"web","specs":["8080"],"sources":[],"log":false,"network":null}"#,
        r#"{"op":"unpublish","jail":"web","specs":[],"all":true}"#,
        r#"{"op":"reconcile","verify":false}"#,
    ] {
        // `invalid`, a kind version 1 knows, so that its clients print the message.
        assert_eq!(ask(&h, v1), json!({"version": 2, "ok": false, "error": "invalid", "message": want}), "{v1}");
    }
    // Sent the way version 1's client sent it: the request, then the end of its writing.
    let mut s = UnixStream::connect(h.socket()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"{\"op\":\"list\"}\n").unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut all = String::new();
    std::io::Read::read_to_string(&mut s, &mut all).unwrap();
    assert_eq!(all.lines().count(), 1, "one answer, then the agent closes: {all:?}");
    assert!(all.contains(want), "{all}");
    assert!(h.loads().is_empty(), "nothing reached pfctl");
}

#[test]
fn each_invalid_field_is_a_decode_error_naming_it() {
    let h = documented_host();
    let _agent = h.start_agent();
    let cases = [
        // jail
        (r#""op":"publish","jail":"web\nrdr pass all","specs":["8080"]"#, r#"invalid jail name "web\nrdr pass all": "#),
        (r#""op":"publish","jail":"","specs":["8080"]"#, r#"invalid jail name "": "#),
        (r#""op":"unpublish","jail":"a'b","all":true"#, r#"invalid jail name "a'b": "#),
        (r#""op":"list","jail":"a b""#, r#"invalid jail name "a b": "#),
        (r#""op":"rules","jail":"a\\b""#, r#"invalid jail name "a\\b": "#),
        (
            r#""op":"publish","jail":7,"specs":["8080"]"#,
            "malformed request: invalid type: integer `7`, expected a string",
        ),
        (r#""op":"publish","specs":["8080"]"#, "malformed request: missing field `jail`"),
        // specs
        (r#""op":"publish","jail":"web","specs":[]"#, "give at least one port spec"),
        (r#""op":"publish","jail":"web""#, "malformed request: missing field `specs`"),
        (r#""op":"publish","jail":"web","specs":["em0 \n:8080:80"]"#, r#"invalid port spec "em0 \n:8080:80": "#),
        (r#""op":"publish","jail":"web","specs":["8080","0"]"#, r#"invalid port spec "0": port 0 is out of range"#),
        (r#""op":"unpublish","jail":"web","specs":["8080/icmp"]"#, r#"invalid port spec "8080/icmp": "#),
        (
            r#""op":"publish","jail":"web","specs":"8080""#,
            "malformed request: invalid type: string \"8080\", expected a sequence",
        ),
        // sources
        (r#""op":"publish","jail":"web","specs":["8080"],"sources":["any"]"#, r#"invalid address prefix "any": "#),
        (
            r#""op":"publish","jail":"web","specs":["8080"],"sources":["192.0.2.1/24"]"#,
            r#"invalid address prefix "192.0.2.1/24": host bits are set; did you mean 192.0.2.0/24?"#,
        ),
        // log, network, verify
        (
            r#""op":"publish","jail":"web","specs":["8080"],"log":"yes""#,
            "malformed request: invalid type: string \"yes\", expected a boolean",
        ),
        (r#""op":"publish","jail":"web","specs":["8080"],"network":"a/b""#, r#"invalid network name "a/b": "#),
        (r#""op":"reconcile","verify":1"#, "malformed request: invalid type: integer `1`, expected a boolean"),
        // specs and all
        (r#""op":"unpublish","jail":"web","specs":["8080"],"all":true"#, "give the specs to unpublish, or --all"),
        (r#""op":"unpublish","jail":"web""#, "give the specs to unpublish, or --all"),
        (
            r#""op":"unpublish","jail":"web","all":"yes""#,
            "malformed request: invalid type: string \"yes\", expected a boolean",
        ),
        // op and the object itself
        (r#""op":"shutdown""#, "malformed request: unknown variant `shutdown`"),
        (r#""jail":"web""#, "malformed request: missing field `op`"),
        (r#""op":"check","op":"check""#, "malformed request: duplicate field `op`"),
        (r#""op":"list","limit":10"#, "malformed request: unknown field `limit`"),
        (r#""op":"check","verbose":true"#, "malformed request: unknown field `verbose`"),
    ];
    for (rest, want) in cases {
        let request = format!(r#"{{"version":2,{rest}}}"#);
        let r = ask(&h, &request);
        assert_eq!(
            (&r["version"], &r["ok"], &r["error"]),
            (&json!(2), &json!(false), &json!("invalid")),
            "{request}: {r}"
        );
        let message = r["message"].as_str().unwrap();
        assert!(message.starts_with(want), "{request}:\n  got {message}\n want {want}");
    }
    for (line, want) in [
        ("not json", "malformed request: expected ident"),
        ("{\"version\":2,\"op\":\"check\"", "malformed request: EOF while parsing an object"),
        ("[\"version\",2]", "malformed request: invalid type: sequence, expected a JSON object"),
        ("", "malformed request: EOF while parsing a value"),
    ] {
        let r = ask(&h, line);
        assert_eq!(r["error"], "invalid", "{line}: {r}");
        assert!(r["message"].as_str().unwrap().starts_with(want), "{line}: {r}");
    }
    assert!(h.ls().is_empty());
    assert!(h.loads().is_empty(), "nothing reached pfctl");
}

/// A stand-in for the agent of an earlier release: answers every request as version 1 did one
/// with a field it does not know.
fn version_1_agent(path: &std::path::Path) -> std::thread::JoinHandle<String> {
    let listener = UnixListener::bind(path).unwrap();
    std::thread::spawn(move || {
        let (s, _) = listener.accept().unwrap();
        let mut request = String::new();
        BufReader::new(&s).read_line(&mut request).unwrap();
        let answer =
            r#"{"ok":false,"error":"invalid","message":"malformed request: unknown field `version`, expected `op`"}"#;
        (&s).write_all(format!("{answer}\n").as_bytes()).unwrap();
        request
    })
}

#[test]
fn kleenectl_names_an_agent_of_another_version() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("old.sock");
    let agent = version_1_agent(&socket);
    let out = std::process::Command::new(common::KLEENECTL)
        .arg("--socket")
        .arg(&socket)
        .args(["publish", "-j", "web", "8080"])
        .output()
        .unwrap();
    let request = agent.join().unwrap();
    assert_eq!(
        request,
        "{\"version\":2,\"op\":\"publish\",\"jail\":\"web\",\"specs\":[\"8080:8080/tcp\"],\"sources\":[],\"log\":false,\"network\":null}\n"
    );
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        stderr.trim_end(),
        format!(
            "kleenectl: error: the agent at {} speaks protocol version 1 and this kleenectl version 2: use a kleenectl \
             of the same release as the agent (the agent said: malformed request: unknown field `version`, expected `op`)",
            socket.display()
        )
    );
}
