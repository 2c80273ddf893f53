//! Per-integration cutover: which way one request goes.
//!
//! `observe` and `shadow` send the key, `oauth` the bearer, `canary` samples
//! `canary_percent` of requests for the bearer (with fallback to the key on 401/403),
//! `deny` forwards nothing. Shadow replays are sampled by `shadow_percent` and bounded
//! by a global token-bucket rate limit.

use std::sync::Arc;

use crate::config::{Client, Instance, Percent, Plan};

/// The path chosen for one request, borrowing what it needs from the integration's
/// [`Plan`]: every route that forwards carries its instance or client, so no forward
/// path has to handle a missing one.
#[derive(Debug, Clone, Copy)]
pub enum Route<'a> {
    /// Forward with the key.
    Key { instance: &'a Arc<Instance> },
    /// Forward with the key and replay it with `client`'s token in the background.
    KeyAndShadow { client: &'a Arc<Client> },
    /// Forward with `client`'s token; on 401/403 retry with the key (canary).
    OauthWithFallback { client: &'a Arc<Client> },
    /// Forward with `client`'s token only.
    Oauth { client: &'a Arc<Client> },
    /// Refuse.
    Deny,
}

/// Picks the route. `safe_method` is GET/HEAD (only those are ever shadowed).
pub fn route(plan: &Plan, safe_method: bool) -> Route<'_> {
    match plan {
        Plan::Observe { instance, .. } => Route::Key { instance },
        Plan::Shadow { client, percent } if safe_method && sampled(*percent) => {
            Route::KeyAndShadow { client }
        }
        Plan::Shadow { client, .. } => Route::Key {
            instance: &client.instance,
        },
        Plan::Canary { client, percent } if sampled(*percent) => {
            Route::OauthWithFallback { client }
        }
        Plan::Canary { client, .. } => Route::Key {
            instance: &client.instance,
        },
        Plan::Oauth { client } => Route::Oauth { client },
        Plan::Deny { .. } => Route::Deny,
    }
}

/// True with probability `percent`/100.
fn sampled(percent: Percent) -> bool {
    let percent = percent.get();
    percent >= 100 || fastrand::u8(0..100) < percent
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ClientAuth, Secret};

    fn instance() -> Arc<Instance> {
        Arc::new(Instance {
            name: "prod".into(),
            scheme: http::uri::Scheme::HTTPS,
            authority: http::uri::Authority::from_static("acme.coupahost.com"),
            token_url: http::Uri::from_static("https://acme.coupahost.com/oauth2/token"),
            rate_limit: None,
        })
    }

    fn client(instance: &Arc<Instance>) -> Arc<Client> {
        Arc::new(Client {
            name: "erp".into(),
            instance: Arc::clone(instance),
            client_id: "id".into(),
            client_secret: Secret::new("s3cret"),
            scopes: vec![],
            auth: ClientAuth::Body,
        })
    }

    #[test]
    fn every_route_carries_what_it_forwards_with() {
        let prod = instance();
        let erp = client(&prod);
        let all = Percent::ALL;
        let none = Percent::new(0).unwrap();
        let same = |a: &Arc<Instance>| Arc::ptr_eq(a, &prod);
        let is = |c: &Arc<Client>| Arc::ptr_eq(c, &erp);

        let observe = Plan::Observe {
            instance: Arc::clone(&prod),
            client: None,
        };
        assert!(matches!(route(&observe, true), Route::Key { instance } if same(instance)));

        let shadow = Plan::Shadow {
            client: Arc::clone(&erp),
            percent: all,
        };
        assert!(matches!(route(&shadow, true), Route::KeyAndShadow { client } if is(client)));
        assert!(matches!(route(&shadow, false), Route::Key { instance } if same(instance)));
        let unsampled = Plan::Shadow {
            client: Arc::clone(&erp),
            percent: none,
        };
        assert!(matches!(route(&unsampled, true), Route::Key { instance } if same(instance)));

        let canary = Plan::Canary {
            client: Arc::clone(&erp),
            percent: all,
        };
        assert!(matches!(route(&canary, false), Route::OauthWithFallback { client } if is(client)));
        let unsampled = Plan::Canary {
            client: Arc::clone(&erp),
            percent: none,
        };
        assert!(matches!(route(&unsampled, false), Route::Key { instance } if same(instance)));

        let oauth = Plan::Oauth {
            client: Arc::clone(&erp),
        };
        assert!(matches!(route(&oauth, true), Route::Oauth { client } if is(client)));

        let deny = Plan::Deny {
            client: Some(Arc::clone(&erp)),
            instance: None,
        };
        assert!(matches!(route(&deny, true), Route::Deny));
    }

    #[test]
    fn sampling_bounds() {
        let p = |n| Percent::new(n).unwrap();
        assert!((0..1000).all(|_| sampled(p(100))));
        assert!((0..1000).all(|_| !sampled(p(0))));
        let hits = (0..10_000).filter(|_| sampled(p(30))).count();
        assert!((2700..3300).contains(&hits), "{hits}");
    }
}
