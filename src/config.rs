//! The node's configuration: a TOML file, or the built-in defaults (which are exactly
//! `config/single-node.toml`).
//!
//! [`Config::load`] refuses a bad file before anything starts, with one line that names the
//! file, the key and the problem.

use flotilla_actors::ids::{NodeId, MAX_NODE_ID};
use flotilla_actors::multiraft::RaftSettings;
use flotilla_actors::node::NodeSettings;
use flotilla_actors::storage::hash_tag_refusal;
use flotilla_actors::store::{StoreSettings, MAX_SPLIT_KEY_BYTES};
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The largest `max_value_bytes` accepted: an entry must fit in one raft frame between nodes
/// (64 MiB) with room to spare.
pub const MAX_VALUE_BYTES_LIMIT: usize = 16 << 20;

/// The bounds of `range_max_bytes`. A range goes past it by what is written before it is
/// measured and split (at least a sixteenth of it, often more), and a snapshot of a range,
/// which carries all its data, cannot be over `MAX_SNAPSHOT_BYTES`: so half of that at most.
pub const MIN_RANGE_MAX_BYTES: u64 = 4096;
pub const MAX_RANGE_MAX_BYTES: u64 = crate::peers::MAX_SNAPSHOT_BYTES as u64 / 2;

/// A node's configuration. Every key is documented in `config/single-node.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub node_id: u64,
    pub data_dir: PathBuf,
    pub client_addr: SocketAddr,
    pub password: Option<String>,
    pub split_keys: Vec<String>,
    pub range_max_bytes: u64,
    pub max_value_bytes: usize,
    pub max_clients: usize,
    pub tick_interval_ms: u64,
    pub election_ticks: usize,
    pub heartbeat_ticks: usize,
    pub request_timeout_ms: u64,
    pub max_unapplied_entries: u64,
    pub log_compaction_entries: u64,
    pub cache_mb: u64,
    pub raft_addr: Option<SocketAddr>,
    pub cluster_id: String,
    pub cluster_secret: Option<String>,
    pub initial_members: Vec<u64>,
    pub peers: BTreeMap<String, SocketAddr>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            node_id: 1,
            data_dir: PathBuf::from("./flotilla-data"),
            client_addr: "127.0.0.1:6380".parse().expect("literal address"),
            password: None,
            split_keys: ["f", "key:000000500000", "m", "t"]
                .iter()
                .map(|s| s.to_string())
                .collect(),
            range_max_bytes: StoreSettings::default().range_max_bytes,
            max_value_bytes: 1 << 20,
            max_clients: 10_000,
            tick_interval_ms: 100,
            election_ticks: 10,
            heartbeat_ticks: 2,
            request_timeout_ms: 5_000,
            max_unapplied_entries: 20_000,
            log_compaction_entries: 10_000,
            cache_mb: 256,
            raft_addr: None,
            cluster_id: "flotilla".into(),
            cluster_secret: None,
            initial_members: Vec::new(),
            peers: BTreeMap::new(),
        }
    }
}

/// Why a configuration was refused. Displays as one line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: String,
    /// Line of the problem in the file, when known.
    pub line: Option<usize>,
    /// The key at fault, when there is one.
    pub key: Option<String>,
    pub problem: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if let Some(key) = &self.key {
            write!(f, ": key `{key}`")?;
        }
        write!(f, ": {}", self.problem)
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Reads, parses and validates a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: file.clone(),
            line: None,
            key: None,
            problem: format!("cannot read the file: {e}"),
        })?;
        Config::parse(&file, &text)
    }

    /// Parses and validates configuration text; `file` names it in errors.
    pub fn parse(file: &str, text: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| toml_error(file, text, &e))?;
        config.validate().map_err(|(key, problem)| ConfigError {
            file: file.to_string(),
            line: line_of_key(text, key),
            key: Some(key.to_string()),
            problem,
        })?;
        Ok(config)
    }

    /// Checks values against each other; the error names the key at fault.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if !(1..=MAX_NODE_ID).contains(&self.node_id) {
            return Err(("node_id", format!("must be between 1 and {MAX_NODE_ID}")));
        }
        if self.data_dir.as_os_str().is_empty() {
            return Err(("data_dir", "must not be empty".into()));
        }
        if self.password.as_deref() == Some("") {
            return Err((
                "password",
                "must not be empty (leave the key out for no password)".into(),
            ));
        }
        check_split_keys(&self.split_keys).map_err(|e| ("split_keys", e))?;
        if !(MIN_RANGE_MAX_BYTES..=MAX_RANGE_MAX_BYTES).contains(&self.range_max_bytes) {
            return Err((
                "range_max_bytes",
                format!("must be between {MIN_RANGE_MAX_BYTES} and {MAX_RANGE_MAX_BYTES}"),
            ));
        }
        if self.max_value_bytes == 0 || self.max_value_bytes > MAX_VALUE_BYTES_LIMIT {
            return Err((
                "max_value_bytes",
                format!("must be between 1 and {MAX_VALUE_BYTES_LIMIT}"),
            ));
        }
        if self.max_clients == 0 {
            return Err(("max_clients", "must be at least 1".into()));
        }
        if !(1..=60_000).contains(&self.tick_interval_ms) {
            return Err(("tick_interval_ms", "must be between 1 and 60000".into()));
        }
        if self.heartbeat_ticks == 0 {
            return Err(("heartbeat_ticks", "must be at least 1".into()));
        }
        if self.heartbeat_ticks >= self.election_ticks {
            return Err((
                "heartbeat_ticks",
                format!(
                    "must be less than election_ticks ({} >= {})",
                    self.heartbeat_ticks, self.election_ticks
                ),
            ));
        }
        if self.request_timeout_ms == 0 {
            return Err(("request_timeout_ms", "must be at least 1".into()));
        }
        if self.max_unapplied_entries == 0 {
            return Err(("max_unapplied_entries", "must be at least 1".into()));
        }
        if self.log_compaction_entries < 2 {
            return Err(("log_compaction_entries", "must be at least 2".into()));
        }
        if self.cache_mb == 0 {
            return Err(("cache_mb", "must be at least 1".into()));
        }
        self.validate_cluster()
    }

    fn validate_cluster(&self) -> Result<(), (&'static str, String)> {
        if self.cluster_id.is_empty() {
            return Err(("cluster_id", "must not be empty".into()));
        }
        let peers = self.peer_addrs().map_err(|e| ("peers", e))?;
        if peers.is_empty() {
            if self.raft_addr.is_some() {
                return Err(("raft_addr", "is set but no peers are listed".into()));
            }
            if !self.initial_members.is_empty() && self.initial_members != [self.node_id] {
                return Err((
                    "initial_members",
                    "lists other nodes but no peers are listed".into(),
                ));
            }
            return Ok(());
        }
        if self.raft_addr.is_none() {
            return Err(("raft_addr", "is required when peers are listed".into()));
        }
        if self.cluster_secret.as_deref().unwrap_or("").is_empty() {
            return Err((
                "cluster_secret",
                "is required (and must not be empty) when peers are listed".into(),
            ));
        }
        if !peers.contains_key(&NodeId(self.node_id)) {
            return Err((
                "peers",
                format!(
                    "must list this node ({}) with its raft address",
                    self.node_id
                ),
            ));
        }
        if let Some(m) = self
            .initial_members
            .iter()
            .find(|m| !peers.contains_key(&NodeId(**m)))
        {
            return Err(("initial_members", format!("node {m} is not in peers")));
        }
        Ok(())
    }

    /// The raft address of every node of the cluster, by node id.
    pub fn peer_addrs(&self) -> Result<HashMap<NodeId, SocketAddr>, String> {
        let mut out = HashMap::new();
        for (id, addr) in &self.peers {
            match id.parse::<u64>() {
                Ok(n) if (1..=MAX_NODE_ID).contains(&n) => {
                    out.insert(NodeId(n), *addr);
                }
                _ => {
                    return Err(format!(
                        "{id:?} is not a node id (an integer from 1 to {MAX_NODE_ID})"
                    ))
                }
            }
        }
        Ok(out)
    }

    /// What the actors need to start this node.
    pub fn node_settings(&self) -> NodeSettings {
        NodeSettings {
            node: NodeId(self.node_id),
            data_dir: self.data_dir.clone(),
            split_keys: self
                .split_keys
                .iter()
                .map(|k| k.as_bytes().to_vec())
                .collect(),
            initial_members: if self.initial_members.is_empty() {
                vec![NodeId(self.node_id)]
            } else {
                self.initial_members.iter().map(|&n| NodeId(n)).collect()
            },
            // A quarter for the Store's cache of values read, the rest for sled's pages.
            cache_bytes: (self.cache_mb << 20) - (self.cache_mb << 18),
            durable: true,
            raft: RaftSettings {
                tick_interval: Duration::from_millis(self.tick_interval_ms),
                election_ticks: self.election_ticks,
                heartbeat_ticks: self.heartbeat_ticks,
                max_unapplied_entries: self.max_unapplied_entries,
                log_compaction_entries: self.log_compaction_entries,
                ..RaftSettings::default()
            },
            store: StoreSettings {
                request_timeout: Duration::from_millis(self.request_timeout_ms),
                value_cache_bytes: (self.cache_mb << 18) as usize,
                range_max_bytes: self.range_max_bytes,
                ..StoreSettings::default()
            },
        }
    }
}

/// Turns toml's multi-line error into one line with the file, line and key.
fn toml_error(file: &str, text: &str, e: &toml::de::Error) -> ConfigError {
    let message = e.message().trim().replace('\n', " ");
    let line = e
        .span()
        .map(|span| text[..span.start.min(text.len())].matches('\n').count() + 1);
    let key = if let Some(rest) = message.strip_prefix("unknown field `") {
        rest.split('`').next().map(str::to_string)
    } else {
        line.and_then(|l| text.lines().nth(l - 1))
            .and_then(|l| l.split_once('='))
            .map(|(k, _)| k.trim().to_string())
            .filter(|k| !k.is_empty() && !k.starts_with('#'))
    };
    ConfigError {
        file: file.to_string(),
        line,
        key,
        problem: message,
    }
}

/// The line where `key` is set, if it is.
fn line_of_key(text: &str, key: &str) -> Option<usize> {
    text.lines()
        .position(|l| l.split_once('=').is_some_and(|(k, _)| k.trim() == key))
        .map(|i| i + 1)
}

/// Checks the keys at which the key space is cut into ranges on a new data directory (the
/// config's and a scenario's `split_keys`).
pub fn check_split_keys(keys: &[String]) -> Result<(), String> {
    for (i, w) in keys.windows(2).enumerate() {
        if w[0] >= w[1] {
            return Err(format!(
                "must be in strictly increasing order; {:?} (entry {}) is not before {:?}",
                w[0],
                i + 1,
                w[1]
            ));
        }
    }
    if keys.iter().any(String::is_empty) {
        return Err("must not contain an empty key".into());
    }
    if let Some(k) = keys.iter().find(|k| k.len() > MAX_SPLIT_KEY_BYTES) {
        return Err(format!(
            "a key of {} bytes; a range's bounds are at most {MAX_SPLIT_KEY_BYTES} bytes",
            k.len()
        ));
    }
    keys.iter()
        .find_map(|k| hash_tag_refusal(k.as_bytes()))
        .map_or(Ok(()), Err)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        Config::parse("test.toml", text).unwrap_err().to_string()
    }

    #[test]
    fn the_shipped_single_node_file_is_the_default() {
        let text = include_str!("../config/single-node.toml");
        assert_eq!(
            Config::parse("single-node.toml", text).unwrap(),
            Config::default()
        );
    }

    #[test]
    fn an_empty_file_gives_the_defaults() {
        assert_eq!(Config::parse("x.toml", "").unwrap(), Config::default());
    }

    #[test]
    fn errors_name_the_file_line_and_key() {
        assert_eq!(
            err("node_id = 2\nbogus = 1\n"),
            "test.toml:2: key `bogus`: unknown field `bogus`, expected one of `node_id`, `data_dir`, `client_addr`, `password`, `split_keys`, `range_max_bytes`, `max_value_bytes`, `max_clients`, `tick_interval_ms`, `election_ticks`, `heartbeat_ticks`, `request_timeout_ms`, `max_unapplied_entries`, `log_compaction_entries`, `cache_mb`, `raft_addr`, `cluster_id`, `cluster_secret`, `initial_members`, `peers`"
        );
        assert_eq!(
            err("tick_interval_ms = \"fast\"\n"),
            "test.toml:1: key `tick_interval_ms`: invalid type: string \"fast\", expected u64"
        );
        assert_eq!(
            err("client_addr = \"nowhere\"\n"),
            "test.toml:1: key `client_addr`: invalid socket address syntax"
        );
        let syntax = err("node_id = = 3\n");
        assert!(syntax.starts_with("test.toml:1: "), "{syntax}");
        assert!(!syntax.contains('\n'));
    }

    #[test]
    fn inconsistent_values_are_refused() {
        assert_eq!(
            err("election_ticks = 3\nheartbeat_ticks = 3\n"),
            "test.toml:2: key `heartbeat_ticks`: must be less than election_ticks (3 >= 3)"
        );
        assert_eq!(
            err("split_keys = [\"m\", \"c\"]\n"),
            "test.toml:1: key `split_keys`: must be in strictly increasing order; \"m\" (entry 1) is not before \"c\""
        );
        assert_eq!(
            err("node_id = 0"),
            "test.toml:1: key `node_id`: must be between 1 and 4294967295"
        );
        assert_eq!(
            err("split_keys = [\"m\", \"u{1}:a\"]\n"),
            "test.toml:1: key `split_keys`: \"u{1}:a\" falls among the keys of hash tag \"u{1}\", which stay in one range; cut at the tag instead"
        );
        let long = format!("split_keys = [\"{}\"]", "k".repeat(4097));
        assert!(
            err(&long).ends_with("a key of 4097 bytes; a range's bounds are at most 4096 bytes")
        );
        assert!(Config::parse("x", "split_keys = [\"u{\", \"u{1}\", \"v{}x\"]").is_ok());
        assert!(err("max_value_bytes = 0").contains("key `max_value_bytes`"));
        let bound = "key `range_max_bytes`: must be between 4096 and 536870912";
        assert!(err("range_max_bytes = 4095").contains(bound));
        assert!(err("range_max_bytes = 536870913").contains(bound));
        assert!(Config::parse("x", "range_max_bytes = 4096").is_ok());
    }
}
