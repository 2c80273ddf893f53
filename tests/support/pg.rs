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
