#!/usr/bin/env python3
"""Where a lakegate server's CPU samples go during resumed handshakes.

Reads `perf script -F comm,tid,ip,sym` output (cpu-clock samples with DWARF call
graphs) on stdin and prints a Markdown table: each sample is put in the first class
whose pattern matches any frame of its stack (leaf first), so the shares add to 100 %.

"ticket re-verification" is the work VerifyingTicketer adds on resumption (the client
chain parsed out of the ticket and run through the generation's ClientCertVerifier:
webpki chain + CRL + time + identity). In a resumed handshake nothing else verifies a
signature, so webpki / ECDSA-verify frames also count even when a stack was truncated
above them. Its sub-rows split it further (each a share of all samples; they add up to
the class).
"""
import re
import sys

CLASSES = [
    ("ticket re-verification (VerifyingTicketer → verify_client_cert)",
     r"VerifyingTicketer::open|verify_client_cert|session_client_chain|webpki::|"
     r"ECDSA_verify|ecdsa_do_verify|ec_point_mul_scalar_public|points_mul_public"),
    ("session ticket AEAD open/seal (also in OLD)",
     r"TicketRotator|TicketSwitcher|AeadTicketer|Ticketer.*(de|en)crypt|ProducesTickets"),
    ("server signature (full handshakes only)", r"ECDSA_sign|ecdsa_sign|EcdsaSigningKey|sign_digest"),
    ("key exchange (X25519 / P-256 / ML-KEM)", r"x25519|X25519|ECDH|ecdh|kem|KEM|KeyExchange|complete_for_tls"),
    ("TLS key schedule + transcript hash (HKDF/HMAC/SHA)", r"HKDF|hkdf|HMAC|hmac|sha256_block|sha512_block|SHA384|SHA256|HandshakeHash"),
    ("record AEAD (AES-GCM)", r"aes_gcm|gcm_|aes_hw|aesni|GCM|Aead|aead"),
]
ECDSA_VERIFY = re.compile(r"ECDSA_verify|ecdsa_do_verify|ec_point_mul_scalar_public|points_mul_public")
CRL = re.compile(r"webpki::crl")
# sub-rows of the first class, exclusive: (name, predicate over the stack's symbols)
SUB = [
    ("… ECDSA P-256 verify of the client certificate's signature",
     lambda syms: any(ECDSA_VERIFY.search(x) for x in syms) and not any(CRL.search(x) for x in syms)),
    ("… ECDSA P-256 verify of the CRL's signature (webpki checks it on every verification)",
     lambda syms: any(ECDSA_VERIFY.search(x) for x in syms) and any(CRL.search(x) for x in syms)),
    ("… the rest: DER parsing, path building, CRL lookup, time/EKU/identity rules, allocation",
     lambda syms: not any(ECDSA_VERIFY.search(x) for x in syms)),
]


def samples(lines):
    cur = None
    for line in lines:
        if not line.strip():
            if cur is not None:
                yield cur
            cur = None
            continue
        if not line[0].isspace():
            cur = []
            continue
        parts = line.strip().split(None, 1)
        cur.append((parts[0], parts[1] if len(parts) > 1 else "?"))
    if cur is not None:
        yield cur


def main():
    counts = {name: 0 for name, _ in CLASSES}
    sub = {name: 0 for name, _ in SUB}
    kernel = other = total = 0
    pats = [(n, re.compile(p)) for n, p in CLASSES]
    for s in samples(sys.stdin):
        total += 1
        syms = [sym for _, sym in s]
        for name, p in pats:
            if any(p.search(x) for x in syms):
                counts[name] += 1
                if name == CLASSES[0][0]:
                    for sn, pred in SUB:
                        if pred(syms):
                            sub[sn] += 1
                            break
                break
        else:
            leaf = s[0][0] if s else "0"
            try:
                is_kernel = int(leaf, 16) >= 0xFFFF800000000000
            except ValueError:
                is_kernel = False
            if is_kernel:
                kernel += 1
            else:
                other += 1
    if total == 0:
        print("no samples")
        return
    pct = lambda n: f"{100.0 * n / total:.1f}"
    print(f"| class ({total} samples) | % of server CPU samples |")
    print("|---|---|")
    first = True
    for name, _ in CLASSES:
        print(f"| {'**' + name + '**' if first else name} | {'**' + pct(counts[name]) + '**' if first else pct(counts[name])} |")
        if first:
            for sn, _ in SUB:
                print(f"| {sn} | {pct(sub[sn])} |")
        first = False
    print(f"| kernel (syscalls, TCP, io_uring), not in the classes above | {pct(kernel)} |")
    print(f"| other user space (rustls state machine, lakegate, alloc, …) | {pct(other)} |")


if __name__ == "__main__":
    main()
