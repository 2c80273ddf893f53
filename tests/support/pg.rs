//! A PostgreSQL database of the test's own on the machine's server (127.0.0.1:5432,
//! trust auth, user `postgres`), dropped when the test ends. Override the server with
//! KEYBRIDGE_TEST_PG (a URL to an existing database to connect through).

use tokio_postgres::NoTls;

/// The machine's server, as `.ci/run` starts it.
fn admin_url() -> String {
    std::env::var("KEYBRIDGE_TEST_PG")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// A fresh, empty database; dropped (connections and all) on drop.
pub struct TestDatabase {
    pub name: String,
    pub url: String,
}

async fn admin() -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(&admin_url(), NoTls)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "cannot reach PostgreSQL at {} ({e}); .ci/run starts it",
                admin_url()
            )
        });
    tokio::spawn(conn);
    client
}

impl TestDatabase {
    pub async fn create() -> TestDatabase {
        let name = format!(
            "keybridge_test_{}_{:08x}",
            std::process::id(),
            fastrand::u32(..)
        );
        admin()
            .await
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap();
        let base = admin_url();
        let server = base.rsplit_once('/').map_or(base.as_str(), |(s, _)| s);
        // A password in the URL, as production has one (trust auth ignores it): the
        // leak scan checks it never appears in a log or response.
        let password = format!("kb-db-password-{:016x}", fastrand::u64(..));
        super::leak::note_canary(&password);
        let server = server.replacen("://postgres@", &format!("://postgres:{password}@"), 1);
        TestDatabase {
            url: format!("{server}/{name}"),
            name,
        }
    }

    /// A connection to this database, for checking what keybridge wrote.
    pub async fn connect(&self) -> tokio_postgres::Client {
        let (client, conn) = tokio_postgres::connect(&self.url, NoTls).await.unwrap();
        tokio::spawn(conn);
        client
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop runs outside any runtime's async context: a thread with its own.
        let dropped = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                admin()
                    .await
                    .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .await
            })
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!("could not drop test database {}", self.name);
        }
    }
}

/// A PostgreSQL server of the test's own (initdb into a temp directory, a free port),
/// for tests that stop and restart it. Runs as the `postgres` user when the test runs
/// as root (initdb refuses root). Stopped and removed on drop.
pub struct PrivateServer {
    dir: std::path::PathBuf,
    pub port: u16,
    as_postgres: bool,
    /// `-c ssl=on …` when started with TLS.
    tls_options: String,
}

fn bin(tool: &str) -> String {
    let versions = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| {
            let mut v: Vec<_> = d.filter_map(|e| e.ok()).map(|e| e.path()).collect();
            v.sort();
            v
        })
        .unwrap_or_default();
    versions
        .last()
        .map(|v| v.join("bin").join(tool).display().to_string())
        .unwrap_or_else(|| tool.to_owned())
}

impl PrivateServer {
    pub fn start() -> PrivateServer {
        Self::start_with(false)
    }

    /// With TLS on, serving tests/fixtures/server.pem (localhost, 127.0.0.1; signed by
    /// tests/fixtures/ca.pem).
    pub fn start_with_tls() -> PrivateServer {
        Self::start_with(true)
    }

    fn start_with(tls: bool) -> PrivateServer {
        use std::os::unix::fs::MetadataExt as _;
        let as_postgres = std::fs::metadata("/proc/self").unwrap().uid() == 0;
        let dir = super::temp_path("pg");
        std::fs::create_dir_all(&dir).unwrap();
        if as_postgres {
            let chown = std::process::Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.parent().unwrap())
                .status()
                .unwrap();
            assert!(chown.success());
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut tls_options = String::new();
        if tls {
            let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
            let (cert, key) = (dir.join("server.pem"), dir.join("server.key"));
            std::fs::copy(fixtures.join("server.pem"), &cert).unwrap();
            std::fs::copy(fixtures.join("server.key"), &key).unwrap();
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
            if as_postgres {
                let chown = std::process::Command::new("chown")
                    .args(["postgres:postgres"])
                    .arg(&cert)
                    .arg(&key)
                    .status()
                    .unwrap();
                assert!(chown.success());
            }
            tls_options = format!(
                " -c ssl=on -c ssl_cert_file={} -c ssl_key_file={}",
                cert.display(),
                key.display()
            );
        }
        let server = PrivateServer {
            dir,
            port,
            as_postgres,
            tls_options,
        };
        server.run(&[
            &bin("initdb"),
            "-D",
            &server.data(),
            "-U",
            "postgres",
            "--auth=trust",
            "-N",
        ]);
        server.start_again();
        server
    }

    fn data(&self) -> String {
        self.dir.join("data").display().to_string()
    }

    fn run(&self, args: &[&str]) {
        let mut command = if self.as_postgres {
            let mut c = std::process::Command::new("runuser");
            c.args(["-u", "postgres", "--"]);
            c
        } else {
            std::process::Command::new(args[0])
        };
        let args = if self.as_postgres { args } else { &args[1..] };
        let out = command.args(args).output().unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// (Re)starts the server and waits until it accepts connections.
    pub fn start_again(&self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off{}",
            self.port,
            self.dir.display(),
            self.tls_options
        );
        let log = self.dir.join("server.log").display().to_string();
        self.run(&[
            &bin("pg_ctl"),
            "-D",
            &self.data(),
            "-o",
            &options,
            "-l",
            &log,
            "-w",
            "start",
        ]);
    }

    /// Stops the server at once (clients are disconnected).
    pub fn stop(&self) {
        self.run(&[
            &bin("pg_ctl"),
            "-D",
            &self.data(),
            "-m",
            "fast",
            "-w",
            "stop",
        ]);
    }

    /// A database on this server.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }
}

impl Drop for PrivateServer {
    fn drop(&mut self) {
        let _ = std::process::Command::new(if self.as_postgres { "runuser" } else { "sh" })
            .args(if self.as_postgres {
                vec![
                    "-u".to_owned(),
                    "postgres".to_owned(),
                    "--".to_owned(),
                    bin("pg_ctl"),
                ]
            } else {
                vec![
                    "-c".to_owned(),
                    format!("{} \"$@\"", bin("pg_ctl")),
                    "pg_ctl".to_owned(),
                ]
            })
            .args(["-D", &self.data(), "-m", "immediate", "stop"])
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
