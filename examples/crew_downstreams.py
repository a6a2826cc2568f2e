#!/usr/bin/env python3
"""Three slow downstreams for the crew_suggestions example (stdlib only).

    python3 examples/crew_downstreams.py                 # ports 9001-9003, 2 s delay
    python3 examples/crew_downstreams.py --delay-ms 500 --work-orders 40

  http://127.0.0.1:9001/work-orders?day=D  -> [{id, site, skill, hours, needs_permit}]
  http://127.0.0.1:9002/crews?day=D        -> [{id, name, skills, available_hours}]
  http://127.0.0.1:9003/permits?day=D      -> [{work_order_id, status}]

Every day gets sample data of its own (the same day, the same data). Each answer
waits --delay-ms first (the permits system twice as long). A request without a
valid ?day=YYYY-MM-DD gets 400. Stop it with Ctrl-C.
"""

import argparse
import datetime
import json
import random
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

SKILLS = ["electric", "plumbing", "welding", "roofing"]
CREWS = [
    ("Ortega", ["electric", "plumbing"]),
    ("Baker", ["electric"]),
    ("Chen", ["welding", "plumbing"]),
    ("Dubois", ["roofing", "electric"]),
    ("Eze", ["welding"]),
]


def sample_day(day, work_orders):
    """The day's work orders, crews and permits, the same for the same day."""
    rng = random.Random(day)
    orders = [
        {
            "id": 1000 + n,
            "site": f"{rng.choice(['Elm', 'Oak', 'Pine', 'Birch'])} St {rng.randint(1, 200)}",
            "skill": rng.choice(SKILLS),
            "hours": rng.choice([1, 2, 2.5, 3, 4, 6]),
            "needs_permit": rng.random() < 0.3,
        }
        for n in range(1, work_orders + 1)
    ]
    crews = [
        {"id": i, "name": name, "skills": skills, "available_hours": rng.choice([6, 8, 10])}
        for i, (name, skills) in enumerate(CREWS, start=1)
    ]
    permits = [
        {"work_order_id": o["id"], "status": "approved" if rng.random() < 0.7 else "pending"}
        for o in orders
        if o["needs_permit"] and rng.random() < 0.9  # some permits have no record yet
    ]
    return {"/work-orders": orders, "/crews": crews, "/permits": permits}


def handler_for(path, delay_s, work_orders):
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            url = urlparse(self.path)
            if url.path != path:
                return self.answer(404, {"error": f"this downstream serves {path}"})
            day = parse_qs(url.query).get("day", [""])[0]
            try:
                datetime.date.fromisoformat(day)
            except ValueError:
                return self.answer(400, {"error": "?day=YYYY-MM-DD is required"})
            threading.Event().wait(delay_s)
            self.answer(200, sample_day(day, work_orders)[path])

        def answer(self, status, body):
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    return Handler


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9001, help="work orders; crews and permits on the next two")
    parser.add_argument("--delay-ms", type=int, default=2000, help="before each answer (permits: twice)")
    parser.add_argument("--work-orders", type=int, default=12, help="work orders per day")
    args = parser.parse_args()

    delay = args.delay_ms / 1000
    servers = [
        ThreadingHTTPServer((args.host, args.port + i), handler_for(path, d, args.work_orders))
        for i, (path, d) in enumerate([("/work-orders", delay), ("/crews", delay), ("/permits", 2 * delay)])
    ]
    for s in servers:
        threading.Thread(target=s.serve_forever, daemon=True).start()
        host, port = s.server_address[:2]
        print(f"serving http://{host}:{port}", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
