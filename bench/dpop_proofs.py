#!/usr/bin/env python3
"""DPoP (RFC 9449) client keys and proofs for bench/run.sh's `dpop` section.

  dpop_proofs.py keys DIR K
      K ES256 (P-256) client keys into DIR/key-I.pem; prints each key's RFC 7638
      thumbprint (the token's cnf.jkt), one a line, in key order.

  dpop_proofs.py proofs DIR TOKENS HTM HTU N THREADS PREFIX
      N proofs, split into THREADS files PREFIX.0 .. PREFIX.(THREADS-1), one proof a line
      as "I PROOF": I (from 1) is the key that signed it, and line I of TOKENS the access
      token bound to that key (the proof's `ath` is that token's hash). Keys take turns, so
      no key holds more than N/K + 1 proofs (Portcullis remembers at most a tenth of its
      replay cache per client key). Every proof has its own `jti` (a random run prefix and a
      counter), `iat` now, `htm` HTM and `htu` HTU.

Needs the `cryptography` package (bench/run.sh makes a venv for it). Signing runs on every
CPU (one process each); on 2 cores it makes roughly 37k proofs/s (idle).
"""
import base64
import hashlib
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature


def b64u(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def public_jwk(key) -> dict:
    n = key.public_key().public_numbers()
    return {"kty": "EC", "crv": "P-256", "x": b64u(n.x.to_bytes(32, "big")), "y": b64u(n.y.to_bytes(32, "big"))}


def thumbprint(jwk: dict) -> str:
    # RFC 7638: the required members, lexicographic order, no whitespace.
    canon = json.dumps({k: jwk[k] for k in ("crv", "kty", "x", "y")}, separators=(",", ":"), sort_keys=True)
    return b64u(hashlib.sha256(canon.encode()).digest())


def load_key(path: str):
    with open(path, "rb") as f:
        return serialization.load_pem_private_key(f.read(), password=None)


def cmd_keys(directory: str, k: int) -> None:
    os.makedirs(directory, exist_ok=True)
    for i in range(1, k + 1):
        key = ec.generate_private_key(ec.SECP256R1())
        path = os.path.join(directory, f"key-{i}.pem")
        with open(path, "wb") as f:
            f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))
        print(thumbprint(public_jwk(key)))


def make_part(job):
    """One output file: proofs number start, start+1, ... start+count-1 of the run."""
    directory, tokens, htm, htu, start, count, out, run_id, iat = job
    keys = [load_key(os.path.join(directory, f"key-{i}.pem")) for i in range(1, len(tokens) + 1)]
    headers = [b64u(json.dumps({"typ": "dpop+jwt", "alg": "ES256", "jwk": public_jwk(key)},
                               separators=(",", ":")).encode()) for key in keys]
    aths = [b64u(hashlib.sha256(t.encode()).digest()) for t in tokens]
    algo = ec.ECDSA(hashes.SHA256())
    k = len(keys)
    lines = []
    for n in range(start, start + count):
        i = n % k
        claims = json.dumps({"jti": f"{run_id}-{n}", "htm": htm, "htu": htu, "iat": iat, "ath": aths[i]},
                            separators=(",", ":"))
        signing_input = headers[i] + "." + b64u(claims.encode())
        r, s = decode_dss_signature(keys[i].sign(signing_input.encode(), algo))
        lines.append(f"{i + 1} {signing_input}.{b64u(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}\n")
    with open(out, "w") as f:
        f.writelines(lines)
    return count


def cmd_proofs(directory, tokens_file, htm, htu, n, threads, prefix) -> None:
    with open(tokens_file) as f:
        tokens = [line.strip() for line in f if line.strip()]
    if not tokens:
        sys.exit(f"no tokens in {tokens_file}")
    run_id = b64u(os.urandom(9))
    iat = int(time.time())
    per = -(-n // threads)
    # Each thread file in a few chunks, so every CPU signs; concatenated in order after.
    chunks = max(1, (os.cpu_count() or 1) * 2 // threads)
    jobs = []
    for t in range(threads):
        for c in range(chunks):
            lo = t * per + c * per // chunks
            hi = t * per + (c + 1) * per // chunks
            jobs.append((directory, tokens, htm, htu, lo, hi - lo, f"{prefix}.{t}.part{c}", run_id, iat))
    with ProcessPoolExecutor() as pool:
        made = sum(pool.map(make_part, jobs))
    for t in range(threads):
        with open(f"{prefix}.{t}", "w") as out:
            for c in range(chunks):
                part = f"{prefix}.{t}.part{c}"
                with open(part) as f:
                    out.write(f.read())
                os.remove(part)
    print(made)


def main() -> None:
    a = sys.argv[1:]
    if len(a) == 3 and a[0] == "keys":
        cmd_keys(a[1], int(a[2]))
    elif len(a) == 8 and a[0] == "proofs":
        cmd_proofs(a[1], a[2], a[3], a[4], int(a[5]), int(a[6]), a[7])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
