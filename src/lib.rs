//! flotilla: a replicated key-value store of many Raft groups, spoken to over the Redis
//! protocol.
//!
//! This crate is the node around the actor system of `flotilla-actors`: the configuration
//! ([`config`]), the client protocol ([`resp`], [`commands`], [`admin`], [`server`]), the
//! transport between nodes ([`peers`]) and the wiring that
//! starts a node ([`run`]).
//!
//! # The life of a request
//!
//! `redis-cli set k v` arrives on a connection ([`server`]); the reader parses the RESP frame
//! ([`resp::RequestParser`]) and runs the command ([`commands::Session::execute`]), which sends
//! `Write` to the Store actor and leaves a pending reply in the connection's queue. The Store
//! proposes through MultiRaft; when the entry is committed on a quorum (durably) and applied,
//! the Store answers, and the connection's writer sends `+OK` — after the replies of every
//! earlier request of that connection. See the `flotilla-actors` crate documentation for what
//! happens in between.

pub mod admin;
pub mod commands;
pub mod config;
pub mod peers;
pub mod resp;
pub mod run;
pub mod scenario;
pub mod server;
pub mod sim;
