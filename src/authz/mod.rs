//! Authorization: which client identities may do what to which buckets.
//!
//! Owns: the ordered `[[authz]]` rules compiled into a [`Policy`], typed identity
//! patterns, glob matching of names and buckets, and the [`Decision`] the connection and
//! request layers act on. Bearer tokens (JWT, RFC 8705 binding) live beside it in
//! [`token`]; the admin endpoint's credential in [`admin`].
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
//! # Patterns name the name type they match
//!
//! A certificate carries names of several types, and an issuing CA vouches for each
//! only as what it is: a CN that *looks* like a SPIFFE ID is not one. So a pattern is
//! compared against exactly one name type, never against "any name":
//!
//! | pattern | compared with |
//! | --- | --- |
//! | `spiffe://td/path/*` | the certificate's one SPIFFE ID (URI SAN); never a CN or DNS name |
//! | `uri:https://…` | every URI SAN (SPIFFE or not) |
//! | `dns:*.lake.example` | every DNS SAN, ASCII case-insensitively (DNS names are) |
//! | `cn:ingest-01` | the subject's first CN |
//! | `x5t:<base64url SHA-256>` (or `x5t#S256:`) | the certificate's RFC 8705 thumbprint, exactly |
//! | `serial:<hex>` | the serial number (any trusted issuer), exactly, case- and `:`-insensitive |
//!
//! Name globs are case-sensitive (except `dns:`) and `*` matches any run of characters,
//! `/` and `.` included (`spiffe://lake.example/*` matches every workload of that trust
//! domain). There is no single-character wildcard: `?` is literal, because URIs may
//! contain it. A pattern with none of these forms is a configuration error that says
//! how to write it, so a rule written for the old "any name" matching cannot silently
//! change meaning.

use std::fmt;
use std::str::FromStr;

pub mod admin;
pub mod token;

use wildmatch::WildMatchPattern;

use crate::tls::identity::Identity;

/// The legacy prefix of an identity pattern that pins a certificate by thumbprint.
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
    /// ListObjectsV2 on a bucket; the bucket shows in ListBuckets.
    List,
    /// CreateBucket and DeleteBucket of a bucket the rule's patterns cover (so that a
    /// conformance suite may make its own); nothing about the objects in it.
    Manage,
}

impl Access {
    /// Every access kind, in the order the configuration documents them.
    pub const ALL: [Access; 5] = [
        Access::Read,
        Access::Write,
        Access::Delete,
        Access::List,
        Access::Manage,
    ];

    /// The object verbs: what a rule without an `access` list grants. `manage` is never
    /// implied; it must be named.
    pub const OBJECTS: [Access; 4] = [Access::Read, Access::Write, Access::Delete, Access::List];

    /// The configuration spelling: `"read"`, `"write"`, `"delete"`, `"list"`,
    /// `"manage"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Access::Read => "read",
            Access::Write => "write",
            Access::Delete => "delete",
            Access::List => "list",
            Access::Manage => "manage",
        }
    }
}

impl fmt::Display for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An access string that is not one of `read`, `write`, `delete`, `list`, `manage`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown access {0:?}: expected one of \"read\", \"write\", \"delete\", \"list\", \"manage\""
)]
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

/// The name type an identity pattern is compared with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NameType {
    /// The certificate's one SPIFFE ID (a `spiffe://` URI SAN).
    Spiffe,
    /// Any URI SAN.
    Uri,
    /// Any DNS SAN, case-insensitively.
    Dns,
    /// The subject's first common name.
    Cn,
    /// The RFC 8705 `x5t#S256` thumbprint of the whole certificate.
    Thumbprint,
    /// The serial number.
    Serial,
}

impl NameType {
    /// How `lakegate check` names it.
    pub fn describe(self) -> &'static str {
        match self {
            NameType::Spiffe => "SPIFFE ID (URI SAN)",
            NameType::Uri => "URI SAN",
            NameType::Dns => "DNS SAN (case-insensitive)",
            NameType::Cn => "subject CN",
            NameType::Thumbprint => "certificate SHA-256 thumbprint",
            NameType::Serial => "serial number",
        }
    }
}

/// An identity pattern that is not of a known name type, with how to write it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct PatternError(String);

/// A parsed identity pattern: a name type and what to compare with it.
#[derive(Clone, Debug)]
pub struct IdentityPattern {
    kind: NameType,
    matcher: Matcher,
}

impl IdentityPattern {
    /// Parse a configured identity pattern; the error says how to write a pattern of an
    /// explicit name type.
    pub fn parse(pattern: &str) -> Result<IdentityPattern, PatternError> {
        let (kind, rest) = if pattern.starts_with("spiffe://") {
            (NameType::Spiffe, pattern)
        } else if let Some(r) = pattern.strip_prefix("uri:") {
            (NameType::Uri, r)
        } else if let Some(r) = pattern.strip_prefix("dns:") {
            (NameType::Dns, r)
        } else if let Some(r) = pattern.strip_prefix("cn:") {
            (NameType::Cn, r)
        } else if let Some(r) = pattern
            .strip_prefix("x5t:")
            .or_else(|| pattern.strip_prefix(THUMBPRINT_PREFIX))
        {
            (NameType::Thumbprint, r)
        } else if let Some(r) = pattern.strip_prefix("serial:") {
            (NameType::Serial, r)
        } else {
            return Err(PatternError(format!(
                "{pattern:?} does not say which name type it matches; write \
                 \"spiffe://trust.domain/path\" for a SPIFFE ID, \"dns:{p}\" for a DNS SAN, \
                 \"cn:{p}\" for the subject CN, \"uri:…\" for a URI SAN, \"x5t:<base64url \
                 SHA-256>\" for one certificate or \"serial:<hex>\"",
                p = if pattern.is_empty() { "name" } else { pattern }
            )));
        };
        if rest.is_empty() {
            return Err(PatternError(format!(
                "{pattern:?}: expected a name after the prefix"
            )));
        }
        let matcher = match kind {
            NameType::Thumbprint => {
                let ok = rest.len() == 43
                    && rest
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
                if !ok {
                    return Err(PatternError(format!(
                        "{pattern:?}: expected 43 base64url characters (SHA-256 of the \
                         certificate DER, as `openssl x509 -outform der | openssl dgst \
                         -sha256 -binary | basenc --base64url` without padding)"
                    )));
                }
                Matcher::Exact(rest.to_owned())
            }
            NameType::Serial => {
                let hex: String = rest.chars().filter(|c| *c != ':').collect();
                if hex.is_empty() || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(PatternError(format!(
                        "{pattern:?}: expected the serial in hex, e.g. serial:0a1b2c"
                    )));
                }
                // The form Identity::serial has: lowercase, whole octets, no leading
                // zero octets (00c0ffee, C0:FF:EE and c0ffee name one serial).
                let digits = hex.to_ascii_lowercase();
                let digits = digits.trim_start_matches('0');
                let norm = match digits.len() {
                    0 => "00".to_owned(),
                    n if n % 2 == 1 => format!("0{digits}"),
                    _ => digits.to_owned(),
                };
                Matcher::Exact(norm)
            }
            NameType::Dns => Matcher::new(&rest.to_ascii_lowercase()),
            NameType::Spiffe | NameType::Uri | NameType::Cn => Matcher::new(rest),
        };
        Ok(IdentityPattern { kind, matcher })
    }

    /// The name type this pattern is compared with.
    pub fn name_type(&self) -> NameType {
        self.kind
    }

    /// Whether the client certificate's name of this pattern's type matches.
    pub fn matches(&self, id: &Identity) -> bool {
        let m = &self.matcher;
        match self.kind {
            NameType::Spiffe => id.spiffe.as_deref().is_some_and(|s| m.matches(s)),
            NameType::Uri => id.uris.iter().any(|u| m.matches(u)),
            // Identity keeps DNS names as the certificate spells them; the pattern is
            // lowercased once at parse time, each name here.
            NameType::Dns => id.dns.iter().any(|d| m.matches(&d.to_ascii_lowercase())),
            NameType::Cn => id.cn.as_deref().is_some_and(|c| m.matches(c)),
            NameType::Thumbprint => m.matches(&id.thumbprint),
            NameType::Serial => m.matches(&id.serial),
        }
    }
}

/// One `[[authz]]` entry: an identity pattern, the bucket patterns and access it grants.
#[derive(Clone, Debug)]
pub struct Rule {
    identity: String,
    pattern: IdentityPattern,
    buckets: Vec<String>,
    bucket_matchers: Vec<Matcher>,
    access: Vec<Access>,
}

impl Rule {
    /// Compiles a rule from the configuration fields (`identity`, `buckets`, `access`).
    pub fn new(
        identity: &str,
        buckets: Vec<String>,
        access: Vec<Access>,
    ) -> Result<Self, PatternError> {
        let pattern = IdentityPattern::parse(identity)?;
        let bucket_matchers = buckets.iter().map(|b| Matcher::new(b)).collect();
        Ok(Rule {
            identity: identity.to_owned(),
            pattern,
            buckets,
            bucket_matchers,
            access,
        })
    }

    /// The identity pattern as configured.
    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// The name type the identity pattern is compared with.
    pub fn name_type(&self) -> NameType {
        self.pattern.name_type()
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
        self.pattern.matches(id)
    }

    /// Whether one of this rule's bucket patterns matches `bucket`.
    pub fn covers_bucket(&self, bucket: &str) -> bool {
        self.bucket_matchers.iter().any(|m| m.matches(bucket))
    }

    /// Whether this rule grants `access`.
    pub fn grants(&self, access: Access) -> bool {
        self.access.contains(&access)
    }

    /// Whether this rule admits a forward-mode relay: a relay carries bytes both ways
    /// to an opaque upstream, so it needs both `read` and `write`; buckets have no
    /// meaning there (config refuses them).
    pub fn admits_relay(&self) -> bool {
        self.grants(Access::Read) && self.grants(Access::Write)
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

    /// The first rule whose identity pattern matches the client's name of the pattern's
    /// type, with its index. Later rules are never consulted once one matches.
    pub fn matching_rule(&self, id: &Identity) -> Option<(usize, &Rule)> {
        self.rules
            .iter()
            .enumerate()
            .find(|(_, r)| r.matches_identity(id))
    }

    /// Connection-level gate of forward mode, where requests are opaque: the first
    /// matching rule decides, and it must grant a relay ([`Rule::admits_relay`]), so a
    /// rule written to deny (`access = []`) denies here as it does for the store.
    pub fn admits(&self, id: &Identity) -> Decision {
        match self.matching_rule(id) {
            Some((i, r)) if r.admits_relay() => Decision::Allowed { rule: i },
            Some((i, rule)) => Decision::Denied {
                reason: format!(
                    "authz rule {i} (identity {:?}) matched {:?} but does not grant read and write (a relay)",
                    rule.identity,
                    id.name()
                ),
            },
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

    /// Whether the identity may do anything at all under these rules in `forward`
    /// or store mode: the question an open connection is re-judged by after a reload.
    pub fn admits_anything(&self, id: &Identity, forward: bool) -> bool {
        match self.matching_rule(id) {
            None => false,
            Some((_, r)) if forward => r.admits_relay(),
            Some((_, r)) => !r.access.is_empty() && !r.buckets.is_empty(),
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
            serial: "c0ffee".to_owned(),
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
        .expect("valid pattern")
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
        assert!(p.check(&deep, "datasets", Access::Read).is_allowed());
        let other = ident(Some("spiffe://other.example/trainer/7"), &[], None);
        assert!(p.matching_rule(&other).is_none());
        // The glob must match the whole name, not a prefix.
        let p = Policy::new(vec![rule(
            "spiffe://lake.example/trainer",
            &["*"],
            &Access::ALL,
        )]);
        assert!(p.matching_rule(&trainer()).is_none());
    }

    #[test]
    fn question_mark_is_literal() {
        let p = Policy::new(vec![rule("cn:trainer-?", &["*"], &Access::ALL)]);
        assert!(p.matching_rule(&trainer()).is_none());
        let q = ident(None, &[], Some("trainer-?"));
        assert!(p.matching_rule(&q).is_some());
        let p = Policy::new(vec![rule("cn:*-?", &["*"], &Access::ALL)]);
        assert!(p.matching_rule(&trainer()).is_none());
        assert!(p.matching_rule(&q).is_some());
    }

    #[test]
    fn a_pattern_matches_only_its_own_name_type() {
        // The attack of issue 9: URI SAN of an intruder, CN that looks like a trainer.
        let spoof = Identity {
            cn: Some("spiffe://lake.example/trainer/x".into()),
            ..ident(Some("spiffe://lake.example/intruder/x"), &[], None)
        };
        let p = Policy::new(vec![rule(
            "spiffe://lake.example/trainer/*",
            &["*"],
            &Access::ALL,
        )]);
        assert!(p.matching_rule(&spoof).is_none());
        assert!(!p.admits(&spoof).is_allowed());
        // A SPIFFE-looking CN alone is not a SPIFFE ID; nor is a DNS name.
        let cn_only = ident(None, &[], Some("spiffe://lake.example/trainer/x"));
        assert!(p.matching_rule(&cn_only).is_none());
        // A non-SPIFFE URI SAN is not the SPIFFE ID either.
        let uri = Identity {
            uris: vec!["spiffe-ish://lake.example/trainer/x".into()],
            ..ident(None, &[], None)
        };
        assert!(p.matching_rule(&uri).is_none());
        // Each explicit type reads its own name only.
        let id = trainer();
        for (pat, hit) in [
            ("dns:trainer-7.lake.example", true),
            ("dns:trainer-7", false),
            ("cn:trainer-7", true),
            ("cn:trainer-7.lake.example", false),
            ("cn:spiffe://lake.example/trainer/7", false),
            ("uri:spiffe://lake.example/trainer/*", true),
            ("uri:trainer-7", false),
            ("serial:c0ffee", true),
            ("serial:00:C0:FF:EE", true),
            ("serial:0c0ffee", true),
            ("serial:c0ffef", false),
        ] {
            let p = Policy::new(vec![rule(pat, &["*"], &Access::ALL)]);
            assert_eq!(p.matching_rule(&id).is_some(), hit, "{pat}");
        }
    }

    #[test]
    fn dns_patterns_are_case_insensitive_others_are_not() {
        let id = ident(None, &["Trainer-7.LAKE.example"], Some("Trainer-7"));
        for (pat, hit) in [
            ("dns:trainer-7.lake.example", true),
            ("dns:*.Lake.Example", true),
            ("dns:*.other.example", false),
            ("cn:trainer-7", false),
            ("cn:Trainer-7", true),
        ] {
            let p = Policy::new(vec![rule(pat, &["*"], &Access::ALL)]);
            assert_eq!(p.matching_rule(&id).is_some(), hit, "{pat}");
        }
    }

    #[test]
    fn untyped_and_malformed_patterns_are_refused_with_advice() {
        for bad in ["*", "trainer-7", "*.lake.example", "", "SPIFFE://x/y"] {
            let e = IdentityPattern::parse(bad).expect_err(bad).to_string();
            assert!(e.contains("dns:") && e.contains("cn:"), "{e}");
        }
        for bad in ["dns:", "cn:", "x5t:short", "x5t:*", "serial:xyz", "serial:"] {
            assert!(IdentityPattern::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(
            IdentityPattern::parse("dns:a.example").unwrap().name_type(),
            NameType::Dns
        );
    }

    #[test]
    fn bucket_globs() {
        let p = Policy::new(vec![rule(
            "spiffe://*",
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
        // Rule 0 grants read only: no relay in forward mode.
        assert!(!p.admits(&id).is_allowed());
    }

    #[test]
    fn a_deny_rule_denies_in_forward_mode_too() {
        let p = Policy::new(vec![
            rule("spiffe://lake.example/trainer/7", &["*"], &[]),
            rule("spiffe://lake.example/*", &["*"], &Access::ALL),
        ]);
        let Decision::Denied { reason } = p.admits(&trainer()) else {
            panic!("a first-match deny rule admitted the relay");
        };
        assert!(reason.contains("rule 0"), "{reason}");
        assert!(!p.admits_anything(&trainer(), true));
        assert!(!p.admits_anything(&trainer(), false));
        let other = ident(Some("spiffe://lake.example/other"), &[], None);
        assert!(p.admits(&other).is_allowed());
        assert!(p.admits_anything(&other, true));
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
        let short = format!("x5t:{}", id.thumbprint);
        let p = Policy::new(vec![rule(&short, &["*"], &Access::ALL)]);
        assert!(p.admits(&id).is_allowed());
        // A thumbprint pattern is never a glob.
        assert!(IdentityPattern::parse("x5t#S256:*").is_err());
        // Another thumbprint does not match.
        let p = Policy::new(vec![rule(
            "x5t:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            &["*"],
            &Access::ALL,
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
        let r = rule("cn:a*", &["b"], &[Access::Delete]);
        assert_eq!(r.identity(), "cn:a*");
        assert_eq!(r.name_type(), NameType::Cn);
        assert_eq!(r.buckets(), ["b"]);
        assert_eq!(r.access(), [Access::Delete]);
        // A pattern containing the internal sentinel never matches, rather than letting
        // the sentinel act as a wildcard.
        let weird = format!("cn:trainer{NO_SINGLE_WILDCARD}7");
        let p = Policy::new(vec![rule(&weird, &["*"], &[Access::Read])]);
        assert!(p
            .matching_rule(&ident(None, &[], Some("trainer-7")))
            .is_none());
        // Empty bucket list grants nothing.
        let p = Policy::new(vec![rule("spiffe://*", &[], &Access::ALL)]);
        assert!(!p.check(&trainer(), "datasets", Access::Read).is_allowed());
        assert!(!p.admits_anything(&trainer(), false));
    }
}
