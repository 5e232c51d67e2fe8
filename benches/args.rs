//! Command-line options shared by the bench tools (`--key value` pairs and flags).

/// The tool's arguments after the subcommand.
pub struct Args(pub Vec<String>);

#[allow(dead_code)]
impl Args {
    /// The value after `k`, if present.
    pub fn opt(&self, k: &str) -> Option<String> {
        let i = self.0.iter().position(|a| a == k)?;
        self.0.get(i + 1).cloned()
    }
    /// The value after `k`; panics naming `k` when absent.
    pub fn req(&self, k: &str) -> String {
        self.opt(k)
            .unwrap_or_else(|| panic!("missing required option {k}"))
    }
    /// Whether the flag `k` is present.
    pub fn flag(&self, k: &str) -> bool {
        self.0.iter().any(|a| a == k)
    }
    /// A size after `k` ("4G", "64MiB", "1000"), or `default`.
    pub fn num(&self, k: &str, default: u64) -> u64 {
        self.opt(k).map(|v| parse_size(&v)).unwrap_or(default)
    }
}

/// A size in binary units: "4G" and "4GiB" both mean 4 × 2^30, as in the config file.
pub fn parse_size(s: &str) -> u64 {
    parse_size::Config::new()
        .with_binary()
        .parse_size(s.trim())
        .unwrap_or_else(|e| panic!("bad size {s:?}: {e}"))
}
