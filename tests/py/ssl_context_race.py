"""Reproduces, without lakegate, the client crash sitecustomize.py works around:
threads loading a client chain into one shared SSLContext while making connections
from it, as urllib3 does under boto3's transfer threads.

    .venv-tests/bin/python tests/py/ssl_context_race.py                    # crashes
    PYTHONPATH=tests/py .venv-tests/bin/python tests/py/ssl_context_race.py  # 0 errors

Needs openssl (for a throwaway key and certificate).
"""

import os
import socket
import ssl
import subprocess
import tempfile
import threading

d = tempfile.mkdtemp()
cert, key = os.path.join(d, "c.pem"), os.path.join(d, "k.pem")
subprocess.run(
    ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
     "-nodes", "-keyout", key, "-out", cert, "-subj", "/CN=x", "-days", "1"],
    check=True, capture_output=True)
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
errors = []


def run():
    for _ in range(3000):
        try:
            ctx.load_cert_chain(cert, key)
            s = socket.socket()
            ctx.wrap_socket(s, do_handshake_on_connect=False)
            s.close()
        except Exception as e:  # noqa: BLE001 - counting every failure is the point
            errors.append(repr(e))


threads = [threading.Thread(target=run) for _ in range(10)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(len(errors), "errors", errors[:2])
