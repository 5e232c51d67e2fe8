//! A request body's bytes found where they were decrypted, sans-IO. The shell decrypts
//! into one plaintext buffer; [`Gather::gather`] walks its unprocessed part through
//! the body's framing (Content-Length, chunked) and, for an `aws-chunked` upload, the
//! inner framing too, shows each run of body bytes to the caller once (the hashes) and
//! squeezes the framing out in place, so that the body bytes of the buffer end up as
//! one contiguous region the shell writes with one operation. [`hand_over`] then gives
//! that buffer to the write and keeps what follows the body (the next chunk's framing,
//! a pipelined request) in a fresh one; [`make_room`] keeps room at the buffer's end
//! for the next decryption.
//!
//! The store shell (`engine::store`) and `benches/hotpath` drive this same code, so the
//! benchmark measures the product's steps, not a copy of them.
//!
//! Must not touch: sockets, files, TLS state, the clock, counters.

use std::ops::Range;

use crate::proto::http::{BodyDecoder, HttpError};
use crate::proto::s3::{self, Code};

/// Why a body could not be decoded: the request is refused and its connection closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyFault {
    /// Its framing (chunked, or aws-chunked inside it) is broken.
    Malformed(HttpError),
    /// Bytes after the end of an aws-chunked body, inside the outer body.
    AfterInnerEnd,
}

impl From<&BodyFault> for s3::Error {
    /// The one mapping of a body fault to what the client is told.
    fn from(f: &BodyFault) -> s3::Error {
        match f {
            BodyFault::Malformed(e) => s3::Error::from(e).detail(e),
            BodyFault::AfterInnerEnd => s3::Error::msg(
                Code::InvalidRequest,
                "data after the end of the aws-chunked body",
            ),
        }
    }
}

/// What one [`Gather::gather`] found in the buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gathered {
    /// The body bytes of the buffer, now contiguous; `None` when there were none.
    pub region: Option<Range<usize>>,
    /// The body has ended; bytes after `start` belong to the next request.
    pub done: bool,
}

/// One request body's decoding state.
#[derive(Debug)]
pub struct Gather {
    outer: BodyDecoder,
}

impl Gather {
    /// A body framed as `outer` says (from the request head).
    pub fn new(outer: BodyDecoder) -> Gather {
        Gather { outer }
    }

    /// Whether the whole body has been decoded.
    pub fn is_done(&self) -> bool {
        self.outer.is_done()
    }

    /// Decode `buf[*start..filled]` as far as it goes, advancing `*start` past what
    /// was decoded (framing left incomplete stays for the next call, with more bytes
    /// appended). Each run of body bytes is shown to `seen` once, in order; runs are
    /// moved down over the framing between them so that they form one region. With
    /// `inner` (an aws-chunked decoder), the outer body's data is decoded again by it
    /// and only its data is body.
    pub fn gather(
        &mut self,
        mut inner: Option<&mut BodyDecoder>,
        buf: &mut [u8],
        start: &mut usize,
        filled: usize,
        mut seen: impl FnMut(&[u8]),
    ) -> Result<Gathered, BodyFault> {
        let mut region: Option<Range<usize>> = None;
        while *start < filled && !self.outer.is_done() {
            let step = self
                .outer
                .step(&buf[*start..filled])
                .map_err(BodyFault::Malformed)?;
            let (mut a, b) = (*start + step.data.start, *start + step.data.end);
            *start += step.consumed;
            while a < b {
                let run = match inner.as_deref_mut() {
                    None => std::mem::replace(&mut a, b)..b,
                    Some(d) => {
                        let s = d.step(&buf[a..b]).map_err(BodyFault::Malformed)?;
                        if s.consumed == 0 {
                            return Err(BodyFault::AfterInnerEnd);
                        }
                        let run = a + s.data.start..a + s.data.end;
                        a += s.consumed;
                        run
                    }
                };
                if !run.is_empty() {
                    seen(&buf[run.clone()]);
                    region = Some(match region {
                        None => run,
                        Some(r) if r.end == run.start => r.start..run.end,
                        Some(r) => {
                            let len = run.len();
                            buf.copy_within(run, r.end);
                            r.start..r.end + len
                        }
                    });
                }
            }
            if step.consumed == 0 {
                break;
            }
        }
        Ok(Gathered {
            region,
            done: self.outer.is_done(),
        })
    }
}

/// Give the buffer `buf` (filled up to `*filled`, processed up to `*start`) to a write
/// of its gathered region, and carry on in `fresh`: the bytes after `*start` move to
/// its front, so that the write owns the buffer while the next read fills the fresh one.
/// Returns the full buffer.
pub fn hand_over(
    buf: &mut Vec<u8>,
    start: &mut usize,
    filled: &mut usize,
    fresh: Vec<u8>,
) -> Vec<u8> {
    let full = std::mem::replace(buf, fresh);
    let rest = *filled - *start;
    if buf.len() < rest {
        buf.resize(rest, 0);
    }
    buf[..rest].copy_from_slice(&full[*start..*filled]);
    *filled = rest;
    *start = 0;
    full
}

/// Before more is decrypted onto the end of `buf[..*filled]` (processed up to
/// `*start`): start over when all of it was processed, else move the unprocessed bytes
/// to the front when less than `room` is left after them. They move at most once per
/// fill, and only when a partial head or chunk line waits there.
pub fn make_room(buf: &mut [u8], start: &mut usize, filled: &mut usize, room: usize) {
    if *start == *filled {
        *start = 0;
        *filled = 0;
    } else if *start > 0 && *filled + room > buf.len() {
        buf.copy_within(*start..*filled, 0);
        *filled -= *start;
        *start = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::http;

    fn decoder(head: &str) -> BodyDecoder {
        let (h, _) = http::parse_head(head.as_bytes(), 16 * 1024)
            .expect("a head")
            .expect("a whole head");
        BodyDecoder::for_request(&h)
    }

    /// The written body, what `seen` was shown, the bytes left after the body.
    type Driven = (Vec<u8>, Vec<u8>, Vec<u8>);

    /// The shell's part: append the wire's bytes up to each cut in turn, gather, hand
    /// a found region over (as if written), and go on until the body is done. Returns
    /// the written body, what `seen` was shown, and the bytes left after the body.
    fn drive(
        outer: BodyDecoder,
        mut inner: Option<BodyDecoder>,
        wire: &[u8],
        cuts: &[usize],
    ) -> Result<Driven, BodyFault> {
        let mut g = Gather::new(outer);
        let mut buf = vec![0u8; 8];
        let (mut start, mut filled, mut fed) = (0, 0, 0);
        let (mut written, mut seen) = (Vec::new(), Vec::new());
        for &cut in cuts.iter().chain([&wire.len()]) {
            let more = &wire[fed..cut.max(fed)];
            if buf.len() < filled + more.len() {
                buf.resize(filled + more.len(), 0);
            }
            buf[filled..filled + more.len()].copy_from_slice(more);
            filled += more.len();
            fed = cut.max(fed);
            let got = g.gather(inner.as_mut(), &mut buf, &mut start, filled, |b| {
                seen.extend_from_slice(b)
            })?;
            if let Some(r) = got.region {
                let full = hand_over(&mut buf, &mut start, &mut filled, vec![0; 8]);
                written.extend_from_slice(&full[r]);
            }
            if got.done {
                let rest = [&buf[start..filled], &wire[fed..]].concat();
                return Ok((written, seen, rest));
            }
        }
        panic!("the body never ended: {} written", written.len());
    }

    fn chunked(parts: &[&[u8]]) -> Vec<u8> {
        let mut w = Vec::new();
        for p in parts {
            w.extend_from_slice(format!("{:x};ext=1\r\n", p.len()).as_bytes());
            w.extend_from_slice(p);
            w.extend_from_slice(b"\r\n");
        }
        w.extend_from_slice(b"0\r\n\r\n");
        w
    }

    const NEXT: &[u8] = b"GET /next HTTP/1.1\r\n\r\n";

    #[test]
    fn a_length_body_split_anywhere_is_written_whole_and_leaves_the_next_request() {
        let body: Vec<u8> = (0..300u32).map(|i| (i * 7) as u8).collect();
        let wire = [body.as_slice(), NEXT].concat();
        let head = format!(
            "PUT /b/k HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\n\r\n",
            body.len()
        );
        for cut in 0..=wire.len() {
            let (w, s, rest) = drive(decoder(&head), None, &wire, &[cut]).unwrap();
            assert_eq!(
                (w == body, s == body, rest.as_slice()),
                (true, true, NEXT),
                "cut {cut}"
            );
        }
    }

    #[test]
    fn a_chunked_body_split_at_every_pair_of_points_has_its_framing_squeezed_out() {
        // (A chunk of size 0 is the last chunk: every part here has bytes.)
        let parts: [&[u8]; 3] = [b"first run;", b"2nd", b"the third, longer run of bytes"];
        let body: Vec<u8> = parts.concat();
        let wire = [chunked(&parts).as_slice(), NEXT].concat();
        let head = "PUT /b/k HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n";
        for i in 0..=wire.len() {
            for j in i..=wire.len() {
                let (w, s, rest) = drive(decoder(head), None, &wire, &[i, j]).unwrap();
                assert_eq!(w, body, "cuts {i} {j}");
                assert_eq!(s, body, "cuts {i} {j}");
                assert_eq!(rest, NEXT, "cuts {i} {j}");
            }
        }
    }

    #[test]
    fn an_aws_chunked_body_inside_chunked_yields_only_the_inner_data_and_keeps_the_trailer() {
        let inner_wire = [
            b"5\r\nhello\r\n6\r\n world\r\n0\r\n".as_slice(),
            b"x-amz-checksum-crc32:AAAAAA==\r\n\r\n",
        ]
        .concat();
        let (a, b) = inner_wire.split_at(9);
        let wire = [chunked(&[a, b]).as_slice(), NEXT].concat();
        let head = "PUT /b/k HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n";
        for cut in 0..=wire.len() {
            let mut inner = BodyDecoder::aws_chunked();
            let mut g = Gather::new(decoder(head));
            // Driven by hand here to read the inner decoder's trailer afterwards.
            let mut buf = wire[..cut].to_vec();
            let mut start = 0;
            let mut seen = Vec::new();
            let first = g
                .gather(Some(&mut inner), &mut buf, &mut start, cut, |b| {
                    seen.extend_from_slice(b)
                })
                .unwrap();
            let mut written = first.region.map(|r| buf[r].to_vec()).unwrap_or_default();
            let mut rest = buf[start..].to_vec();
            rest.extend_from_slice(&wire[cut..]);
            let mut start = 0;
            let len = rest.len();
            let second = g
                .gather(Some(&mut inner), &mut rest, &mut start, len, |b| {
                    seen.extend_from_slice(b)
                })
                .unwrap();
            written.extend(second.region.map(|r| rest[r].to_vec()).unwrap_or_default());
            assert!(second.done, "cut {cut}");
            assert_eq!(written, b"hello world", "cut {cut}");
            assert_eq!(seen, b"hello world", "cut {cut}");
            assert_eq!(&rest[start..len], NEXT, "cut {cut}");
            assert_eq!(inner.trailer(), b"x-amz-checksum-crc32:AAAAAA==\r\n\r\n");
        }
    }

    #[test]
    fn broken_framing_is_refused_with_what_s3_says() {
        let head = "PUT /b/k HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n";
        let e = drive(decoder(head), None, b"zz\r\nabc\r\n0\r\n\r\n", &[]).unwrap_err();
        assert!(matches!(e, BodyFault::Malformed(_)), "{e:?}");
        assert_eq!(s3::Error::from(&e).code, Code::InvalidRequest);

        // The inner body ends, then the outer body still has bytes.
        let wire = chunked(&[b"0\r\n\r\nmore"]);
        let e = drive(decoder(head), Some(BodyDecoder::aws_chunked()), &wire, &[]).unwrap_err();
        assert_eq!(e, BodyFault::AfterInnerEnd);
        assert_eq!(s3::Error::from(&e).code, Code::InvalidRequest);
    }

    #[test]
    fn make_room_moves_the_unprocessed_bytes_only_when_room_runs_out() {
        let mut buf = *b"done|partial.....";
        let (mut start, mut filled) = (5, 12);
        make_room(&mut buf, &mut start, &mut filled, 5);
        assert_eq!((start, filled), (5, 12), "room enough: nothing moves");
        make_room(&mut buf, &mut start, &mut filled, 6);
        assert_eq!((start, filled, &buf[..7]), (0, 7, b"partial".as_slice()));
        let (mut start, mut filled) = (7, 7);
        make_room(&mut buf, &mut start, &mut filled, 100);
        assert_eq!((start, filled), (0, 0), "all processed: start over");
    }

    #[test]
    fn hand_over_keeps_what_follows_the_body_in_the_fresh_buffer() {
        let mut buf = b"bodybytes|next".to_vec();
        let (mut start, mut filled) = (10, buf.len());
        let full = hand_over(&mut buf, &mut start, &mut filled, Vec::new());
        assert_eq!(&full[..9], b"bodybytes");
        assert_eq!((&buf[..filled], start), (b"next".as_slice(), 0));
    }
}
