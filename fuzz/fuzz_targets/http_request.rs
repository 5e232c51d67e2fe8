//! Feeds arbitrary bytes to the HTTP request codec as a pipelined stream: each head
//! goes to `parse_head`, its body to `BodyDecoder::step` in a loop.
//!
//! Checked beyond "never panics": every step stays inside its input and makes
//! progress or stops, and decoding the body from one buffer gives the same bytes,
//! the same end and the same verdict as feeding it in two pieces (split where the
//! first input byte says), which is how the engine sees it arrive.
#![no_main]

use lakegate::proto::http::{parse_head, BodyDecoder, HttpError, RequestHead};
use libfuzzer_sys::fuzz_target;

/// Small enough that the fuzzer reaches the 431 path often.
const MAX_HEAD: usize = 2048;

/// Decodes a body from `input` as one buffer: body bytes and input consumed, or the
/// error. Asserts the step contract on the way.
fn decode_whole(head: &RequestHead, input: &[u8]) -> Result<(Vec<u8>, usize, bool), HttpError> {
    let mut dec = BodyDecoder::for_request(head);
    let mut body = Vec::new();
    let mut pos = 0;
    loop {
        let rest = &input[pos..];
        let step = dec.step(rest)?;
        assert!(step.consumed <= rest.len(), "consumed beyond input");
        assert!(step.data.start <= step.data.end, "inverted range");
        assert!(step.data.end <= step.consumed, "data beyond consumed");
        assert_eq!(step.done, dec.is_done());
        body.extend_from_slice(&rest[step.data.clone()]);
        pos += step.consumed;
        assert_eq!(dec.delivered(), body.len() as u64);
        if step.done {
            assert_eq!(dec.remaining(), Some(0));
            return Ok((body, pos, true));
        }
        if step.consumed == 0 {
            // No progress is only allowed when the input is exhausted.
            assert!(rest.is_empty(), "stalled with {} bytes left", rest.len());
            return Ok((body, pos, false));
        }
    }
}

/// The same, with the input arriving in two pieces and unconsumed bytes carried over.
fn decode_split(
    head: &RequestHead,
    input: &[u8],
    at: usize,
) -> Result<(Vec<u8>, usize, bool), HttpError> {
    let mut dec = BodyDecoder::for_request(head);
    let mut body = Vec::new();
    let mut pending: Vec<u8> = Vec::new();
    let mut total = 0;
    for piece in [&input[..at], &input[at..]] {
        pending.extend_from_slice(piece);
        loop {
            let step = dec.step(&pending)?;
            body.extend_from_slice(&pending[step.data.clone()]);
            pending.drain(..step.consumed);
            total += step.consumed;
            if step.done {
                return Ok((body, total, true));
            }
            if step.consumed == 0 {
                break;
            }
        }
    }
    Ok((body, total, false))
}

fuzz_target!(|data: &[u8]| {
    let split_hint = data.first().copied().unwrap_or(0) as usize;
    let mut buf = data;
    loop {
        let (head, n) = match parse_head(buf, MAX_HEAD) {
            Ok(Some(parsed)) => parsed,
            Ok(None) => {
                assert!(buf.len() < MAX_HEAD, "incomplete head past the limit");
                return;
            }
            Err(_) => return,
        };
        assert!(n > 0 && n <= buf.len() && n <= MAX_HEAD, "head length {n}");
        // A head accepted from the stream is accepted the same way on its own.
        assert_eq!(parse_head(&buf[..n], MAX_HEAD), Ok(Some((head.clone(), n))));
        buf = &buf[n..];

        let whole = decode_whole(&head, buf);
        let at = split_hint % (buf.len() + 1);
        let split = decode_split(&head, buf, at);
        match (&whole, &split) {
            (Ok(w), Ok(s)) => assert_eq!(w, s, "split at {at} changed the body"),
            (Err(_), Err(_)) => {}
            _ => panic!("split at {at} changed the verdict: {whole:?} vs {split:?}"),
        }
        match whole {
            Ok((_, used, true)) => buf = &buf[used..],
            _ => return,
        }
    }
});
