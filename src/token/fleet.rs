//! The fleet's token protocol, on top of the local cache ([`super::cache`]) and the
//! Redis records ([`super::shared`]): who fetches a client's token when several
//! replicas need one (a lease), how a token another replica stored is adopted on this
//! replica's clock, and who replaces a token Coupa refused. Without `fleet.redis_url`,
//! or while Redis does not answer, every replica fetches for itself.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::cache::{Replacement, Token, TokenCache, token_id};
use super::oauth::TokenError;
use super::shared::{Lease, SharedToken, Tally, now_ms};
use crate::config::Client;

impl TokenCache {
    /// With the fleet's Redis cache, whether this replica replaces the `refused` token
    /// of `config`, adopts the replacement another replica fetched (waiting at most a
    /// token request for it), or keeps the refused one.
    pub(super) async fn fleet_replacement(
        &self,
        config: &Client,
        refused: &Arc<Token>,
    ) -> Replacement {
        let Some(shared) = &self.inner.shared else {
            return Replacement::FetchHere;
        };
        let settings = &self.inner.settings;
        match shared
            .claim_forced(config, settings.min_refetch_interval)
            .await
        {
            // Err: Redis away; the local rule (already checked) decided.
            Ok(true) | Err(_) => Replacement::FetchHere,
            Ok(false) => {
                // Another replica claimed the replacement within the interval: wait (at
                // most a token request) for its new token, else keep this one.
                let deadline = Instant::now() + settings.request_timeout;
                let mut theirs = None;
                loop {
                    if let Ok(Some(t)) = shared.load(config).await
                        && token_id(&t.authorization) != refused.id
                    {
                        theirs = Some(t);
                        break;
                    }
                    if Instant::now() >= deadline {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                match theirs {
                    Some(t)
                        if token_id(&t.authorization) != refused.id
                            && shared.fleet_now_ms() < t.expires_at_ms =>
                    {
                        shared.tally(Tally::Read, &self.inner.metrics);
                        Replacement::Theirs(self.adopt(&config.name, t))
                    }
                    _ => {
                        tracing::warn!(client = %config.name, serial = refused.serial, "Coupa refused the token; another replica already replaced it within token.min_refetch_interval");
                        Replacement::Keep
                    }
                }
            }
        }
    }

    /// A new token for `client`. With the fleet's Redis cache: a fresh token another
    /// replica stored, or the one a replica minting right now stores, else one fetched
    /// here under the client's lease and stored for the others. Without it, or when
    /// Redis does not answer: fetched here. `refused`: a token Coupa refused, never
    /// taken back from Redis.
    pub(super) async fn obtain(
        &self,
        client: &Client,
        refused: Option<u64>,
    ) -> Result<Token, TokenError> {
        let Some(shared) = self.inner.shared.as_ref() else {
            return self.fetch(client).await;
        };
        let fresh = |t: &SharedToken| {
            let now = shared.fleet_now_ms();
            now < t.refresh_at_ms
                && now < t.expires_at_ms
                && Some(token_id(&t.authorization)) != refused
        };
        let read = |t: SharedToken| {
            shared.tally(Tally::Read, &self.inner.metrics);
            Ok(self.adopt(&client.name, t))
        };
        let local = || {
            shared.tally(Tally::Local, &self.inner.metrics);
            self.fetch(client)
        };
        match shared.load(client).await {
            Ok(Some(t)) if fresh(&t) => return read(t),
            Ok(_) => {}
            Err(_) => return local().await,
        }
        let lease = self.inner.settings.request_timeout + Duration::from_secs(5);
        // Two rounds: if the replica minting for us gives up (its fetch failed, or it
        // died and its lease lapsed), take the lease ourselves rather than all waiting
        // out the lease and then all fetching at once.
        for _round in 0..2 {
            match shared.lease(client, lease).await {
                Ok(Lease::Held(owner)) => {
                    // A token may have landed between the read and the lease.
                    if let Ok(Some(t)) = shared.load(client).await
                        && fresh(&t)
                    {
                        shared.release(client, &owner).await;
                        return read(t);
                    }
                    let result = self.fetch(client).await;
                    let result = match result {
                        Ok(token) => match shared.store(client, &self.shareable(&token)).await {
                            Ok(true) => {
                                shared.tally(Tally::Written, &self.inner.metrics);
                                Ok(token)
                            }
                            // A record that looks newer is stored (another replica's
                            // clock runs ahead): use that one, as the fleet does.
                            Ok(false) => match shared.load(client).await {
                                Ok(Some(t)) if fresh(&t) => read(t),
                                _ => Ok(token),
                            },
                            Err(e) => {
                                tracing::warn!(client = %client.name, error = %e, "could not share the new token");
                                Ok(token)
                            }
                        },
                        Err(e) => Err(e),
                    };
                    shared.release(client, &owner).await;
                    return result;
                }
                Ok(Lease::Taken) => {
                    // Another replica is minting: wait for its token while it holds the
                    // lease, at most one lease long.
                    let deadline = Instant::now() + lease;
                    while Instant::now() < deadline {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        match shared.load(client).await {
                            Ok(Some(t)) if fresh(&t) => return read(t),
                            Ok(_) => {}
                            Err(_) => return local().await,
                        }
                        match shared.leased(client).await {
                            Ok(true) => {}
                            Ok(false) => break, // released or lapsed without a token
                            Err(_) => return local().await,
                        }
                    }
                }
                Err(_) => return local().await,
            }
        }
        local().await
    }

    /// Now on the fleet's clock (this replica's own without the shared cache).
    fn fleet_now_ms(&self) -> i64 {
        self.inner
            .shared
            .as_ref()
            .map_or_else(now_ms, |shared| shared.fleet_now_ms())
    }

    /// A token another replica stored (fleet times), on this replica's clock.
    fn adopt(&self, client: &str, t: SharedToken) -> Token {
        let (now, now_wall) = (Instant::now(), self.fleet_now_ms());
        // This replica's own wall clock, for what it shows (expiry times).
        let local_offset = now_ms() - now_wall;
        let at = |ms: i64| {
            if ms >= now_wall {
                now + Duration::from_millis((ms - now_wall) as u64)
            } else {
                now.checked_sub(Duration::from_millis((now_wall - ms) as u64))
                    .unwrap_or(now)
            }
        };
        let expires_local_ms = t.expires_at_ms + local_offset;
        self.inner
            .metrics
            .token_expiry(client, expires_local_ms / 1000);
        Token {
            id: token_id(&t.authorization),
            authorization: t.authorization,
            requested_at: at(t.requested_at_ms),
            usable_at: at(t.usable_at_ms),
            refresh_at: at(t.refresh_at_ms),
            expires_at: at(t.expires_at_ms),
            expires_at_wall: std::time::UNIX_EPOCH
                + Duration::from_millis(expires_local_ms.max(0) as u64),
            serial: self.inner.serial.fetch_add(1, Ordering::Relaxed) + 1,
        }
    }

    /// This replica's token in the fleet's terms (milliseconds on the fleet's clock).
    fn shareable(&self, token: &Token) -> SharedToken {
        let (now, now_wall) = (Instant::now(), self.fleet_now_ms());
        let ms = |i: Instant| {
            if i >= now {
                now_wall + i.duration_since(now).as_millis() as i64
            } else {
                now_wall - now.duration_since(i).as_millis() as i64
            }
        };
        SharedToken {
            authorization: token.authorization.clone(),
            requested_at_ms: ms(token.requested_at),
            usable_at_ms: ms(token.usable_at),
            refresh_at_ms: ms(token.refresh_at),
            expires_at_ms: ms(token.expires_at),
        }
    }
}
