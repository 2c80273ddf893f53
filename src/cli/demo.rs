//! `keybridge demo`: a mock Coupa and the proxy on loopback, wired together, so a
//! newcomer without a Coupa account can watch a key turn into a bearer token.

use std::collections::HashMap;
use std::path::Path;

use super::args::DemoArgs;
use super::mock::{MockCoupa, MockHandle};
use crate::config::Config;
use crate::runtime::Running;

/// The demo integration's API key (it exists only in the demo's mock).
pub const DEMO_API_KEY: &str = "demo0000000000000000000000000000000000ke";
/// A second, not yet migrated integration (`observe`): Coupa still sees its key.
pub const LEGACY_API_KEY: &str = "legacy00000000000000000000000000000000ke";

pub struct Demo {
    pub mock: MockHandle,
    pub proxy: Running,
    pub config_yaml: String,
    /// Where the config (`config.yaml`) and the audit (`audit.db`) are.
    pub dir: std::path::PathBuf,
}

/// Starts the mock and the proxy.
pub async fn start(args: &DemoArgs) -> anyhow::Result<Demo> {
    let secret = format!("demo-secret-{:016x}", fastrand::u64(..));
    let mock = MockCoupa::new()
        .client(
            "demo-client",
            &secret,
            &["core.invoice.read", "core.invoice.write", "core.user.read"],
        )
        .api_key(LEGACY_API_KEY)
        .settle(std::time::Duration::from_secs(1))
        .start(args.mock_listen)
        .await?;
    // A directory of this demo's own: nothing else (a test run, another demo) writes
    // into its audit, and `keybridge audit` can be pointed at it.
    let dir = match &args.dir {
        Some(dir) => dir.clone(),
        None => std::env::temp_dir().join(format!("keybridge-demo-{}", std::process::id())),
    };
    std::fs::create_dir_all(&dir)
        .map_err(|e| anyhow::anyhow!("cannot create the demo directory {}: {e}", dir.display()))?;
    let config_yaml = format!(
        r#"listen: {listen}
admin_listen: {admin}
instances:
  demo:
    base_url: {base}
clients:
  demo-client:
    instance: demo
    client_id: demo-client
    client_secret: ${{DEMO_CLIENT_SECRET}}
    scopes: [core.invoice.read, core.invoice.write, core.user.read]
integrations:
  - name: demo-erp
    api_key_sha256: {fp}
    client: demo-client
  - name: legacy-script
    api_key_sha256: {legacy_fp}
    instance: demo
    mode: observe
token:
  settle_delay: 1s
audit:
  path: {audit}
  flush_interval: 2s
"#,
        audit = dir.join("audit.db").display(),
        listen = args.listen,
        admin = args.admin_listen,
        base = mock.base_url(),
        fp = crate::keys::Fingerprint::of_key(DEMO_API_KEY.as_bytes()),
        legacy_fp = crate::keys::Fingerprint::of_key(LEGACY_API_KEY.as_bytes()),
    );
    let env = HashMap::from([("DEMO_CLIENT_SECRET".to_owned(), secret)]);
    let config = Config::from_yaml(&config_yaml, Path::new("."), &env)?;
    let config_path = dir.join("config.yaml");
    std::fs::write(&config_path, &config_yaml)
        .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", config_path.display()))?;
    let proxy = crate::runtime::start(config).await?;
    Ok(Demo {
        mock,
        proxy,
        config_yaml,
        dir,
    })
}

/// What to tell the user once the demo runs.
pub fn instructions(demo: &Demo) -> String {
    let p = demo.proxy.proxy_addr;
    let a = demo.proxy.admin_addr;
    format!(
        "keybridge demo is running.\n\n\
         mock Coupa:  {mock}\n\
         proxy:       http://{p}\n\
         admin:       http://{a}\n\n\
         Config in use (the secret comes from $DEMO_CLIENT_SECRET):\n\n{cfg}\n\
         Try it:\n\
         \x20 open http://{a}/ in a browser for the migration dashboard\n\
         \x20 curl -s http://{a}/readyz\n\
         \x20 curl -sg -H 'X-COUPA-API-KEY: {key}' -H 'Accept: application/json' 'http://{p}/api/invoices/42?fields=[%22id%22]'\n\
         \x20 curl -s -X POST -H 'X-COUPA-API-KEY: {key}' -H 'Content-Type: application/json' -d '{{\"invoice-number\":\"INV-1\"}}' http://{p}/api/invoices\n\
         \x20 curl -s -H 'X-COUPA-API-KEY: wrong-key' http://{p}/api/invoices      # 401, never reaches Coupa\n\
         \x20 curl -s -H 'X-COUPA-API-KEY: {key}' http://{p}/api/suppliers         # 403 from Coupa: the client lacks core.supplier.read\n\
         \x20 curl -s -H 'X-COUPA-API-KEY: {legacy}' http://{p}/api/purchase_orders/7   # observe: forwarded with its key, recorded\n\
         \x20 curl -s http://{a}/audit                                   # who still sends keys, and the scopes they need\n\n\
         The mock answers with what it received: \"auth\": \"bearer\" shows the key was swapped.\n\
         The demo's audit, also after it stopped:\n\
         \x20 keybridge audit --config {config}\n\n\
         Ctrl-C to stop.\n",
        mock = demo.mock.base_url(),
        config = demo.dir.join("config.yaml").display(),
        cfg = demo.config_yaml,
        key = DEMO_API_KEY,
        legacy = LEGACY_API_KEY,
    )
}
