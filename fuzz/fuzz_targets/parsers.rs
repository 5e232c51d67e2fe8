//! The parsers of bytes an attacker (or a broken upstream) controls, other than the
//! request head and the TLS records (their own targets): S3 XML request bodies
//! (CompleteMultipartUpload, DeleteObjects, CreateBucket), a JWKS document, and what
//! the s3 backend reads from its upstream (the response head, the XML results it
//! rewrites for the client). None may panic, and each bound the parser promises holds.
#![no_main]

use lakegate::authz::token::Jwks;
use lakegate::backend::s3::{parse_response_head, rewrite_xml, KeyMap};
use lakegate::proto::s3::{
    parse_complete, parse_create_bucket, parse_delete, MAX_DELETE_KEYS, MAX_PARTS,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(parts) = parse_complete(data) {
        assert!(!parts.is_empty() && parts.len() <= MAX_PARTS as usize);
    }
    if let Ok(d) = parse_delete(data) {
        assert!(!d.objects.is_empty() && d.objects.len() <= MAX_DELETE_KEYS);
    }
    let _ = parse_create_bucket(data);
    let _ = Jwks::parse(data);
    if let Ok(Some((_, used))) = parse_response_head(data) {
        assert!(used <= data.len());
    }
    if let Ok(text) = std::str::from_utf8(data) {
        for prefix in ["", "tenant-0123456789abcdef/"] {
            let m = KeyMap {
                bucket: "datasets",
                prefix,
                key: "k",
            };
            let _ = rewrite_xml(text, &m);
        }
    }
});
