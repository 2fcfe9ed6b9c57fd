"""A small HTTP authentication service for the tests: prints its port, then one line per
request (`req <method> <path> <form>`).

    POST|GET /auth   200 for web/web-pw and boss/boss-pw, else 403
    POST|GET /super  200 for boss, else 403
    POST|GET /acl    200 when the topic starts with ok/, else 403
    any      /slow   answers 200 after 3 s
"""

import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

USERS = {"web": "web-pw", "boss": "boss-pw"}


class Handler(BaseHTTPRequestHandler):
    def answer(self, form_text):
        path = urlsplit(self.path).path
        print(f"req {self.command} {path} {form_text}", flush=True)
        form = {k: v[0] for k, v in parse_qs(form_text).items()}
        user = form.get("username", "")
        if path == "/slow":
            time.sleep(3)
            ok = True
        elif path == "/auth":
            ok = user in USERS and USERS[user] == form.get("password")
        elif path == "/acl":
            ok = form.get("topic", "").startswith("ok/")
        elif path == "/super":
            ok = user == "boss"
        else:
            ok = False
        self.send_response(200 if ok else 403)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_POST(self):
        n = int(self.headers.get("Content-Length", "0"))
        self.answer(self.rfile.read(n).decode())

    def do_GET(self):
        self.answer(urlsplit(self.path).query)

    def log_message(self, *args):
        pass


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
print(f"port {server.server_address[1]}", flush=True)
server.serve_forever()
