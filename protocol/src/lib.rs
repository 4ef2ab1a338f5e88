//! What a LakeLink scheduler and its executors exchange beyond Ballista's
//! own protocol, so that neither depends on the other:
//!
//! * [`cluster`]: the secret the cluster's processes present to each other;
//! * [`follow`]: a result partition read from the executor writing it, while
//!   its task runs (the scheduler's reads);
//! * [`members`]: the scheduler's calls to every executor (cancel a
//!   query's model calls, read the host's model-call trail);
//! * [`limits`]: sizes given on the command line;
//! * [`result`]: a result on its way to a client: grants and client tickets
//!   for results served by executors, and the rules a result message meets
//!   to be sent as it lies;
//! * [`store`]: where the lake lives and how every process reaches it;
//! * [`tls`]: certificates to serve with and CAs to check peers against.
#![warn(missing_docs)]

pub mod cluster;
pub mod follow;
pub mod limits;
pub mod members;
pub mod result;
pub mod store;
pub mod tls;
