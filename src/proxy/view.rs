//! What every step of one request shares: the state current when it arrived, this
//! worker's upstream and the caller's address. A leaf, so each step (`handle`,
//! `dispatch`, `forward`, `pace`) adds its methods to [`Proxy`] from its own file and
//! the first step imports none of the later ones' types.

use std::marker::PhantomData;
use std::sync::Arc;

use super::peer::Peer;
use super::state::State;

/// One request's view: the state current when it arrived, this worker's upstream and
/// the caller's address. `B` is the caller's body type (hyper's `Incoming` but in tests).
pub(super) struct Proxy<U, B> {
    pub(super) state: Arc<State>,
    pub(super) upstream: Arc<U>,
    pub(super) peer: Peer,
    pub(super) body: PhantomData<fn(B)>,
}
