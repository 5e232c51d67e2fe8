"""Imported at start-up by every Python the tests run (tests/common `python_cmd` puts
this directory first on PYTHONPATH).

urllib3 loads the client certificate into one shared ssl.SSLContext each time it opens
a connection (urllib3#3036, requests#6726). boto3's and the AWS CLI's transfer threads
open connections at once, so one thread rewrites an OpenSSL SSL_CTX while others make
connections from it, which OpenSSL forbids. Under CI load that failed a test with
`KEY_VALUES_MISMATCH` in `load_cert_chain` and once crashed the interpreter (SIGSEGV).
That is the client's bug, not lakegate's: load a given chain into a context once,
under a lock, and make a repeat of the same files a no-op. A different chain still
loads, so tests that swap identities keep working.
"""

import ssl
import threading

_lock = threading.Lock()
_load_cert_chain = ssl.SSLContext.load_cert_chain


def _load_once(self, certfile, keyfile=None, password=None):
    want = (certfile, keyfile)
    with _lock:
        if getattr(self, "_lakegate_chain", None) == want:
            return
        _load_cert_chain(self, certfile, keyfile, password)
        self._lakegate_chain = want


ssl.SSLContext.load_cert_chain = _load_once
