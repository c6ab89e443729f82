#!/usr/bin/env python3
"""Writes the hand-made seed inputs of every target into fuzz/corpus/<target>/seed-*.

Run once when a target is added or its input format changes; the fuzzer's own finds are
merged next to them by run.sh. Each seed is laid out as the target's doc comment says.
"""
import hashlib
import json
import pathlib
import struct

ROOT = pathlib.Path(__file__).resolve().parent
REPO = ROOT.parent


def write(target, seeds):
    out = ROOT / "corpus" / target
    out.mkdir(parents=True, exist_ok=True)
    for seed in seeds:
        name = "seed-" + hashlib.sha1(seed).hexdigest()[:16]
        (out / name).write_bytes(seed)


def chunk(b):
    assert len(b) < 256, b
    return bytes([len(b)]) + b


# ---- framing_watch: [k][k x u16 split points][stream] ----
GET = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
streams = [
    GET,
    GET + GET + b"GET /c HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
    b"POST /b HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5;ext=1\r\nhello\r\nA\r\n0123456789\r\n0\r\nx-trailer: 1\r\n\r\n" + GET,
    GET + b"POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    GET + b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n",
    b"POST / HTTP/1.1\r\ncontent-length: 0\r\ntransfer-encoding: gzip, chunked\r\n\r\n",
    b"POST / HTTP/1.1\r\nContent-Length: 70\r\n\r\n"
    b"POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n" + GET,
    b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n" + GET,
    b"CONNECT x:443 HTTP/1.1\r\nHost: x:443\r\n\r\n",
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
    b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
    b"POST / HTTP/1.1\r\nContent-Length: +1\r\n\r\nx" + GET,
    b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
    b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"\r\n" + GET + b"\r\n",
    b"POST / HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc" + GET[:10],
]
seeds = [b"\x00" + s for s in streams]
seeds += [bytes([2]) + struct.pack("<HH", 7, 40) + s for s in streams[2:5]]
write("framing_watch", seeds)

# ---- chunked: the body and what follows ----
bodies = [
    b"0\r\n\r\n",
    b"5\r\nhello\r\n0\r\n\r\n",
    b"5;ext=1\r\nhello\r\nA\r\n0123456789\r\n0\r\nx-trailer: 1\r\n\r\n",
    b"a \t;name=\"v\"\r\n0123456789\r\n0\r\n\r\nGET / HTTP/1.1\r\n\r\n",
    b"FFFFFFFFFFFFFFFF\r\n",
    b"1\r\nx\r\n0\r\nTrailer: a\r\nOther: b\r\n\r\n",
    b"5\r\nhello\n0\r\n\r\n",
    b"5\r\nhelloXX",
    b"3;a\nb\r\nabc\r\n0\r\n\r\n",
    b"0;\r\n\r\n",
]
write("chunked", bodies)

# ---- path_and_route: [routes][per route: choice (+chunk)][host choice][path] ----
def route(index, host=None, public=False, strip=False):
    c = index & 0x0F if host is None else (0x40 | (host << 4) | (index & 0x0F))
    # The prefix index is the whole byte modulo the table; keep it simple for seeds.
    return bytes([c | (0x20 if public else 0) | (0x10 if strip else 0)])


def own_prefix(text, host=None, strip=False):
    c = 0x80 | (0x10 if strip else 0) | ((0x40 | (host << 4)) if host is not None else 0)
    return bytes([c]) + chunk(text)

paths = [b"/", b"/public/%2e%2e/admin", b"/public/../users/invite", b"//admin", b"/a/./b/../c/",
         b"/%41%62c/%7e", b"/a%20b/%3f", b"/public%2f..%2fadmin", b"/a%5cb", b"/a\\b",
         b"/api/v1/users/me", b"/apix", b"/api", b"/api/", b"/x/%2E%2E/%2e/y"]
for p in paths:
    write("path_and_route", [
        b"\x00\x00" + p,
        b"\x03" + route(0) + route(4, public=True) + route(1, strip=True) + b"\x00" + p,
        b"\x04" + route(0) + own_prefix(b"api/v1", strip=True) + route(1, host=0, strip=True)
        + route(1) + b"\x05" + p,
        b"\x02" + own_prefix(b"public/") + route(6, host=1) + b"\x03" + chunk(b"Example.COM:80") + p,
    ])

# ---- token_extraction: [cookie name][kind, chunk(value)]... ----
X, A, C, O = 0, 1, 2, 3
JWT = (b"eyJhbGciOiJFZERTQSIsInR5cCI6IkpXVCIsImtpZCI6IjAwMTcwMDAwMDAwMDAwMC1hYmNkMTIzNCJ9."
       b"eyJpc3MiOiJodHRwOi8vMTI3LjAuMC4xOjgwODAiLCJleHAiOjE3MDAwMDAwMDB9.c2lnbmF0dXJl")
def hdr(kind, value):
    return bytes([kind]) + chunk(value)
write("token_extraction", [
    b"\x00" + hdr(X, b"a") + hdr(A, b"Bearer b") + hdr(C, b"meiro_access_token=c"),
    b"\x00" + hdr(A, b"bearer  " + JWT + b" ") + hdr(C, b"meiro_access_token=c"),
    b"\x00" + hdr(C, b"x=1; meiro_access_token=" + JWT + b"; y=2"),
    b"\x00" + hdr(X, b" ") + hdr(A, b"Basic Zm9vOmJhcg==") + hdr(C, b"tt=1; meiro_access_token="),
    b"\x01" + hdr(O, b"t=1") + hdr(C, b"t=") + hdr(C, b"t=2") + hdr(X, b"\t"),
    b"\x00" + hdr(X, b"") + hdr(X, b"second") + hdr(A, b"Bearer\tx") + hdr(A, b"Bearer y"),
    b"\x03" + hdr(C, b"a=b=c; a=b=d"),
])

# ---- cookies: even: chunk(name) + chunk(header)...; odd: chunk(name) + (chunk(n) chunk(v))... ----
write("cookies", [
    b"\x00" + chunk(b"meiro_access_token") + chunk(b"x=1; meiro_access_token=" + JWT + b"; y=2"),
    b"\x00" + chunk(b"t") + chunk(b"tt=1; t=") + chunk(b" t = 1;t=2"),
    b"\x00" + chunk(b"t") + chunk(b";;;t=;=;t=\xc3\xa9") + chunk(b"t=ok"),
    b"\x01" + chunk(b"meiro_access_token") + chunk(b"theme") + chunk(b"dark")
    + chunk(b"meiro_access_token") + chunk(JWT[:100]),
    b"\x01" + chunk(b"t") + chunk(b"t") + chunk(b"") + chunk(b"t") + chunk(b"v=1"),
])

# ---- jwt_header: [mode] ... ----
def b64(data):
    import base64
    return base64.urlsafe_b64encode(data).rstrip(b"=")

claims = json.dumps({"iss": "https://gate.fuzz", "sub": "7d7f3b2e-4c1a-4a57-9a7e-2c6f3f8f4b11",
                     "sid": "0b5e8c6a-1d2f-4e3a-8b9c-7a6d5e4f3c2b",
                     "jti": "3c2b1a09-8f7e-4d6c-9b5a-4f3e2d1c0b9a", "iat": 1000,
                     "exp": 2000000000}, separators=(",", ":")).encode()
headers = [b'{"alg":"EdDSA","typ":"JWT","kid":"KID0"}', b'{"alg":"ES256","typ":"JWT","kid":"KID1"}',
           b'{"alg":"ES256","kid":"KID0"}', b'{"alg":"EdDSA","kid":"KID1"}',
           b'{"alg":"none","typ":"JWT","kid":"KID0"}', b'{"alg":"HS256","typ":"JWT","kid":"KID0"}',
           b'{"alg":"RS256","kid":"KID0"}', b'{"alg":"EdDSA"}', b'{"alg":"EdDSA","kid":"unknown"}',
           b'{"alg":"EdDSA","kid":"KID0","crit":["exp"],"jku":"http://x"}']
jwt = [b"\x00" + JWT, b"\x00garbage", b"\x00..", b"\x00" + b64(headers[4]) + b"." + b64(claims) + b"."]
for h in headers:
    jwt.append(b"\x01" + chunk(h) + chunk(claims) + b"\x00" * 64)
    jwt.append(b"\x02" + chunk(h) + chunk(b"") + b"\x00")
    jwt.append(b"\x02" + chunk(h) + chunk(claims) + b"\x04")
    jwt.append(b"\x03\x00" + chunk(h))
jwt += [b"\x03\x00\x00" + struct.pack("<H", 200) + b"A", b"\x03\x01\x00" + struct.pack("<H", 5) + b"x",
        b"\x03\x01\x00\xff\xff."]
write("jwt_header", jwt)

# ---- config_toml: config files ----
configs = [(REPO / "config/meiro-gate.toml").read_bytes()]
configs += [p.read_bytes() for p in sorted(REPO.glob("deploy/k8s/overlays/*/meiro-gate.toml"))]
configs += [
    b"",
    b'[[upstreams]]\nname = "meiro"\ninstances = ["http://127.0.0.1:9000"]\n'
    b'[[routes]]\nprefix = "/api"\nupstream = "meiro"\nstrip_prefix = true\n'
    b'[[routes]]\nprefix = "/public/"\nupstream = "meiro"\npublic = true\nhost = "Api.Example.com"\n',
    b'[[upstreams]]\nname = "meiro"\ninstances = ["http://127.0.0.1:9000"]\n'
    b'[auth]\nmode = "upstream"\n[auth.upstream]\nupstream = "meiro"\nintrospect_path = "/users/me"\n'
    b'introspect_method = "GET"\npositive_ttl = "60s"\nnegative_ttl = "5s"\n',
    b'[cors]\nallowed_origins = ["https://app.example.com"]\nallow_credentials = true\n',
    b'[bootstrap]\nadmin_email = "admin@example.com"\nadmin_password = "change me please 123"\n',
    b'[store]\nurl = "postgres://meiro:s3cret@db:5432/meiro?sslmode=require&sslpassword=x"\n',
    b'[mail]\ntransport = "smtp"\nsmtp_url = "smtps://u:p@mail.example.com:465"\n',
    b'[server]\nlisten = "localhost"\n[auth]\naccess_token_ttl = "forever"\ncookie_name = "bad name"\n'
    b'[limits]\nmax_connections = 0\n[[upstreams]]\nname = "meiro"\n'
    b'instances = ["http://127.0.0.1:9000", "ftp://x"]\n[[routes]]\nprefix = "/"\nupstream = "nope"\n',
    b'server = 1\n[[upstreams]]\nname = 2\n[routes]\n',
    b'[auth]\nsigning_algorithm = "ES256"\nkeys_dir = "/var/lib/keys"\nkey_activation_delay = "2m"\n',
]
write("config_toml", configs)

# ---- host_authority: [choice][authority chunk if choice & 4][Host chunks][rest] ----
# choice % 3: 0 HTTP/1.0, 1 HTTP/1.1, 2 HTTP/2; (choice >> 3) % 4 Host lines.
hosts = [
    bytes([1 | 1 << 3]) + chunk(b"api.example.com:8443") + b"[::1]:80",
    bytes([1 | 2 << 3]) + chunk(b"public.example") + chunk(b"admin.example") + b"a:65536",
    bytes([1 | 4 | 1 << 3]) + chunk(b"public.example") + chunk(b"admin.example") + b"user@host",
    bytes([1 | 4 | 1 << 3]) + chunk(b"Public.Example") + chunk(b"public.example") + b"[::g]",
    bytes([2 | 4]) + chunk(b"a.example") + b"[]",
    bytes([2 | 4 | 1 << 3]) + chunk(b"a.example") + chunk(b"b.example") + b"x:",
    bytes([1]) + b"host/path",
    bytes([0]) + b"a%2eb",
    bytes([1 | 1 << 3]) + chunk(b"admin.example.") + b"[fe80::1]:443",
    bytes([1 | 1 << 3]) + chunk(b"") + b"xn--bcher-kva.example:00080",
]
write("host_authority", hosts)

# ---- header_rewrite: [flags][entries], an entry: [choice] then, when choice & 0x80, the
# separators of GATEWAY_OWNED[choice % 8], else a name chunk; then a value chunk ----
OWNED = ["x-meiro-user-id", "x-meiro-user-email", "x-meiro-user-role", "x-forwarded-for",
         "x-forwarded-proto", "x-forwarded-host", "x-request-id", "x-access-token"]


def disguised(index, separator):
    return bytes([0x80 | index]) + separator * OWNED[index].count("-")


def plain(name):
    return b"\x00" + chunk(name)


rewrites = [
    b"\x01" + disguised(2, b"_") + chunk(b"admin") + plain(b"accept") + chunk(b"*/*"),
    b"\x00" + disguised(0, b".") + chunk(b"someone") + disguised(3, b"_") + chunk(b"10.0.0.1"),
    b"\x03" + plain(b"x_custom") + chunk(b"1") + plain(b"x-meiro-user-role") + chunk(b"admin"),
    b"\x01" + plain(b"connection") + chunk(b"x-forwarded-for, upgrade") + plain(b"upgrade")
    + chunk(b"h2c") + plain(b"http2-settings") + chunk(b"AAMAAABk"),
    b"\x01" + plain(b"x-access-token") + chunk(b"first") + plain(b"x-access-token") + chunk(b"second")
    + plain(b"x-request-id") + chunk(b"one") + plain(b"x-request-id") + chunk(b"two"),
    b"\x00" + disguised(7, b"~") + chunk(b"forged") + disguised(6, b"*") + chunk(b"forged"),
    b"\x01" + plain(b"x-forwarded-for") + chunk(b"1.2.3.4") + plain(b"te") + chunk(b"trailers, gzip"),
]
write("header_rewrite", rewrites)

# ---- ws_frames: [k][k % 8 split points, u16 LE each][a WebSocket byte stream] ----
def frame(length, masked=False, opcode=0x2):
    second = 0x80 if masked else 0
    if length < 126:
        head = bytes([0x80 | opcode, second | length])
    elif length < 1 << 16:
        head = bytes([0x80 | opcode, second | 126]) + length.to_bytes(2, "big")
    else:
        head = bytes([0x80 | opcode, second | 127]) + length.to_bytes(8, "big")
    return head + (b"\x01\x02\x03\x04" if masked else b"") + b"x" * length


def splits(*points):
    return bytes([len(points)]) + b"".join(p.to_bytes(2, "little") for p in points)


ws = [
    splits() + frame(5) + frame(0, masked=True) + frame(125),
    splits(1, 3, 140) + frame(126, masked=True) + frame(300),
    splits(2) + frame(70000)[:2000],
    splits(5) + bytes([0x82, 127, 0x80, 0, 0, 0, 0, 0, 0, 0]) + frame(3),
    splits(1) + frame(2, opcode=0x1)[:3],
    splits(4, 6) + frame(4, opcode=0x8) + frame(1, masked=True, opcode=0x9),
]
write("ws_frames", ws)

# ---- forwarded_for: [trusted-network bits][peer choice][up to 4 X-Forwarded-For chunks] ----
# bits: 1 10/8, 2 127.0.0.1, 4 2001:db8::/32, 8 192.0.2/24, 16 ::ffff:0:0/96, 32 0/0;
# peers: 0 10.1.2.3, 1 127.0.0.1, 2 ::ffff:10.9.9.9, 3 203.0.113.5.
write("forwarded_for", [
    bytes([1, 0]) + chunk(b"203.0.113.7, 10.0.0.2"),
    bytes([1 | 2, 1]) + chunk(b"6.6.6.6, 5.5.5.5") + chunk(b"10.2.2.2 , 203.0.113.7, 10.1.1.1"),
    bytes([1, 2]) + chunk(b"1.1.1.1, junk, 10.1.1.1"),
    bytes([1, 3]) + chunk(b"10.0.0.1, 1.1.1.1"),
    bytes([32, 0]) + chunk(b"1.2.3.4:5678, [2001:db8::1]:443"),
    bytes([4 | 8, 0]) + chunk(b"192.0.2.1,,2001:db8::9") + chunk(b"unknown"),
    bytes([2, 1]) + chunk(b"") + chunk(b" ,203.0.113.9,"),
])

# ---- proxy_header: a connection's first bytes ----
V2 = b"\r\n\r\n\x00\r\nQUIT\n"
tcp4 = bytes([203, 0, 113, 7, 10, 0, 0, 1]) + struct.pack(">HH", 4321, 443)
tcp6 = bytes(15) + b"\x07" + bytes(15) + b"\x01" + struct.pack(">HH", 4321, 443)
write("proxy_header", [
    b"PROXY TCP4 203.0.113.7 10.0.0.1 4321 443\r\nGET / HTTP/1.1\r\n\r\n",
    b"PROXY TCP6 2001:db8::7 2001:db8::1 4321 443\r\n",
    b"PROXY UNKNOWN\r\n",
    b"PROXY TCP4 203.0.113.7 10.0.0.1 +4321 443\r\n",
    b"GET / HTTP/1.1\r\n\r\n",
    V2 + b"\x21\x11" + struct.pack(">H", len(tcp4)) + tcp4 + b"GET /",
    V2 + b"\x21\x21" + struct.pack(">H", len(tcp6) + 6) + tcp6 + b"\xea\x00\x03vpc",
    V2 + b"\x20\x00\x00\x00",
    V2 + b"\x21\x12" + struct.pack(">H", len(tcp4)) + tcp4,
    V2 + b"\x21\x11\x04\x01",
])
