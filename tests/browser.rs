//! The web page in a real headless Chromium (Debian's `chromium` and `chromium-driver`, driven
//! by Selenium's WebDriver client from PyPI). Missing prerequisites fail the test with what to
//! install; nothing is skipped.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::Stdio;

use anyhow::{Context, Result, bail, ensure};
use common::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_people_chat_in_headless_chromium_and_survive_a_kill_9() -> Result<()> {
    let browser_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let driver = std::env::var("CHROMEDRIVER").unwrap_or_else(|_| "/usr/bin/chromedriver".into());
    for (path, package) in [(&chromium, "chromium"), (&driver, "chromium-driver")] {
        ensure!(
            Path::new(path).exists(),
            "{path} is missing: `apt-get install {package}` (scripts/prereqs.sh does)"
        );
    }
    let selenium = std::process::Command::new("python3")
        .args(["-c", "import selenium"])
        .status()
        .context("running python3")?;
    ensure!(
        selenium.success(),
        "python3 cannot import selenium: `pip install selenium` (scripts/prereqs.sh does)"
    );
    let dir = tempfile::tempdir()?;
    let mut p = NebulaProcess::start(dir.path(), &[])?;
    let addr = p.addr;
    // A room of 60 messages of 4,095 control characters each: in JSON each escapes to 24 KiB,
    // so the page's join gets `more` and must page for the rest.
    let mut heavy = Client::login(addr, "Dora").await?;
    heavy.join("heavy").await?;
    for i in 1..=60 {
        let body = format!("{}{i:02}", "\u{1}".repeat(4094));
        let ack = heavy.publish("heavy", &body).await?;
        ensure!(ack["type"] == "ack", "heavy publish {i}: {ack}");
    }
    drop(heavy);
    let mut cmd = std::process::Command::new("python3");
    cmd.arg(browser_dir.join("chat.py"))
        .env("BASE_URL", format!("http://{addr}"))
        .env("CHROMIUM", &chromium)
        .env("CHROMEDRIVER", &driver)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Ok(shot) = std::env::var("NEBULA_SCREENSHOT") {
        cmd.env("SCREENSHOT", shot);
    }
    let mut node = cmd.spawn().context("running python3")?;
    let mut stdin = node.stdin.take().context("stdin")?;
    let stdout = BufReader::new(node.stdout.take().context("stdout")?);
    let mut output = String::new();
    for line in stdout.lines() {
        let line = line?;
        output.push_str(&line);
        output.push('\n');
        if line == "RESTART" {
            p.signal("KILL")?;
            tokio::task::block_in_place(|| p.wait(std::time::Duration::from_secs(5)))?;
            p = NebulaProcess::start(dir.path(), &["--listen", &addr.to_string()])?;
            let mut c = Client::login(addr, "Carol").await?;
            c.join("team").await?;
            for i in 1..=3 {
                let ack = c.request(json!({"type": "publish", "room": "team", "body": format!("while away {i}")})).await?;
                if ack["type"] != "ack" {
                    bail!("publish during the restart failed: {ack}");
                }
            }
            writeln!(stdin, "RESTARTED")?;
        }
    }
    let out = node.wait_with_output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.success(),
        "browser test failed:\n{output}\n{stderr}"
    );
    ensure!(
        output.contains("browser chat: ok"),
        "unexpected output: {output}"
    );
    Ok(())
}
