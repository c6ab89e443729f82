//! The `meiro-gate` binary as operators run it (operations.md): `check-config`, `users …`,
//! `keys rotate`, and `serve` end to end — bootstrap, proxying, health, live revocation by the
//! CLI, graceful SIGTERM, and key rotation (SIGHUP, then a restart).

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener as StdListener, TcpStream as StdStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{FakeUpstream, kid_of};
use tempfile::TempDir;

const BIN: &str = env!("CARGO_BIN_EXE_meiro-gate");
const ADMIN_EMAIL: &str = "Root@Example.com";
const ADMIN_PASSWORD: &str = "bootstrap admin password";
const BOOTSTRAP_ENV: [(&str, &str); 2] = [
    ("MEIRO_GATE_BOOTSTRAP__ADMIN_EMAIL", ADMIN_EMAIL),
    ("MEIRO_GATE_BOOTSTRAP__ADMIN_PASSWORD", ADMIN_PASSWORD),
];

/// The binary with `--config`, run in `dir`, with no `MEIRO_GATE_*` variable inherited from
/// whoever runs the tests (each test sets exactly the ones it means).
fn command(dir: &Path, config: &Path, args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut command = Command::new(BIN);
    command
        .current_dir(dir)
        .arg("--config")
        .arg(config)
        .args(args);
    for (name, _) in std::env::vars_os() {
        if name
            .to_str()
            .is_some_and(|n| n.to_ascii_uppercase().starts_with("MEIRO_GATE_"))
        {
            command.env_remove(name);
        }
    }
    command.env("RUST_LOG", "info").envs(env.iter().copied());
    command
}

/// Kills (and reaps) the child when dropped, so a failing test leaves no process behind;
/// prints the child's log if the test is failing.
struct ChildGuard {
    child: Child,
    log: Option<PathBuf>,
}

impl ChildGuard {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits up to `limit` for the child to exit on its own.
    fn wait_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "process {} still running after {limit:?}",
                self.pid()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn log_text(&self) -> String {
        self.log
            .as_ref()
            .and_then(|p| std::fs::read_to_string(p).ok())
            .unwrap_or_default()
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() && self.log.is_some() {
            eprintln!(
                "---- log of pid {} ----\n{}",
                self.child.id(),
                self.log_text()
            );
        }
    }
}

/// What a finished CLI command left behind.
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    fn ok(self) -> Run {
        assert_eq!(
            self.code,
            Some(0),
            "stdout: {}\nstderr: {}",
            self.stdout,
            self.stderr
        );
        self
    }
}

/// Runs a command to completion (at most 30 s), feeding `stdin`.
fn run(mut command: Command, stdin: Option<&str>) -> Run {
    command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut guard = ChildGuard {
        child: command.spawn().expect("spawning meiro-gate"),
        log: None,
    };
    let mut input = guard.child.stdin.take().unwrap();
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).unwrap();
    }
    drop(input);
    let reader = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            pipe.read_to_string(&mut text).unwrap();
            text
        })
    };
    let stdout = reader(Box::new(guard.child.stdout.take().unwrap()));
    let stderr = reader(Box::new(guard.child.stderr.take().unwrap()));
    let status = guard.wait_exit(Duration::from_secs(30));
    Run {
        code: status.code(),
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
    }
}

/// A temp directory holding a config file, the store and the keys.
struct Setup {
    dir: TempDir,
    config: PathBuf,
}

impl Setup {
    /// `body` is the whole TOML; `{dir}` in it becomes the temp directory's absolute path.
    fn new(body: &str) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("meiro-gate.toml");
        let setup = Setup { dir, config };
        setup.rewrite(body);
        setup
    }

    /// Replaces the config file's contents (`{dir}` as in [`Setup::new`]).
    /// Replaces the config file atomically (a temp file renamed over it), as editors and
    /// ConfigMap updates do: a watcher polling in between must never read half a file.
    fn rewrite(&self, body: &str) {
        let body = body.replace("{dir}", &self.dir.path().display().to_string());
        let temp = self.config.with_extension("toml.tmp");
        std::fs::write(&temp, body).unwrap();
        std::fs::rename(&temp, &self.config).unwrap();
    }

    /// A valid config: store and keys in the temp dir, one protected route to `upstream`.
    fn valid(upstream: &str, extra: &str) -> Setup {
        Setup::new(&valid_config(upstream, "", extra))
    }

    fn command(&self, args: &[&str], env: &[(&str, &str)]) -> Command {
        command(self.dir.path(), &self.config, args, env)
    }

    fn run(&self, args: &[&str], stdin: Option<&str>, env: &[(&str, &str)]) -> Run {
        run(self.command(args, env), stdin)
    }

    /// [`Setup::run`] from inside a (multi-threaded) tokio test.
    fn run_blocking(&self, args: &[&str], stdin: Option<&str>) -> Run {
        tokio::task::block_in_place(|| self.run(args, stdin, &[]))
    }

    /// Starts `serve` on free ports and waits until both listeners accept.
    fn serve(&self, env: &[(&str, &str)]) -> Served {
        for attempt in 0.. {
            // Bound together so the two ports differ; freed just before the gateway binds them.
            let (main, admin) = {
                let a = StdListener::bind("127.0.0.1:0").unwrap();
                let b = StdListener::bind("127.0.0.1:0").unwrap();
                (a.local_addr().unwrap(), b.local_addr().unwrap())
            };
            let log = self.dir.path().join(format!("serve-{main}.log"));
            let mut command = self.command(&["serve"], env);
            command
                .env("MEIRO_GATE_SERVER__LISTEN", main.to_string())
                .env("MEIRO_GATE_ADMIN__LISTEN", admin.to_string())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).unwrap());
            let mut guard = ChildGuard {
                child: command.spawn().expect("spawning meiro-gate serve"),
                log: Some(log),
            };
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                if let Some(status) = guard.child.try_wait().unwrap() {
                    let log = guard.log_text();
                    // Someone else took a port in between: try other ones.
                    if attempt < 3 && log.contains("binding") {
                        break;
                    }
                    panic!("serve exited early with {status}:\n{log}");
                }
                let up = |addr| StdStream::connect_timeout(&addr, Duration::from_millis(200));
                // Our child's own line first: a port another test's gateway took in between
                // would also accept connections, and the requests would reach that gateway.
                if guard.log_text().contains("meiro-gate listening")
                    && up(main).is_ok()
                    && up(admin).is_ok()
                {
                    return Served {
                        guard,
                        main,
                        admin,
                        http: reqwest::Client::new(),
                    };
                }
                assert!(Instant::now() < deadline, "serve not listening after 20 s");
                std::thread::sleep(Duration::from_millis(25));
            }
        }
        unreachable!()
    }
}

/// A running `meiro-gate serve`.
struct Served {
    guard: ChildGuard,
    main: SocketAddr,
    admin: SocketAddr,
    http: reqwest::Client,
}

impl Served {
    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.main)
    }

    /// The status of a GET of `path` on the main listener, without a token.
    async fn get_status(&self, path: &str) -> reqwest::StatusCode {
        self.http.get(self.url(path)).send().await.unwrap().status()
    }

    fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }

    /// The status of a GET of `path` on the admin listener.
    async fn admin_status(&self, path: &str) -> reqwest::StatusCode {
        self.http
            .get(self.admin_url(path))
            .send()
            .await
            .unwrap()
            .status()
    }

    async fn login(&self, email: &str, password: &str) -> String {
        let response = self
            .http
            .post(self.url("/users/login"))
            .json(&serde_json::json!({ "email": email, "password": password }))
            .send()
            .await
            .unwrap();
        common::token_of_login(response, email).await
    }

    async fn get(&self, path: &str, token: &str) -> reqwest::Response {
        common::get_with_token(&self.http, self.url(path), token).await
    }

    async fn jwks_kids(&self) -> Vec<String> {
        let jwks = common::get_json(self.http.get(self.url("/.well-known/jwks.json"))).await;
        let mut kids: Vec<String> = jwks["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["kid"].as_str().unwrap().to_owned())
            .collect();
        kids.sort();
        kids
    }

    /// `kill -<signal> <pid>` (no libc in the dependencies).
    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.guard.pid().to_string())
            .status()
            .unwrap();
        assert!(status.success(), "kill -{signal}");
    }

    fn sigterm(&self) {
        self.signal("TERM");
    }

    /// SIGTERM, then the exit status (which must come within 5 s).
    fn stop(mut self) -> std::process::ExitStatus {
        self.sigterm();
        self.guard.wait_exit(Duration::from_secs(5))
    }
}

fn json_lines(text: &str) -> Vec<serde_json::Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}")))
        .collect()
}

// ---- check-config ----

#[test]
fn check_config_prints_the_effective_config_with_secrets_redacted() {
    let setup = Setup::valid(
        "http://127.0.0.1:9000",
        r#"
        [bootstrap]
        admin_email = "root@example.com"
        admin_password = "file-secret-password-123"
        "#,
    );
    let run = setup.run(&["check-config"], None, &[]).ok();
    assert!(
        run.stdout.contains(r#"access_token_ttl = "8h""#),
        "{}",
        run.stdout
    );
    assert!(
        !run.stdout.contains("file-secret-password-123"),
        "{}",
        run.stdout
    );
    let printed: toml::Value = toml::from_str(&run.stdout).expect("the output is TOML");
    assert_eq!(
        printed["bootstrap"]["admin_password"].as_str(),
        Some("<redacted>")
    );
    assert_eq!(
        printed["bootstrap"]["admin_email"].as_str(),
        Some("root@example.com")
    );
    assert_eq!(
        printed["auth"]["cookie_name"].as_str(),
        Some("meiro_access_token")
    );
    assert_eq!(printed["routes"][0]["upstream"].as_str(), Some("backend"));

    // A secret from the environment is redacted just the same.
    let env = [(
        "MEIRO_GATE_BOOTSTRAP__ADMIN_PASSWORD",
        "env-secret-password-456",
    )];
    let run = setup.run(&["check-config"], None, &env).ok();
    assert!(
        !run.stdout.contains("env-secret-password-456"),
        "{}",
        run.stdout
    );
    assert!(
        !run.stderr.contains("env-secret-password-456"),
        "{}",
        run.stderr
    );
    assert!(run.stdout.contains("<redacted>"));
}

#[test]
fn check_config_lists_every_problem_and_exits_1() {
    let setup = Setup::new(
        r#"
        [server]
        lisen = "127.0.0.1:8080"
        [store]
        url = "sqlite://{dir}/gate.db"
        [auth]
        keys_dir = "{dir}/keys"
        access_token_ttl = "eight hours"
        [[upstreams]]
        name = "backend"
        instances = ["http://127.0.0.1:9000"]
        [[routes]]
        prefix = "/"
        upstream = "nowhere"
        "#,
    );
    let run = setup.run(&["check-config"], None, &[]);
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    for key in [
        "server.lisen",
        "auth.access_token_ttl",
        "routes[0].upstream",
    ] {
        assert!(
            run.stderr.contains(key),
            "{key} not named in:\n{}",
            run.stderr
        );
    }
    assert!(run.stderr.contains("nowhere"), "{}", run.stderr);
    assert!(
        run.stdout.is_empty(),
        "nothing printed on stdout: {}",
        run.stdout
    );
}

#[test]
fn check_config_applies_environment_overrides() {
    let setup = Setup::valid("http://127.0.0.1:9000", "");
    let env = [("MEIRO_GATE_AUTH__ACCESS_TOKEN_TTL", "2h")];
    let run = setup.run(&["check-config"], None, &env).ok();
    assert!(
        run.stdout.contains(r#"access_token_ttl = "2h""#),
        "{}",
        run.stdout
    );

    // A bad value from the environment names the variable, not just the key.
    let env = [("MEIRO_GATE_AUTH__ACCESS_TOKEN_TTL", "forever")];
    let run = setup.run(&["check-config"], None, &env);
    assert_eq!(run.code, Some(1));
    assert!(
        run.stderr.contains("auth.access_token_ttl"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("MEIRO_GATE_AUTH__ACCESS_TOKEN_TTL"),
        "{}",
        run.stderr
    );
}

#[test]
fn a_missing_config_file_is_exit_1_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.toml");
    let checked = run(command(dir.path(), &missing, &["check-config"], &[]), None);
    assert_eq!(checked.code, Some(1));
    assert!(
        checked.stderr.contains(&missing.display().to_string()),
        "{}",
        checked.stderr
    );
    // Every subcommand loads the config first.
    let listed = run(command(dir.path(), &missing, &["users", "list"], &[]), None);
    assert_eq!(listed.code, Some(1));
    assert!(listed.stderr.contains("nope.toml"), "{}", listed.stderr);
}

// ---- users ----

#[test]
fn users_commands_add_list_disable_enable_delete_restore_and_set_role() {
    let setup = Setup::valid("http://127.0.0.1:9000", "");
    let password = Some("a long enough password\n");

    let run = setup
        .run(
            &[
                "users",
                "add",
                "--email",
                "A@Example.com",
                "--role",
                "admin",
                "--password-stdin",
            ],
            password,
            &[],
        )
        .ok();
    let added = &json_lines(&run.stdout)[0];
    assert_eq!(added["email"], "a@example.com");
    assert_eq!(added["role"], "admin");
    assert_eq!(added["disabled"], false);
    assert_eq!(added["deleted"], false);
    assert_eq!(added["invitation_pending"], false);
    assert!(
        uuid::Uuid::parse_str(added["id"].as_str().unwrap()).is_ok(),
        "{added}"
    );

    let duplicate = setup.run(
        &[
            "users",
            "add",
            "--email",
            " a@EXAMPLE.com",
            "--password-stdin",
        ],
        password,
        &[],
    );
    assert_ne!(duplicate.code, Some(0), "a duplicate email is refused");
    assert!(duplicate.stderr.contains("exists"), "{}", duplicate.stderr);

    let short = setup.run(
        &[
            "users",
            "add",
            "--email",
            "b@example.com",
            "--password-stdin",
        ],
        Some("short\n"),
        &[],
    );
    assert_ne!(short.code, Some(0), "a short password is refused");
    assert!(short.stderr.contains("at least"), "{}", short.stderr);

    let bad_role = setup.run(
        &["users", "add", "--email", "b@example.com", "--role", "root"],
        None,
        &[],
    );
    assert_ne!(bad_role.code, Some(0));

    // The API's address rule: an address the mail path cannot deliver to is refused here too
    // (it would never get a password-reset mail), before the password is read.
    for email in [
        "d..x@example.com",
        "d@[127.0.0.1]",
        "d@localhost",
        "d(x)@example.com",
    ] {
        let undeliverable = setup.run(
            &["users", "add", "--email", email, "--password-stdin"],
            password,
            &[],
        );
        assert_ne!(undeliverable.code, Some(0), "{email} was accepted");
        assert!(
            undeliverable.stderr.contains("not a valid email address"),
            "{email}: {}",
            undeliverable.stderr
        );
    }

    let run = setup
        .run(&["users", "add", "--email", "c@example.com"], None, &[])
        .ok();
    assert_eq!(
        json_lines(&run.stdout)[0]["role"],
        "user",
        "user is the default role"
    );

    let run = setup.run(&["users", "list"], None, &[]).ok();
    let listed = json_lines(&run.stdout);
    let emails: Vec<&str> = listed
        .iter()
        .map(|u| u["email"].as_str().unwrap())
        .collect();
    assert_eq!(
        emails,
        ["a@example.com", "c@example.com"],
        "neither b nor any d was created"
    );
    assert_eq!(listed[0]["id"], added["id"]);

    // The API's rule holds here too: a is the only active admin.
    for verb in [
        &["disable", "a@example.com"][..],
        &["delete", "a@example.com"],
        &["set-role", "a@example.com", "user"],
    ] {
        let refused = setup.run(&[&["users"][..], verb].concat(), None, &[]);
        assert_ne!(refused.code, Some(0), "{verb:?} of the last admin");
        assert!(
            refused
                .stderr
                .contains("at least one active admin must remain"),
            "{}",
            refused.stderr
        );
    }
    let run = setup
        .run(&["users", "set-role", "c@example.com", "admin"], None, &[])
        .ok();
    assert_eq!(json_lines(&run.stdout)[0]["role"], "admin");

    let run = setup
        .run(&["users", "disable", "A@example.com"], None, &[])
        .ok();
    assert!(run.stdout.contains(r#""disabled":true"#), "{}", run.stdout);
    let run = setup.run(&["users", "list"], None, &[]).ok();
    assert_eq!(json_lines(&run.stdout)[0]["disabled"], true);

    let run = setup
        .run(&["users", "enable", "a@example.com"], None, &[])
        .ok();
    assert!(run.stdout.contains(r#""disabled":false"#), "{}", run.stdout);

    // The trash: delete and restore, each only from the other state.
    let run = setup
        .run(&["users", "delete", "c@example.com"], None, &[])
        .ok();
    assert_eq!(json_lines(&run.stdout)[0]["deleted"], true);
    let again = setup.run(&["users", "delete", "c@example.com"], None, &[]);
    assert_ne!(again.code, Some(0));
    assert!(again.stderr.contains("is in the trash"), "{}", again.stderr);
    let run = setup
        .run(&["users", "restore", "c@example.com"], None, &[])
        .ok();
    assert_eq!(json_lines(&run.stdout)[0]["deleted"], false);
    let again = setup.run(&["users", "restore", "c@example.com"], None, &[]);
    assert_ne!(again.code, Some(0));
    assert!(
        again.stderr.contains("is not in the trash"),
        "{}",
        again.stderr
    );

    for verb in ["disable", "enable", "delete", "restore"] {
        let unknown = setup.run(&["users", verb, "nobody@example.com"], None, &[]);
        assert_ne!(unknown.code, Some(0), "{verb} of an unknown email");
        assert!(
            unknown.stderr.contains("nobody@example.com"),
            "{}",
            unknown.stderr
        );
    }
}

// ---- serve ----

/// Adds an admin beside the bootstrap one (who then may be disabled).
fn add_second_admin(setup: &Setup) {
    let add = [
        "users",
        "add",
        "--email",
        "second@example.com",
        "--role",
        "admin",
    ];
    setup.run_blocking(&add, None).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_end_to_end_with_live_revocation_by_the_cli() {
    let up = FakeUpstream::start().await;
    let setup = Setup::valid(&up.url(), "");
    let served = setup.serve(&BOOTSTRAP_ENV);

    assert_eq!(served.admin_status("/healthz").await, 200);
    assert_eq!(served.admin_status("/readyz").await, 200);

    let missing = served.http.get(served.url("/x")).send().await.unwrap();
    assert_eq!(missing.status(), 401);
    assert_eq!(up.recorded().len(), 0);

    let token = served.login("root@example.com", ADMIN_PASSWORD).await;
    let response = served.get("/app/data?q=1", &token).await;
    assert_eq!(response.status(), 200);
    let seen = up.last();
    assert_eq!(seen.uri, "/app/data?q=1");
    assert_eq!(seen.headers["x-meiro-user-email"], "root@example.com");
    assert_eq!(seen.headers["x-meiro-user-role"], "admin");
    assert_eq!(seen.headers["x-forwarded-for"], "127.0.0.1");

    // Another admin first: the last active admin cannot be disabled.
    add_second_admin(&setup);
    let run = setup
        .run_blocking(&["users", "disable", "root@example.com"], None)
        .ok();
    assert!(run.stdout.contains(r#""disabled":true"#), "{}", run.stdout);
    let started = Instant::now();
    eventually!(
        served.get("/app/data", &token).await.status() == 401,
        "the token still works 5 s after `users disable`"
    );
    let elapsed = started.elapsed();
    assert!(
        elapsed < Duration::from_secs(2),
        "revocation took {elapsed:?}"
    );

    // SIGHUP (documented as "reload") must not kill the gateway, as its default action would.
    let mut served = served;
    served.signal("HUP");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        served.guard.child.try_wait().unwrap().is_none(),
        "SIGHUP ended the process:\n{}",
        served.guard.log_text()
    );
    assert_eq!(
        served.admin_status("/healthz").await,
        200,
        "still serving after SIGHUP"
    );
    assert_eq!(served.stop().code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_requests_refuses_new_ones_and_exits_0() {
    let up = FakeUpstream::start().await;
    let setup = Setup::valid(&up.url(), "");
    let mut served = setup.serve(&BOOTSTRAP_ENV);
    let token = served.login("root@example.com", ADMIN_PASSWORD).await;

    let slow = {
        let request = served
            .http
            .get(served.url("/slow?delay_ms=1500"))
            .header("x-access-token", &token);
        tokio::spawn(async move {
            let started = Instant::now();
            let response = request
                .send()
                .await
                .expect("the in-flight request completes");
            let status = response.status();
            let body: serde_json::Value = response.json().await.unwrap();
            (status, body, started.elapsed())
        })
    };
    // Idle connections must not hold the drain up: one that never sent a byte, and an h2c one
    // that finished a request (the HTTP/1.1 login connection is idle in `served.http`'s pool).
    let silent = StdStream::connect(served.main).unwrap();
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let h2_response = h2
        .get(served.url("/h2"))
        .header("x-access-token", &token)
        .send()
        .await
        .unwrap();
    assert_eq!(h2_response.status(), 200);
    drop(h2_response);

    tokio::time::sleep(Duration::from_millis(300)).await;
    served.sigterm();
    let signalled = Instant::now();

    // The listener closes at once, while the slow request is still being served.
    let main = served.main;
    eventually!(
        tokio::task::block_in_place(|| {
            StdStream::connect_timeout(&main, Duration::from_millis(200)).is_err()
        }),
        "new connections are still accepted 5 s after SIGTERM"
    );
    assert!(
        signalled.elapsed() < Duration::from_millis(1000),
        "refused only after {:?}",
        signalled.elapsed()
    );
    assert!(!slow.is_finished(), "the slow request was still in flight");

    let (status, body, elapsed) = slow.await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(body["path"], "/slow");
    assert!(elapsed >= Duration::from_millis(1500), "{elapsed:?}");

    let exit = tokio::task::block_in_place(|| served.guard.wait_exit(Duration::from_secs(5)));
    assert_eq!(exit.code(), Some(0), "{}", served.guard.log_text());
    let exited_after = signalled.elapsed();
    assert!(
        exited_after < Duration::from_millis(2500),
        "exit took {exited_after:?} after SIGTERM: idle connections held the drain"
    );
    drop(silent);
    assert!(
        !served.guard.log_text().contains("drain timeout"),
        "{}",
        served.guard.log_text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_rotate_is_loaded_on_sighup_and_old_tokens_survive_a_restart() {
    let up = FakeUpstream::start().await;
    let setup = Setup::valid(&up.url(), "");

    let first = setup.serve(&BOOTSTRAP_ENV);
    let old_token = first.login("root@example.com", ADMIN_PASSWORD).await;
    let old_kid = kid_of(&old_token);
    assert_eq!(first.jwks_kids().await, [old_kid.as_str()]);
    assert_eq!(first.get("/x", &old_token).await.status(), 200);

    // Key names start with their creation second, and the greatest name signs: rotating within
    // the second the first key was made could sort the new key first. Operators never do that.
    let created: u64 = old_kid[..12]
        .parse()
        .expect("kid starts with its creation time");
    while std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        <= created
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let run = setup.run_blocking(&["keys", "rotate"], None).ok();
    let new_kid = run
        .stdout
        .split_whitespace()
        .find(|w| w.len() > 12 && w[..12].bytes().all(|b| b.is_ascii_digit()))
        .map(|w| w.trim_end_matches(';').to_owned())
        .unwrap_or_else(|| panic!("no kid in {:?}", run.stdout));
    assert_ne!(new_kid, old_kid);
    assert!(
        setup
            .dir
            .path()
            .join("keys")
            .join(format!("{new_kid}.pem"))
            .is_file()
    );
    let mut both = vec![old_kid.clone(), new_kid.clone()];
    both.sort();
    // The running gateway re-reads the key directory on SIGHUP.
    first.signal("HUP");
    eventually!(
        first.jwks_kids().await == both,
        "SIGHUP did not load the rotated key"
    );
    assert_eq!(tokio::task::block_in_place(|| first.stop()).code(), Some(0));

    // Restarted with two keys, a gateway signs with the newest only after
    // auth.key_activation_delay (its peers may not have it yet): zero here.
    let second = setup.serve(&[
        BOOTSTRAP_ENV[0],
        BOOTSTRAP_ENV[1],
        ("MEIRO_GATE_AUTH__KEY_ACTIVATION_DELAY", "0s"),
    ]);
    assert_eq!(second.jwks_kids().await, both);
    let response = second.get("/after-restart", &old_token).await;
    assert_eq!(
        response.status(),
        200,
        "a token of the old key still verifies"
    );
    let new_token = second.login("root@example.com", ADMIN_PASSWORD).await;
    assert_eq!(kid_of(&new_token), new_kid, "the new key signs");
    assert_eq!(second.get("/x", &new_token).await.status(), 200);
    assert_eq!(
        tokio::task::block_in_place(|| second.stop()).code(),
        Some(0)
    );
}

/// The TOML of [`Setup::valid`]: `server_extra` goes into `[server]`, `route_extra` after the
/// route table's keys (so a following table header ends it).
fn valid_config(upstream: &str, server_extra: &str, route_extra: &str) -> String {
    format!(
        r#"
        [server]
        public_url = "http://gate.test"
        drain_timeout = "5s"
        {server_extra}
        [store]
        url = "sqlite://{{dir}}/gate.db"
        [auth]
        keys_dir = "{{dir}}/keys"
        cookie_secure = false
        password_hash_concurrency = 2
        [[upstreams]]
        name = "backend"
        instances = ["{upstream}"]
        connect_timeout = "1s"
        response_timeout = "5s"
        [[routes]]
        prefix = "/"
        upstream = "backend"
        {route_extra}
        "#
    )
}

/// Rewrites `setup`'s config in place: checked for changes every `watch` (`"0s"`: never), with
/// `upstream`, `route_extra` in the route table and `tail` (more tables) after it.
fn rewrite_config(setup: &Setup, watch: &str, upstream: &str, route_extra: &str, tail: &str) {
    setup.rewrite(&valid_config(
        upstream,
        &format!("config_watch_interval = \"{watch}\""),
        &format!("{route_extra}\n{tail}"),
    ));
}

/// Access-log lines (JSON on a pipe) for `path`.
fn access_lines(log: &str, path: &str) -> usize {
    json_lines_lenient(log)
        .iter()
        .filter(|l| l["target"] == "meiro_gate::access" && l["fields"]["path"] == path)
        .count()
}

/// The JSON lines of a log, skipping any line that is not JSON.
fn json_lines_lenient(text: &str) -> Vec<serde_json::Value> {
    text.lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_config_file_refuses_an_invalid_one_and_names_restart_keys() {
    let a = FakeUpstream::start().await;
    let b = FakeUpstream::start().await;
    let setup = Setup::valid(&a.url(), "");
    // SIGHUP only: the file is not watched.
    rewrite_config(&setup, "0s", &a.url(), "public = true", "");
    // An empty RUST_LOG leaves the filter to `log.filter`.
    let mut served = setup.serve(&[("RUST_LOG", "")]);
    assert_eq!(served.get_status("/one").await, 200);
    assert_eq!(a.recorded().len(), 1);

    // An invalid file: refused, every problem logged by key, the running config kept.
    rewrite_config(
        &setup,
        "0s",
        "ftp://nowhere",
        "public = true\nupstream_typo = 1",
        "[limits]\nmax_header_bytes = 10\n[log]\nfilter = \"info,[[bad\"",
    );
    served.signal("HUP");
    eventually!(
        served.guard.log_text().contains("reload refused"),
        "no refusal logged:\n{}",
        served.guard.log_text()
    );
    let refused = served.guard.log_text();
    for key in [
        "upstreams[0].instances[0]",
        "routes[0].upstream_typo",
        "limits.max_header_bytes",
        "log.filter",
    ] {
        assert!(
            json_lines_lenient(&refused)
                .iter()
                .any(|l| l["fields"]["message"] == "invalid config" && l["fields"]["key"] == key),
            "problem {key} not logged:\n{refused}"
        );
    }
    assert!(
        served.guard.child.try_wait().unwrap().is_none(),
        "still running"
    );
    assert_eq!(served.get_status("/two").await, 200);
    assert_eq!(
        a.recorded().len(),
        2,
        "the running config still routes to A"
    );
    assert_eq!(b.recorded().len(), 0);

    // A valid file: B takes new requests, a restart-only change is named and not applied,
    // and the new log filter silences the access log.
    rewrite_config(
        &setup,
        "0s",
        &b.url(),
        "public = true",
        "[log]\nfilter = \"info,meiro_gate::access=off\"\n[mail]\nfrom = \"Renamed <no-reply@localhost>\"",
    );
    served.signal("HUP");
    eventually!(
        served.guard.log_text().contains("configuration reloaded"),
        "no reload logged:\n{}",
        served.guard.log_text()
    );
    assert_eq!(served.get_status("/three").await, 200);
    assert_eq!(b.last().uri.path(), "/three");
    assert_eq!(a.recorded().len(), 2);
    let reloaded = served.guard.log_text();
    assert!(
        json_lines_lenient(&reloaded).iter().any(|l| {
            l["level"] == "WARN"
                && l["fields"]["key"] == "mail.from"
                && l["fields"]["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("needs a restart"))
        }),
        "mail.from not named as needing a restart:\n{reloaded}"
    );
    assert_eq!(access_lines(&reloaded, "/one"), 1, "{reloaded}");
    assert_eq!(access_lines(&reloaded, "/three"), 0, "{reloaded}");
    assert_eq!(served.stop().code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_config_file_is_reloaded_without_a_signal() {
    let a = FakeUpstream::start().await;
    let b = FakeUpstream::start().await;
    let setup = Setup::valid(&a.url(), "");
    rewrite_config(&setup, "100ms", &a.url(), "public = true", "");
    let served = setup.serve(&[]);
    let status = served.get_status("/one").await;
    assert_eq!(status, 200);
    assert_eq!(a.recorded().len(), 1);

    // An invalid edit is refused once (logged), not at every check.
    rewrite_config(&setup, "100ms", &b.url(), "public = maybe", "");
    eventually!(
        served.guard.log_text().contains("reload refused"),
        "the invalid edit was not noticed:\n{}",
        served.guard.log_text()
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let refusals = served.guard.log_text().matches("reload refused").count();
    assert_eq!(refusals, 1, "{}", served.guard.log_text());
    let status = served.get_status("/two").await;
    assert_eq!(status, 200);
    assert_eq!(a.recorded().len(), 2);

    rewrite_config(&setup, "100ms", &b.url(), "public = true", "");
    eventually!(
        served.get_status("/three").await == 200 && !b.recorded().is_empty(),
        "the edited file was not applied:\n{}",
        served.guard.log_text()
    );
    assert_eq!(b.last().uri.path(), "/three");
    assert_eq!(served.stop().code(), Some(0));
}

// ---- audit ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_tail_prints_the_trail_of_serve_and_of_the_cli() {
    let up = FakeUpstream::start().await;
    let setup = Setup::valid(&up.url(), "");
    let served = setup.serve(&BOOTSTRAP_ENV);
    let admin = "root@example.com";
    let refused = served
        .http
        .post(served.url("/users/login"))
        .header("x-request-id", "cli-audit-1")
        .json(&serde_json::json!({ "email": ADMIN_EMAIL, "password": "not the password" }))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    let token = served.login(ADMIN_EMAIL, ADMIN_PASSWORD).await;
    let tail = |args: &[&str]| {
        let args: Vec<&str> = ["audit", "tail"].iter().chain(args).copied().collect();
        setup.run_blocking(&args, None).ok().stdout
    };
    // Written by serve's audit writer, in the background.
    let deadline = Instant::now() + Duration::from_secs(10);
    while tail(&[]).lines().count() < 2 {
        assert!(
            Instant::now() < deadline,
            "serve's events never reached the store"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Another admin first: the last active admin cannot be disabled.
    add_second_admin(&setup);
    setup.run_blocking(&["users", "disable", admin], None).ok();
    setup.run_blocking(&["users", "enable", admin], None).ok();
    setup.run_blocking(&["keys", "rotate"], None).ok();

    let text = tail(&[]);
    let lines: Vec<&str> = text.lines().collect();
    let kinds: Vec<&str> = lines
        .iter()
        .map(|l| l.split(' ').nth(1).unwrap_or_default())
        .collect();
    assert_eq!(
        kinds,
        [
            "login_failed",
            "login_succeeded",
            "user_created",
            "user_disabled",
            "user_enabled",
            "key_rotated"
        ],
        "oldest first:\n{text}"
    );
    for field in [
        "request_id=cli-audit-1",
        "reason=wrong_password",
        "ip=127.0.0.1",
        "email=root@example.com",
        "user=",
    ] {
        assert!(lines[0].contains(field), "{field} in {}", lines[0]);
    }
    for created_or_disabled in &lines[2..4] {
        assert!(
            created_or_disabled.contains("actor=cli"),
            "{created_or_disabled}"
        );
    }
    assert!(lines[5].contains("kid="), "{}", lines[5]);
    assert!(
        time::OffsetDateTime::parse(
            lines[0].split(' ').next().unwrap(),
            &time::format_description::well_known::Rfc3339
        )
        .is_ok(),
        "{}",
        lines[0]
    );

    let json = json_lines(&tail(&["--json"]));
    assert_eq!(json.len(), 6);
    assert_eq!(json[0]["kind"], "login_failed");
    assert_eq!(json[0]["request_id"], "cli-audit-1");
    assert_eq!(json[0]["client_ip"], "127.0.0.1");
    assert_eq!(json[0]["detail"]["reason"], "wrong_password");
    assert!(
        json[0]["time"].as_str().unwrap().ends_with('Z'),
        "{}",
        json[0]
    );

    let of_admin = tail(&["--user", "ROOT@example.com"]);
    assert_eq!(
        of_admin.lines().count(),
        4,
        "not the key rotation, nor the second admin's creation:\n{of_admin}"
    );
    assert_eq!(tail(&["--user", "nobody@example.com"]), "");
    let newest = tail(&["--limit", "2"]);
    let newest: Vec<&str> = newest.lines().collect();
    assert_eq!(newest.len(), 2);
    assert!(newest[0].contains(" user_enabled "), "{newest:?}");
    assert!(newest[1].contains(" key_rotated "), "{newest:?}");
    assert_eq!(tail(&["--since", "1h"]).lines().count(), 6);

    let bad = setup.run_blocking(&["audit", "tail", "--since", "soon"], None);
    assert_ne!(bad.code, Some(0));
    assert!(bad.stderr.contains("duration"), "{}", bad.stderr);
    let zero = setup.run_blocking(&["audit", "tail", "--limit", "0"], None);
    assert_ne!(zero.code, Some(0));

    for output in [text, tail(&["--json"])] {
        assert!(!output.contains(ADMIN_PASSWORD), "{output}");
        assert!(!output.contains("not the password"), "{output}");
        assert!(!output.contains(&token), "{output}");
    }
    drop(served);
}
