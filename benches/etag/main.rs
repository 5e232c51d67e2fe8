//! What the single-part ETag choice costs a PUT: CPU-seconds per GiB of the store's
//! body hashing (`BodyHasher`, the one pass over every PUT body) for `etag = "sha256"`
//! (SHA-256 only) and `etag = "md5"` (SHA-256 and MD5 in the same pass), alone and with
//! the CRC-32 that boto3 sends by default. Thread CPU time (not wall time), so other
//! work on the machine inflates it little; the median of `RUNS` passes over 1 GiB fed
//! in 16 KiB pieces (a TLS record's plaintext, as the engine feeds it).
//!
//!   cargo bench --bench etag                 # RUNS=5 GIB=1
//!
//! Prints a Markdown table; the ratio column is against SHA-256 alone.

use lakegate::backend::store::BodyHasher;

const PIECE: usize = 16 * 1024;

fn thread_cpu_secs() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one `timespec` through the pointer, which points to
    // a live, exclusively borrowed `timespec` for the whole call; it keeps no pointer.
    let r = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(r, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

fn main() {
    let env = |k: &str, d: usize| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let runs = env("RUNS", 5);
    let gib = env("GIB", 1);
    // Incompressible-looking bytes; the hashes do not care, but the buffer is real.
    let mut buf = vec![0u8; 1 << 20];
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    for b in buf.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    let cases: [(&str, bool, bool, bool); 5] = [
        ("etag = \"sha256\": SHA-256", false, false, true),
        ("etag = \"md5\": SHA-256 + MD5", true, false, true),
        (
            "etag = \"sha256\", boto3 CRC-32 trailer: SHA-256 + CRC-32",
            false,
            true,
            true,
        ),
        (
            "etag = \"md5\", boto3 CRC-32 trailer: SHA-256 + MD5 + CRC-32",
            true,
            true,
            true,
        ),
        ("MD5 alone (md-5 crate, for reference)", true, false, false),
    ];
    println!(
        "| body hashing per PUT ({gib} GiB, {} KiB pieces, median of {runs}) | CPU-s/GiB | vs SHA-256 |",
        PIECE / 1024
    );
    println!("| --- | ---: | ---: |");
    let mut base = None;
    for (name, md5, crc, sha) in cases {
        let mut times = Vec::with_capacity(runs);
        for _ in 0..runs {
            let t0 = thread_cpu_secs();
            let d = if sha {
                let mut h = BodyHasher::with(md5, crc, false);
                for _ in 0..gib * 1024 {
                    for piece in buf.chunks(PIECE) {
                        h.update(piece);
                    }
                }
                h.finish().sha256[0]
            } else {
                use md5::Digest as _;
                let mut h = md5::Md5::new();
                for _ in 0..gib * 1024 {
                    for piece in buf.chunks(PIECE) {
                        h.update(piece);
                    }
                }
                h.finalize()[0]
            };
            std::hint::black_box(d);
            times.push((thread_cpu_secs() - t0) / gib as f64);
        }
        times.sort_by(f64::total_cmp);
        let med = times[times.len() / 2];
        let base = *base.get_or_insert(med);
        println!("| {name} | {med:.3} | {:.2}x |", med / base);
    }
}
