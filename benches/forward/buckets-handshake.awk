# perf script -F comm,ip,sym | awk -v f=FREQ -v conns=N -f buckets-handshake.awk
# Puts every cpu-clock sample of lakegate during a handshake run into one bucket (first
# rule that matches the leaf symbol for crypto, else the whole stack), per connection.
function bucket(st, leaf) {
  if (leaf ~ /rsaz|RSAZ|RSA_|rsa_|mod_exp|bn_mul_mont|bn_sqr8x|bn_power5|mulx4x|ifma/) return "user: RSA sign/verify (aws-lc bignum)"
  if (leaf ~ /ecp_nistz256|beeu_mod_inverse|p256|ec_GFp|bn_|BN_|ecdsa|ECDSA/) return "user: P-256 ECDSA sign/verify (aws-lc)"
  if (leaf ~ /x25519|curve25519|fiat_25519|fe_/) return "user: X25519 (aws-lc)"
  if (leaf ~ /sha256|sha512|SHA256|SHA512|hmac|HMAC|hkdf|HKDF|sha1/) return "user: SHA-2/HMAC/HKDF"
  if (leaf ~ /aes|gcm|GCM|ghash|AES|CRYPTO_/) return "user: AES/GCM (tickets, records)"
  if (leaf ~ /^(malloc|free|_int_malloc|_int_free|realloc|_int_realloc|cfree|calloc|malloc_consolidate|unlink_chunk|__libc_malloc|__libc_free|tcache)/) return "user: malloc/free"
  if (leaf ~ /^(__memmove|__memcpy|__memset)/) return "user: memcpy/memset"
  if (st ~ / (io_accept|do_accept|inet_accept|__sys_accept4|io_connect|__sys_connect|inet_stream_connect|__inet_stream_connect|tcp_v4_connect|__io_socket|__sys_socket|io_socket) /) return "kernel: socket/accept/connect (TCP setup, both legs)"
  if (st ~ / (tcp_close|__x64_sys_close|io_close|__fput|sock_close|__sys_shutdown|tcp_shutdown|inet_shutdown|io_shutdown|____fput|task_work_run) /) return "kernel: close/shutdown (TCP teardown)"
  if (st ~ / (io_read|io_write|io_send|io_recv) /) return "kernel: io_uring read/write of handshake + echo bytes"
  if (st ~ / (ksys_write|vfs_write|__x64_sys_write) /) return "kernel: write(2) (log lines to stderr)"
  if (st ~ / asm_sysvec_|asm_common_interrupt/) return "irq: timers/softirq at irq exit"
  if (st ~ / (do_epoll_wait|epoll_wait) /) return "kernel: epoll_wait"
  if (st ~ / __do_sys_io_uring_enter /) return "kernel: io_uring_enter other"
  if (st ~ / (schedule|finish_task_switch[.a-z]*|irqentry_exit_to_user_mode) /) return "kernel: scheduler / irq exit"
  if (st ~ / asm_exc_page_fault /) return "kernel: page faults"
  if (st ~ / (do_syscall_64|entry_SYSCALL_64_after_hwframe) /) return "kernel: other syscalls"
  if (st ~ /tracing_subscriber|tracing_core|core::fmt|<tracing|fmt::Write|Formatter/) return "user: logging/format (tracing)"
  if (st ~ /x509_parser|webpki|der_parser|asn1_rs|nom::|lakegate::tls::identity|CertRevocationList|crl/) return "user: certificate/CRL parsing & path validation (webpki, x509-parser)"
  if (st ~ /rustls::/) return "user: rustls other (handshake state machine, codecs)"
  if (st ~ /tokio/) return "user: tokio / tokio-uring runtime"
  if (st ~ /lakegate::/) return "user: lakegate other"
  return "other"
}
/^[^\t ]/ { if (st != "") { b[bucket(st, leaf)]++; n++ }; st = " "; leaf = ""; next }
/^$/ { next }
{ if (leaf == "") leaf = $2; st = st $2 " " }
END { if (st != "") { b[bucket(st, leaf)]++; n++ }
  printf "%d samples at %d Hz = %.3f CPU-ms per connection (N=%d)\n", n, f, n / f * 1000 / conns, conns
  printf "%7s %9s  %s\n", "share", "ms/conn", "bucket"
  for (k in b) printf "%6.1f%% %9.4f  %s\n", 100 * b[k] / n, b[k] / f * 1000 / conns, k | "sort -rn" }
