//! Authorization: which client identities may do what to which buckets.
//!
//! Owns: the ordered `[[authz]]` rules compiled into a [`Policy`], glob matching of
//! identities and buckets, and the [`Decision`] the connection and request layers act
//! on. JWT / RFC 8705 token binding will live beside it in this module tree.
//!
//! Must not touch: certificates (it receives an already-built
//! [`Identity`](crate::tls::identity::Identity)), configuration parsing (config builds
//! [`Rule`]s from its own types), HTTP statuses and metric labels (callers map a
//! [`Decision::Denied`] to 403 / a refused connection). It does no I/O and keeps no
//! state beyond the compiled rules, so it can be shared read-only by every worker.
//!
//! # Semantics: first match wins
//!
//! Rules are tried in configuration order. The **first rule whose identity pattern
//! matches** the client decides, and it decides alone: if that rule does not cover the
//! requested bucket or access, the request is denied even if a later rule would have
//! allowed it. This is how HAProxy ACL chains and Envoy RBAC-style ordered filters are
//! read by operators, and it makes a rule's effect visible without reading the rest
//! of the file. Put narrow identities before broad ones. No matching rule means denied.
//!
//! # Patterns
//!
//! Identity and bucket patterns are case-sensitive globs in which `*` matches any run
//! of characters, `/` included (`spiffe://lake.example/*` matches every workload of
//! that trust domain). There is no single-character wildcard: `?` is literal, because
//! URIs may contain it. An identity pattern of the form `x5t#S256:<thumbprint>` pins one
//! certificate: it is compared exactly (never as a glob) with the client certificate's
//! RFC 8705 thumbprint.

use std::fmt;
use std::str::FromStr;

use wildmatch::WildMatchPattern;

use crate::tls::identity::Identity;

/// The prefix of an identity pattern that pins a certificate by thumbprint.
pub const THUMBPRINT_PREFIX: &str = "x5t#S256:";

/// wildmatch always has a single-character wildcard; we give it a noncharacter that no
/// identity or bucket should contain, so `?` stays literal. Patterns that do contain it
/// are compiled to [`Matcher::Never`] (fail closed).
const NO_SINGLE_WILDCARD: char = '\u{FFFF}';

type Glob = WildMatchPattern<'*', NO_SINGLE_WILDCARD>;

/// An operation on a bucket that a rule may grant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    /// GET / HEAD of an object.
    Read,
    /// PUT of an object.
    Write,
    /// DELETE of an object.
    Delete,
    /// ListObjectsV2 on a bucket.
    List,
}

impl Access {
    /// Every access kind, in the order the configuration documents them.
    pub const ALL: [Access; 4] = [Access::Read, Access::Write, Access::Delete, Access::List];

    /// The configuration spelling: `"read"`, `"write"`, `"delete"`, `"list"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Access::Read => "read",
            Access::Write => "write",
            Access::Delete => "delete",
            Access::List => "list",
        }
    }
}

impl fmt::Display for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An access string that is not one of `read`, `write`, `delete`, `list`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown access {0:?}: expected one of \"read\", \"write\", \"delete\", \"list\"")]
pub struct ParseAccessError(pub String);

impl FromStr for Access {
    type Err = ParseAccessError;

    /// Parses the exact configuration spelling (lowercase), like the TOML loader.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Access::ALL
            .into_iter()
            .find(|a| a.as_str() == s)
            .ok_or_else(|| ParseAccessError(s.to_owned()))
    }
}

/// A compiled pattern. Patterns without `*` are compared exactly, which is both faster
/// and immune to wildcard surprises.
#[derive(Clone, Debug)]
enum Matcher {
    Exact(String),
    Glob(Glob),
    Never,
}

impl Matcher {
    fn new(pattern: &str) -> Self {
        if pattern.contains(NO_SINGLE_WILDCARD) {
            Matcher::Never
        } else if pattern.contains('*') {
            Matcher::Glob(Glob::new(pattern))
        } else {
            Matcher::Exact(pattern.to_owned())
        }
    }

    fn matches(&self, s: &str) -> bool {
        match self {
            Matcher::Exact(p) => p == s,
            Matcher::Glob(g) => g.matches(s),
            Matcher::Never => false,
        }
    }
}

/// One `[[authz]]` entry: an identity pattern, the bucket patterns and access it grants.
#[derive(Clone, Debug)]
pub struct Rule {
    identity: String,
    identity_matcher: IdentityMatcher,
    buckets: Vec<String>,
    bucket_matchers: Vec<Matcher>,
    access: Vec<Access>,
}

/// How a rule's identity pattern is applied.
#[derive(Clone, Debug)]
enum IdentityMatcher {
    /// `x5t#S256:<thumbprint>`: exact comparison with the certificate thumbprint.
    Thumbprint(String),
    /// Anything else: a glob over the identity's candidate names.
    Names(Matcher),
}

impl Rule {
    /// Compiles a rule from the configuration fields (`identity`, `buckets`, `access`).
    pub fn new(identity: &str, buckets: Vec<String>, access: Vec<Access>) -> Self {
        let identity_matcher = match identity.strip_prefix(THUMBPRINT_PREFIX) {
            Some(thumb) => IdentityMatcher::Thumbprint(thumb.to_owned()),
            None => IdentityMatcher::Names(Matcher::new(identity)),
        };
        let bucket_matchers = buckets.iter().map(|b| Matcher::new(b)).collect();
        Rule {
            identity: identity.to_owned(),
            identity_matcher,
            buckets,
            bucket_matchers,
            access,
        }
    }

    /// The identity pattern as configured.
    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// The bucket patterns as configured.
    pub fn buckets(&self) -> &[String] {
        &self.buckets
    }

    /// The access kinds this rule grants.
    pub fn access(&self) -> &[Access] {
        &self.access
    }

    /// Whether this rule's identity pattern matches the client.
    pub fn matches_identity(&self, id: &Identity) -> bool {
        match &self.identity_matcher {
            IdentityMatcher::Thumbprint(t) => *t == id.thumbprint,
            IdentityMatcher::Names(m) => id.candidates().any(|name| m.matches(name)),
        }
    }

    /// Whether one of this rule's bucket patterns matches `bucket`.
    pub fn covers_bucket(&self, bucket: &str) -> bool {
        self.bucket_matchers.iter().any(|m| m.matches(bucket))
    }

    /// Whether this rule grants `access`.
    pub fn grants(&self, access: Access) -> bool {
        self.access.contains(&access)
    }
}

/// The outcome of an authorization check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Allowed by the rule at this index (0-based, configuration order).
    Allowed {
        /// Index of the deciding rule in [`Policy::rules`].
        rule: usize,
    },
    /// Denied; the reason is for logs, never for the client.
    Denied {
        /// Which rule decided (or that none matched) and what it lacked.
        reason: String,
    },
}

impl Decision {
    /// True for [`Decision::Allowed`].
    pub fn is_allowed(&self) -> bool {
        matches!(self, Decision::Allowed { .. })
    }
}

/// The ordered authorization rules. See the module documentation for the semantics.
#[derive(Clone, Debug, Default)]
pub struct Policy {
    rules: Vec<Rule>,
}

impl Policy {
    /// A policy of these rules, tried in this order.
    pub fn new(rules: Vec<Rule>) -> Self {
        Policy { rules }
    }

    /// The rules, in evaluation order.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// The first rule whose identity pattern matches any of the identity's candidate
    /// names (or, for an `x5t#S256:` rule, exactly the certificate thumbprint), with
    /// its index. Later rules are never consulted once one matches.
    pub fn matching_rule(&self, id: &Identity) -> Option<(usize, &Rule)> {
        self.rules
            .iter()
            .enumerate()
            .find(|(_, r)| r.matches_identity(id))
    }

    /// Connection-level gate (forward mode, where requests are opaque): allowed if some
    /// rule matches the identity, whatever its buckets and access.
    pub fn admits(&self, id: &Identity) -> Decision {
        match self.matching_rule(id) {
            Some((i, _)) => Decision::Allowed { rule: i },
            None => no_rule(id),
        }
    }

    /// Request-level check: the first rule matching the identity decides. Allowed if
    /// one of its bucket globs matches `bucket` and its access list contains `access`;
    /// otherwise denied with a reason naming the rule index and what was missing.
    pub fn check(&self, id: &Identity, bucket: &str, access: Access) -> Decision {
        let Some((i, rule)) = self.matching_rule(id) else {
            return no_rule(id);
        };
        let bucket_ok = rule.covers_bucket(bucket);
        let access_ok = rule.grants(access);
        if bucket_ok && access_ok {
            return Decision::Allowed { rule: i };
        }
        let missing = match (bucket_ok, access_ok) {
            (false, false) => format!("neither bucket {bucket:?} nor {access} access"),
            (false, true) => format!("bucket {bucket:?}"),
            _ => format!("{access} access"),
        };
        Decision::Denied {
            reason: format!(
                "authz rule {i} (identity {:?}) matched {:?} but does not grant {missing}",
                rule.identity,
                id.name()
            ),
        }
    }
}

fn no_rule(id: &Identity) -> Decision {
    Decision::Denied {
        reason: format!("no authz rule matches identity {:?}", id.name()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ident(spiffe: Option<&str>, dns: &[&str], cn: Option<&str>) -> Identity {
        Identity {
            spiffe: spiffe.map(str::to_owned),
            uris: spiffe.into_iter().map(str::to_owned).collect(),
            dns: dns.iter().map(|s| (*s).to_owned()).collect(),
            cn: cn.map(str::to_owned),
            thumbprint: "47DEQpj8HBSa-_TImW-5JCeuQeRkm5NMpJWZG3hSuFU".to_owned(),
            serial: "01".to_owned(),
            not_after: 0,
            issuer: "CN=lab CA".to_owned(),
        }
    }

    fn rule(identity: &str, buckets: &[&str], access: &[Access]) -> Rule {
        Rule::new(
            identity,
            buckets.iter().map(|s| (*s).to_owned()).collect(),
            access.to_vec(),
        )
    }

    fn trainer() -> Identity {
        ident(
            Some("spiffe://lake.example/trainer/7"),
            &["trainer-7.lake.example"],
            Some("trainer-7"),
        )
    }

    #[test]
    fn access_parses_and_prints() {
        for a in Access::ALL {
            assert_eq!(a.as_str().parse::<Access>(), Ok(a));
            assert_eq!(a.to_string(), a.as_str());
        }
        let err = "Read".parse::<Access>().expect_err("case-sensitive");
        assert!(err.to_string().contains("\"Read\""));
        assert!("".parse::<Access>().is_err());
    }

    #[test]
    fn glob_star_spans_slashes() {
        let p = Policy::new(vec![rule(
            "spiffe://lake.example/*",
            &["datasets"],
            &[Access::Read],
        )]);
        assert_eq!(
            p.check(&trainer(), "datasets", Access::Read),
            Decision::Allowed { rule: 0 }
        );
        let deep = ident(Some("spiffe://lake.example/a/b/c"), &[], None);
        assert!(p.admits(&deep).is_allowed());
        let other = ident(Some("spiffe://other.example/trainer/7"), &[], None);
        assert!(!p.admits(&other).is_allowed());
        // The glob must match the whole name, not a prefix.
        let p = Policy::new(vec![rule(
            "spiffe://lake.example/trainer",
            &["*"],
            &[Access::Read],
        )]);
        assert!(!p.admits(&trainer()).is_allowed());
    }

    #[test]
    fn question_mark_is_literal() {
        let p = Policy::new(vec![rule("trainer-?", &["*"], &[Access::Read])]);
        assert!(!p.admits(&trainer()).is_allowed());
        let q = ident(None, &[], Some("trainer-?"));
        assert!(p.admits(&q).is_allowed());
        let p = Policy::new(vec![rule("*-?", &["*"], &[Access::Read])]);
        assert!(!p.admits(&trainer()).is_allowed());
        assert!(p.admits(&q).is_allowed());
    }

    #[test]
    fn matches_dns_and_cn_candidates() {
        let p = Policy::new(vec![rule("*.lake.example", &["*"], &[Access::List])]);
        assert_eq!(p.admits(&trainer()), Decision::Allowed { rule: 0 });
        let p = Policy::new(vec![rule("trainer-7", &["*"], &[Access::List])]);
        assert_eq!(p.admits(&trainer()), Decision::Allowed { rule: 0 });
        // Case-sensitive.
        let p = Policy::new(vec![rule("Trainer-7", &["*"], &[Access::List])]);
        assert!(!p.admits(&trainer()).is_allowed());
    }

    #[test]
    fn bucket_globs() {
        let p = Policy::new(vec![rule(
            "*",
            &["datasets-*", "models"],
            &[Access::Read, Access::List],
        )]);
        let id = trainer();
        assert!(p.check(&id, "datasets-2024", Access::Read).is_allowed());
        assert!(p.check(&id, "datasets-", Access::List).is_allowed());
        assert!(p.check(&id, "models", Access::Read).is_allowed());
        assert!(!p.check(&id, "models-x", Access::Read).is_allowed());
        assert!(!p.check(&id, "datasets", Access::Read).is_allowed());
    }

    #[test]
    fn first_match_decides_even_when_it_denies() {
        let p = Policy::new(vec![
            rule(
                "spiffe://lake.example/trainer/*",
                &["datasets"],
                &[Access::Read],
            ),
            rule(
                "spiffe://lake.example/*",
                &["*"],
                &[Access::Read, Access::Write],
            ),
        ]);
        let id = trainer();
        assert_eq!(p.matching_rule(&id).map(|(i, _)| i), Some(0));
        assert_eq!(
            p.check(&id, "datasets", Access::Read),
            Decision::Allowed { rule: 0 }
        );
        // Rule 1 would allow this, but rule 0 matched first and decides.
        let Decision::Denied { reason } = p.check(&id, "datasets", Access::Write) else {
            panic!("expected denial");
        };
        assert!(reason.contains("rule 0"), "{reason}");
        assert!(reason.contains("write access"), "{reason}");
        assert!(!reason.contains("bucket"), "{reason}");

        let Decision::Denied { reason } = p.check(&id, "models", Access::Read) else {
            panic!("expected denial");
        };
        assert!(
            reason.contains("rule 0") && reason.contains("bucket \"models\""),
            "{reason}"
        );

        let Decision::Denied { reason } = p.check(&id, "models", Access::Delete) else {
            panic!("expected denial");
        };
        assert!(
            reason.contains("neither bucket \"models\" nor delete"),
            "{reason}"
        );

        // Another workload skips rule 0 and is decided by rule 1.
        let ingest = ident(Some("spiffe://lake.example/ingest"), &[], None);
        assert_eq!(
            p.check(&ingest, "models", Access::Write),
            Decision::Allowed { rule: 1 }
        );
        assert_eq!(p.admits(&ingest), Decision::Allowed { rule: 1 });
    }

    #[test]
    fn thumbprint_rules_are_exact() {
        let id = trainer();
        let pinned = format!("{THUMBPRINT_PREFIX}{}", id.thumbprint);
        let p = Policy::new(vec![
            rule("spiffe://nobody/*", &["*"], &[Access::Read]),
            rule(&pinned, &["private"], &[Access::Write]),
        ]);
        assert_eq!(
            p.check(&id, "private", Access::Write),
            Decision::Allowed { rule: 1 }
        );
        // A thumbprint pattern is never a glob...
        let p = Policy::new(vec![rule("x5t#S256:*", &["*"], &[Access::Read])]);
        assert!(!p.admits(&id).is_allowed());
        // ...and a glob never matches the thumbprint.
        let anon = ident(None, &[], None);
        let p = Policy::new(vec![rule("*", &["*"], &[Access::Read])]);
        assert!(!p.admits(&anon).is_allowed());
        let p = Policy::new(vec![rule(&pinned, &["*"], &[Access::Read])]);
        assert!(p.admits(&anon).is_allowed());
        // Another thumbprint does not match.
        let p = Policy::new(vec![rule(
            "x5t#S256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            &["*"],
            &[Access::Read],
        )]);
        assert!(!p.admits(&id).is_allowed());
    }

    #[test]
    fn no_rule_is_denied() {
        let id = trainer();
        let empty = Policy::new(vec![]);
        assert!(empty.matching_rule(&id).is_none());
        let Decision::Denied { reason } = empty.admits(&id) else {
            panic!("expected denial");
        };
        assert!(
            reason.contains("spiffe://lake.example/trainer/7"),
            "{reason}"
        );
        assert!(!empty.check(&id, "datasets", Access::Read).is_allowed());

        let p = Policy::new(vec![rule("spiffe://other/*", &["*"], &Access::ALL)]);
        assert!(matches!(
            p.check(&id, "datasets", Access::Read),
            Decision::Denied { reason } if reason.starts_with("no authz rule")
        ));
    }

    #[test]
    fn rule_accessors_and_fail_closed_patterns() {
        let r = rule("a*", &["b"], &[Access::Delete]);
        assert_eq!(r.identity(), "a*");
        assert_eq!(r.buckets(), ["b"]);
        assert_eq!(r.access(), [Access::Delete]);
        // A pattern containing the internal sentinel never matches, rather than letting
        // the sentinel act as a wildcard.
        let weird = format!("trainer{NO_SINGLE_WILDCARD}7");
        let p = Policy::new(vec![rule(&weird, &["*"], &[Access::Read])]);
        assert!(!p.admits(&ident(None, &[], Some("trainer-7"))).is_allowed());
        // Empty bucket list grants nothing.
        let p = Policy::new(vec![rule("*", &[], &Access::ALL)]);
        assert!(p.admits(&trainer()).is_allowed());
        assert!(!p.check(&trainer(), "datasets", Access::Read).is_allowed());
    }
}
