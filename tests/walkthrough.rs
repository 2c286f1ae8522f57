//! The README's walkthrough, run exactly as written: its shell blocks go to one `bash`, with
//! only the build left out, `target/release/lastseen` pointing at this build and `PORT` at a
//! free port. Each `# ...` line right after a command is that command's expected output; the
//! test checks the real output has its shape (the same fields, the same fixed values).

use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use serde_json::Value;

const STEP: &str = "@@walkthrough-step@@";

/// The shell blocks of the README's `## Walkthrough` section, line by line.
fn walkthrough_lines() -> Vec<String> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
    let start = readme
        .find("\n## Walkthrough")
        .expect("a Walkthrough section");
    let section = &readme[start + 1..];
    let section = &section[..section[3..]
        .find("\n## ")
        .map_or(section.len(), |end| end + 3)];
    let mut lines = Vec::new();
    let mut in_block = false;
    for line in section.lines() {
        if line.starts_with("```") {
            in_block = !in_block && line == "```sh";
            continue;
        }
        if in_block {
            lines.push(line.to_owned());
        }
    }
    assert!(!lines.is_empty(), "the walkthrough has shell blocks");
    lines
}

/// The script to run and the expected output of each step, in order.
fn script(port: u16) -> (String, Vec<String>) {
    let binary = env!("CARGO_BIN_EXE_lastseen");
    let mut script = String::new();
    let mut expected = Vec::new();
    let (mut built, mut ported) = (false, false);
    let mut after_command = false;
    for line in walkthrough_lines() {
        let trimmed = line.trim_start();
        if let Some(output) = trimmed.strip_prefix("# ").filter(|_| after_command) {
            expected.push(output.replace(":8000", &format!(":{port}")));
            script.push_str(&format!("printf '%s\\n' '{STEP}'\n"));
            after_command = false;
            continue;
        }
        after_command = !trimmed.is_empty() && !trimmed.starts_with('#');
        if trimmed.starts_with("cargo build --release") {
            built = true;
            continue;
        }
        if trimmed == "PORT=8000" {
            ported = true;
            script.push_str(&format!("PORT={port}\n"));
            continue;
        }
        script.push_str(&line.replace("target/release/lastseen", binary));
        script.push('\n');
    }
    assert!(built, "the walkthrough builds with cargo build --release");
    assert!(
        ported,
        "the walkthrough sets PORT=8000 on a line of its own"
    );
    (script, expected)
}

/// Whether `actual` has the shape of `expected`: the same fields (recursively; arrays by their
/// first element), equal strings except `...` and timestamps, and the same kinds of value.
fn same_shape(expected: &Value, actual: &Value) -> Result<(), String> {
    match (expected, actual) {
        (Value::Object(e), Value::Object(a)) => {
            let mut ek: Vec<_> = e.keys().collect();
            let mut ak: Vec<_> = a.keys().collect();
            ek.sort();
            ak.sort();
            if ek != ak {
                return Err(format!("fields {ak:?}, expected {ek:?}"));
            }
            e.iter()
                .try_for_each(|(k, v)| same_shape(v, &a[k]).map_err(|m| format!("{k}: {m}")))
        }
        (Value::Array(e), Value::Array(a)) => match (e.first(), a.first()) {
            (Some(e), Some(a)) => same_shape(e, a),
            (Some(_), None) => Err("an empty list".into()),
            _ => Ok(()),
        },
        (Value::String(e), Value::String(a)) => {
            let varies = e == "..." || chrono::DateTime::parse_from_rfc3339(e).is_ok();
            if varies || e == a {
                Ok(())
            } else {
                Err(format!("{a:?}, expected {e:?}"))
            }
        }
        (Value::Number(_), Value::Number(_))
        | (Value::Bool(_), Value::Bool(_))
        | (Value::Null, Value::Null) => Ok(()),
        _ => Err(format!("{actual}, expected {expected}")),
    }
}

#[test]
fn the_readme_walkthrough_runs_as_pasted() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (script, expected) = script(port);
    let mut command = Command::new("bash");
    command
        .arg("-c")
        .arg(&script)
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group, so a server left behind by a failed step is stopped too.
        .process_group(0);
    for (name, _) in std::env::vars() {
        if name.starts_with("LASTSEEN_") {
            command.env_remove(name);
        }
    }
    let child = command.spawn().unwrap();
    let group = format!("-{}", child.id());
    let output = child.wait_with_output().unwrap();
    let _ = Command::new("kill").args(["-KILL", "--", &group]).status();

    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let log = std::fs::read_to_string(dir.path().join("walkthrough.log")).unwrap_or_default();
    let context = format!("script:\n{script}\nstdout:\n{stdout}\nstderr:\n{stderr}\nlog:\n{log}");
    assert!(output.status.success(), "{context}");
    assert!(stderr.trim().is_empty(), "nothing on stderr: {context}");
    let outputs: Vec<&str> = stdout.split(&format!("{STEP}\n")).collect();
    assert_eq!(outputs.len(), expected.len() + 1, "{context}");
    for (want, got) in expected.iter().zip(&outputs) {
        let got = got.trim();
        if want.starts_with('{') {
            let want: Value = serde_json::from_str(&want.replace(", ...]", "]"))
                .unwrap_or_else(|e| panic!("README output {want} is not JSON: {e}"));
            let got: Value = serde_json::from_str(got)
                .unwrap_or_else(|e| panic!("{got:?} is not JSON ({e}): {context}"));
            if let Err(why) = same_shape(&want, &got) {
                panic!("{got} does not look like {want}: {why}");
            }
        } else {
            assert_eq!(got, want, "{context}");
        }
    }
    assert!(outputs.last().unwrap().trim().is_empty(), "{context}");
}
