#!/usr/bin/env python3
"""Keys and Bearer tokens for the load benchmark (benches/load/run.sh).

Writes into OUT_DIR:
  jwks.json                         public RSA (kid "rs") and P-256 (kid "es") keys, served over loopback HTTP
  hmac-secret                       the shared secret of the HS256 issuer
  token-{rs256,es256,hs256}.txt     one token each (the cache-hit scenarios)
  tokens-{rs256,es256,hs256}.txt    COUNT distinct tokens each, one per line (the cache-miss scenarios)

Needs the `cryptography` package (Debian: python3-cryptography; or pip install cryptography).
Usage: tokens.py OUT_DIR ISSUER_JWKS ISSUER_HMAC AUDIENCE COUNT
"""

import base64
import hashlib
import hmac
import json
import multiprocessing
import os
import sys
import time

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature


def b64(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def uint(n: int, length: int) -> str:
    return b64(n.to_bytes(length, "big"))


_KEYS = {}


def _init(rsa_pem: bytes, ec_pem: bytes, secret: bytes) -> None:
    _KEYS["rs"] = serialization.load_pem_private_key(rsa_pem, None)
    _KEYS["es"] = serialization.load_pem_private_key(ec_pem, None)
    _KEYS["hs"] = secret


def sign(job):
    alg, iss, aud, n, now = job
    header = {"alg": alg, "typ": "JWT"}
    if alg != "HS256":
        header["kid"] = "rs" if alg == "RS256" else "es"
    claims = {
        "iss": iss,
        "aud": aud,
        "sub": f"bench-user-{n}",
        "preferred_username": f"bench{n}",
        "groups": ["bench"],
        "iat": now,
        "exp": now + 6 * 3600,
    }
    signing_input = (
        b64(json.dumps(header, separators=(",", ":")).encode())
        + "."
        + b64(json.dumps(claims, separators=(",", ":")).encode())
    ).encode()
    if alg == "RS256":
        sig = _KEYS["rs"].sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
    elif alg == "ES256":
        r, s = decode_dss_signature(_KEYS["es"].sign(signing_input, ec.ECDSA(hashes.SHA256())))
        sig = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    else:
        sig = hmac.new(_KEYS["hs"], signing_input, hashlib.sha256).digest()
    return signing_input.decode() + "." + b64(sig)


def main() -> None:
    out, iss_jwks, iss_hmac, aud, count = sys.argv[1:6]
    count = int(count)
    rsa_key = rsa.generate_private_key(65537, 2048)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    secret = os.urandom(32).hex().encode()
    pem = lambda k: k.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    rn = rsa_key.public_key().public_numbers()
    en = ec_key.public_key().public_numbers()
    jwks = {
        "keys": [
            {"kty": "RSA", "kid": "rs", "use": "sig", "alg": "RS256",
             "n": uint(rn.n, 256), "e": uint(rn.e, 3)},
            {"kty": "EC", "kid": "es", "use": "sig", "alg": "ES256", "crv": "P-256",
             "x": uint(en.x, 32), "y": uint(en.y, 32)},
        ]
    }
    with open(os.path.join(out, "jwks.json"), "w") as f:
        json.dump(jwks, f)
    with open(os.path.join(out, "hmac-secret"), "wb") as f:
        f.write(secret)
    now = int(time.time())
    init = (pem(rsa_key), pem(ec_key), secret)
    with multiprocessing.Pool(os.cpu_count() or 1, _init, init) as pool:
        for alg in ("RS256", "ES256", "HS256"):
            iss = iss_hmac if alg == "HS256" else iss_jwks
            name = alg.lower()
            _init(*init)
            with open(os.path.join(out, f"token-{name}.txt"), "w") as f:
                f.write(sign((alg, iss, aud, 0, now)) + "\n")
            jobs = [(alg, iss, aud, n, now) for n in range(1, count + 1)]
            with open(os.path.join(out, f"tokens-{name}.txt"), "w") as f:
                for t in pool.imap(sign, jobs, chunksize=256):
                    f.write(t + "\n")


if __name__ == "__main__":
    main()
