//! Docker for the compose test: what it needs on the machine, the images, and one compose
//! project of the repository's docker-compose.yml that takes itself down when dropped.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use tokio::time::sleep;

use crate::common::free_port;

/// The tag of the images the test builds and runs; `local`, the compose default, is the user's.
pub const TAG: &str = "test";
/// The debootstrapped base of every image (scripts/build-images.sh).
const BASE_IMAGE: &str = "nebula/base:bookworm";

/// Runs a command to completion: its stdout, or an error with its stderr.
pub fn run(cmd: &mut Command) -> Result<String> {
    let out = tokio::task::block_in_place(|| cmd.output()).with_context(|| format!("{cmd:?}"))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        bail!("{cmd:?} failed ({}): {}", out.status, stderr.trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

pub fn docker(args: &[&str]) -> Result<String> {
    run(Command::new("docker").args(args))
}

fn succeeds(cmd: &mut Command) -> bool {
    cmd.stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The compose command (`docker compose` when it works, else `docker-compose`), once everything
/// the test needs is known to be here; else one error that names all that is missing.
pub fn prerequisites() -> Result<Vec<String>> {
    let mut missing = Vec::new();
    let daemon = succeeds(Command::new("docker").arg("info"));
    if !daemon {
        missing.push("a running Docker daemon (`docker info` fails)");
    }
    let tool = if succeeds(Command::new("docker").args(["compose", "version"])) {
        vec!["docker".to_string(), "compose".into()]
    } else if succeeds(Command::new("docker-compose").arg("version")) {
        vec!["docker-compose".to_string()]
    } else {
        missing.push("a compose tool: the `docker compose` plugin or `docker-compose`");
        Vec::new()
    };
    let base = daemon && succeeds(Command::new("docker").args(["image", "inspect", BASE_IMAGE]));
    if !base && !succeeds(Command::new("sh").args(["-c", "command -v debootstrap"])) {
        missing.push("debootstrap, to make the base image (scripts/prereqs.sh installs it)");
    }
    if !missing.is_empty() {
        bail!(
            "the compose test cannot run; missing:\n- {}",
            missing.join("\n- ")
        );
    }
    Ok(tool)
}

/// Builds the images the way a machine without a registry does, with this build's binary.
pub fn build_images(root: &Path) -> Result<()> {
    let started = Instant::now();
    let status = tokio::task::block_in_place(|| {
        Command::new(root.join("scripts/build-images.sh"))
            .args(["--binary", env!("CARGO_BIN_EXE_nebula"), "--tag", TAG])
            .current_dir(root)
            .status()
    })?;
    ensure!(
        status.success(),
        "scripts/build-images.sh failed ({status}), see its output"
    );
    println!("images built in {:.1?}", started.elapsed());
    Ok(())
}

/// One project of the repository's docker-compose.yml, under a name of its own and on free host
/// ports. Dropped, it is taken down with its volumes, after printing its logs unless `passed`.
pub struct Project {
    tool: Vec<String>,
    root: PathBuf,
    name: String,
    http_port: u16,
    prometheus_port: u16,
    pub passed: bool,
}

impl Project {
    pub fn new(tool: Vec<String>, root: &Path) -> Project {
        Project {
            tool,
            root: root.to_path_buf(),
            name: format!("nebulatest{}", std::process::id()),
            http_port: free_port(),
            prometheus_port: free_port(),
            passed: false,
        }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.tool[0]);
        cmd.args(&self.tool[1..])
            .arg("-f")
            .arg(self.root.join("docker-compose.yml"))
            .args(["-p", &self.name])
            .args(args)
            .current_dir(&self.root)
            .env("NEBULA_TAG", TAG)
            .env("NEBULA_HTTP_PORT", self.http_port.to_string())
            .env("NEBULA_PROMETHEUS_PORT", self.prometheus_port.to_string())
            // Every connection of the test comes from one address, faster than people log in:
            // the LB's per-address limit is not what is tested here.
            .env("NEBULA_CONNECT_RATE", "10000");
        cmd
    }

    pub fn compose(&self, args: &[&str]) -> Result<String> {
        run(&mut self.command(args))
    }

    /// The load balancer, as users reach it.
    pub fn lb(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.http_port))
    }

    pub fn prometheus(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.prometheus_port))
    }

    fn label(&self) -> String {
        format!("label=com.docker.compose.project={}", self.name)
    }

    /// The containers of the `nebula` service, running or not.
    pub fn replicas(&self) -> Result<Vec<String>> {
        let ids = docker(&[
            "ps",
            "-aq",
            "--filter",
            &self.label(),
            "--filter",
            "label=com.docker.compose.service=nebula",
        ])?;
        Ok(ids.lines().map(str::to_string).collect())
    }

    /// The id of the network called `name` in the compose file.
    pub fn network(&self, name: &str) -> Result<String> {
        let id = docker(&[
            "network",
            "ls",
            "-q",
            "--filter",
            &self.label(),
            "--filter",
            &format!("label=com.docker.compose.network={name}"),
        ])?;
        ensure!(!id.is_empty(), "no network {name} in project {}", self.name);
        Ok(id)
    }

    /// Every volume the project's containers mount, the anonymous /data ones included.
    pub fn volumes(&self) -> Result<Vec<String>> {
        let ids = docker(&["ps", "-aq", "--filter", &self.label()])?;
        let mut names = BTreeSet::new();
        for id in ids.lines() {
            let mounts = docker(&["inspect", "-f", "{{range .Mounts}}{{.Name}} {{end}}", id])?;
            names.extend(mounts.split_whitespace().map(str::to_string));
        }
        Ok(names.into_iter().collect())
    }

    /// What is left of the project in Docker (containers, networks, `volumes`), as one line.
    pub fn leftovers(&self, volumes: &[String]) -> Result<String> {
        let label = self.label();
        let mut left = vec![
            docker(&["ps", "-aq", "--filter", &label])?,
            docker(&["network", "ls", "-q", "--filter", &label])?,
        ];
        left.extend(
            volumes
                .iter()
                .filter(|v| docker(&["volume", "inspect", v]).is_ok())
                .cloned(),
        );
        Ok(left.join(" ").trim().to_string())
    }
}

impl Drop for Project {
    fn drop(&mut self) {
        if !self.passed {
            let _ = self
                .command(&["logs", "--no-color", "--tail=40"])
                .stdin(Stdio::null())
                .status();
        }
        match self
            .command(&["down", "-v", "--remove-orphans", "-t", "20"])
            .output()
        {
            Ok(out) if out.status.success() => {}
            Ok(out) => eprintln!(
                "compose down failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ),
            Err(e) => eprintln!("compose down failed: {e}"),
        }
    }
}

/// Docker's view of a container: "running healthy", "exited", ...
fn state(id: &str) -> Result<String> {
    docker(&[
        "inspect",
        "-f",
        "{{.State.Status}}{{if .State.Health}} {{.State.Health.Status}}{{end}}",
        id,
    ])
}

/// Waits until each of `ids` is running and its healthcheck (/readyz) passes.
pub async fn wait_ready(ids: &[String], limit: Duration) -> Result<()> {
    let start = Instant::now();
    loop {
        let states = ids.iter().map(|id| state(id)).collect::<Result<Vec<_>>>()?;
        if states.iter().all(|s| s == "running healthy") {
            return Ok(());
        }
        if start.elapsed() > limit {
            bail!("replicas not ready after {limit:?}: {states:?}");
        }
        sleep(Duration::from_millis(200)).await;
    }
}

/// The node id a replica keeps in its data dir.
pub fn node_id_of(container: &str) -> Result<String> {
    docker(&["exec", container, "cat", "/data/node-id"])
}

/// A stopped container's status and exit code, e.g. "exited 0".
pub fn exit_status(container: &str) -> Result<String> {
    docker(&[
        "inspect",
        "-f",
        "{{.State.Status}} {{.State.ExitCode}}",
        container,
    ])
}
