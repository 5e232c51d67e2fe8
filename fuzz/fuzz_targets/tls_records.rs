//! lakegate's TLS 1.3 record layer after the handshake (`tls::record`), fed a stream of
//! records a fuzzer scripts: sealed correctly under the peer's key (so the fuzzer
//! reaches the inner parsing: padding, content types, alerts, KeyUpdate), sealed then
//! tampered, or raw bytes; the stream is delivered in fuzzer-chosen slices as reads off
//! a socket would be. It must never panic, never consume past its input, never hand out
//! more plaintext than the records carried, and once failed it stays failed.
#![no_main]

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use lakegate::tls::conn::{OutBuf, TlsError};
use lakegate::tls::record::{KeySchedule, RecordError, RecordLayer};
use libfuzzer_sys::fuzz_target;
use rustls::crypto::cipher::{AeadKey, Iv};
use rustls::ConnectionTrafficSecrets;

const KEY: [u8; 32] = [7; 32];
const IV: [u8; 12] = [9; 12];

fn secrets() -> ConnectionTrafficSecrets {
    ConnectionTrafficSecrets::Aes256Gcm {
        key: AeadKey::from(KEY),
        iv: Iv::from(IV),
    }
}

/// Every "next" secret is the same key: the harness then only restarts its sequence.
struct Fixed;

impl KeySchedule for Fixed {
    fn next_rx(&mut self) -> Result<ConnectionTrafficSecrets, RecordError> {
        Ok(secrets())
    }
    fn next_tx(&mut self) -> Result<ConnectionTrafficSecrets, RecordError> {
        Ok(secrets())
    }
}

fn seal(seq: &mut u64, outer: u8, inner: &[u8]) -> Vec<u8> {
    let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &KEY).unwrap());
    let len = (inner.len() + 16) as u16;
    let header = [outer, 3, 3, (len >> 8) as u8, len as u8];
    let mut nonce = IV;
    for (b, s) in nonce[4..].iter_mut().zip(seq.to_be_bytes()) {
        *b ^= s;
    }
    *seq += 1;
    let mut body = inner.to_vec();
    key.seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(header), &mut body)
        .unwrap();
    [&header[..], &body].concat()
}

fuzz_target!(|data: &[u8]| {
    let mut layer = RecordLayer::new(Fixed, (0, &secrets()), (0, &secrets()), 1 << 24).unwrap();
    let mut wire = Vec::new();
    let mut seq = 0u64;
    let mut carried = 0usize;
    let mut rest = data;
    let mut splits = Vec::new();
    while let [op, a, b, tail @ ..] = rest {
        let n = (usize::from(*a) << 8 | usize::from(*b)).min(tail.len());
        let (payload, tail) = tail.split_at(n);
        rest = tail;
        splits.push(usize::from(*a) * 7 + 1);
        match op % 4 {
            0 => {
                wire.extend(seal(&mut seq, 23, payload));
                carried += payload.len();
                if payload.len() == 6 && payload[..4] == [24, 0, 0, 1] && payload[5] == 22 {
                    seq = 0; // a KeyUpdate moves the peer to its next (here: same) key
                }
            }
            1 => {
                let mut r = seal(&mut seq, 23, payload);
                let i = usize::from(*b) % r.len();
                r[i] ^= 1 << (op >> 5);
                wire.extend(r);
            }
            2 => wire.extend_from_slice(payload),
            _ => {
                wire.extend(seal(&mut seq, op >> 2, payload));
                carried += payload.len();
            }
        }
    }
    let mut inb = Vec::new();
    let mut plain = OutBuf::default();
    let mut failed = false;
    let mut at = 0;
    for (i, cut) in splits.iter().cycle().enumerate() {
        if at >= wire.len() || i > 100_000 {
            break;
        }
        let end = (at + cut).min(wire.len());
        inb.extend_from_slice(&wire[at..end]);
        at = end;
        let mut out = OutBuf::default();
        match layer.open(&mut inb, &mut out, &mut plain) {
            Ok(p) => {
                assert!(!failed, "a failed layer accepted input again");
                assert!(p.consumed <= inb.len());
                inb.drain(..p.consumed);
            }
            Err(TlsError::Closed) => assert!(failed, "Closed before any failure"),
            Err(_) => {
                assert!(!failed, "a second distinct failure");
                failed = true;
            }
        }
        assert!(plain.as_slice().len() <= carried, "more plaintext than was sealed");
    }
    // Sending works on a live layer and is refused on a failed one.
    let mut out = OutBuf::default();
    assert_eq!(layer.seal(b"x", &mut out).is_ok(), !failed);
});
