#!/usr/bin/env python3
"""Turns the measurements of benches/load/run.sh into the table (stdout) and the JSON file.

Usage: report.py RESULTS_TSV NOTES OUT_JSON REPO_ROOT key=value...
"""

import datetime
import json
import statistics
import os
import platform
import subprocess
import sys


def sh(*cmd):
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
        return (out.stdout or out.stderr).strip().splitlines()[0]
    except Exception:
        return None


def machine(root):
    cpu = None
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = None
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal"):
                mem = int(line.split()[1]) // 1024
    except OSError:
        pass
    return {
        "hostname": platform.node(),
        "kernel": platform.release(),
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "memory_mib": mem,
        "commit": sh("git", "-C", root, "rev-parse", "HEAD"),
        "dirty": bool(sh("git", "-C", root, "status", "--porcelain", "--untracked-files=no")),
        "versions": {
            "wrk": sh("wrk", "--version"),
            "h2load": sh("h2load", "--version"),
            "nginx": sh("nginx", "-v"),
            "haproxy": sh("haproxy", "-v"),
            "caddy": sh("caddy", "version"),
            "openssl": sh("openssl", "version"),
        },
    }


def base_scenario(s):
    """The scenario whose origin and nginx rows a row's ratios are taken against."""
    return s if s in ("64k", "paced") else "small"


def merge_rounds(rows):
    """One row per (target, scenario, proto): the median of its rounds (ROUNDS > 1), errors summed, with every
    round's req/s kept in `req_per_s_rounds`."""
    groups = {}
    for r in rows:
        groups.setdefault((r["target"], r["scenario"], r["proto"]), []).append(r)
    merged = []
    for runs in groups.values():
        if len(runs) == 1:
            merged.append(runs[0])
            continue
        m = dict(runs[0])
        for k in ("req_per_s", "p50_ms", "p99_ms", "cpu_us_per_req", "user_cpu_share", "loadgen_cpu_us_per_req",
                  "origin_cpu_us_per_req", "rss_idle_mib", "pss_idle_mib",
                  "rss_load_mib", "pss_load_mib", "proxy_core_busy_pct", "load_core_busy_pct", "other_cpu_pct"):
            values = [x[k] for x in runs if x[k] is not None]
            m[k] = statistics.median(values) if values else None
        m["requests"] = sum(x["requests"] for x in runs)
        m["seconds"] = round(sum(x["seconds"] for x in runs), 3)
        m["errors"] = sum(x["errors"] for x in runs)
        m["req_per_s_rounds"] = [x["req_per_s"] for x in runs]
        merged.append(m)
    return merged


def main():
    results_tsv, notes_file, out, root = sys.argv[1:5]
    params = dict(a.split("=", 1) for a in sys.argv[5:])
    rows = []
    for line in open(results_tsv):
        f = line.rstrip("\n").split("\t")
        if len(f) < 17:
            continue
        target, scenario, proto = f[0], f[1], f[2]
        reqs, dur_us, p50, p99, ticks, clk = (int(x or 0) for x in f[3:9])
        idle_rss, idle_pss, load_rss, load_pss, errors, proxy_core, load_core, other = (
            int(x or 0) for x in f[9:17])
        tokens = int(f[17]) if len(f) > 17 and f[17] else None
        user_ticks = int(f[18]) if len(f) > 18 and f[18] else None
        gen_ticks = int(f[19]) if len(f) > 19 and f[19] else None
        origin_ticks = int(f[20]) if len(f) > 20 and f[20] else None
        cached = int(f[21]) if len(f) > 21 and f[21] else None
        per_req = lambda t: round(t / clk * 1e6 / reqs, 2) if reqs and t is not None else None
        rps = reqs / (dur_us / 1e6) if dur_us else 0.0
        rows.append({
            "target": target,
            "scenario": scenario,
            "proto": proto,
            "requests": reqs,
            "seconds": round(dur_us / 1e6, 3),
            "req_per_s": round(rps, 1),
            "p50_ms": round(p50 / 1000, 3),
            "p99_ms": round(p99 / 1000, 3),
            "cpu_us_per_req": round(ticks / clk * 1e6 / reqs, 2) if reqs else None,
            # The share of that CPU spent in user space; the rest is the kernel (loopback TCP, system calls).
            "user_cpu_share": round(user_ticks / ticks, 3) if ticks and user_ticks is not None else None,
            # The other core: what the load generator and the origin spent per request. With that core near 100%
            # busy, a proxy that makes them work more per request is held to fewer req/s.
            "loadgen_cpu_us_per_req": per_req(gen_ticks),
            "origin_cpu_us_per_req": per_req(origin_ticks) if target != "origin" else None,
            "rss_idle_mib": round(idle_rss / 1024, 1),
            "pss_idle_mib": round(idle_pss / 1024, 1),
            "rss_load_mib": round(load_rss / 1024, 1),
            "pss_load_mib": round(load_pss / 1024, 1),
            "errors": errors,
            "proxy_core_busy_pct": proxy_core,
            "load_core_busy_pct": load_core,
            "other_cpu_pct": other,
            "distinct_tokens": tokens,
            "cached_tokens": cached,
        })
    rows = merge_rounds(rows)
    index = {(r["target"], r["scenario"], r["proto"]): r for r in rows}

    def rps(t, s, p):
        r = index.get((t, s, p))
        return r["req_per_s"] if r else None

    def ratio(a, b):
        return round(a / b, 3) if a and b else None

    for r in rows:
        b = base_scenario(r["scenario"])
        r["ratio_to_origin"] = ratio(r["req_per_s"], rps("origin", b, r["proto"]))
        r["ratio_to_nginx"] = ratio(r["req_per_s"], rps("nginx", b, r["proto"]))
        if r["scenario"].startswith("jwt-") and r["scenario"].endswith("-miss"):
            # The verified-token cache held C tokens after the run (as many as auth.token_cache_mib allows):
            # rotating through N distinct ones, at most C/N of the requests can hit it.
            n, c = r["distinct_tokens"] or 0, r["cached_tokens"]
            r["max_cache_hit_share"] = round(min(1.0, c / n), 3) if n and c is not None else None

    head = ["target", "scenario", "proto", "req/s", "p50 ms", "p99 ms", "CPU us/req", "user %", "gen+origin us",
            "RSS MiB", "PSS MiB",
            "idle RSS", "core P/L/other %", "x origin", "x nginx"]
    table = [head]
    fmt = lambda v, d=2: "-" if v is None else (f"{v:.{d}f}" if isinstance(v, float) else str(v))
    for r in rows:
        table.append([r["target"], r["scenario"], r["proto"], fmt(r["req_per_s"], 0), fmt(r["p50_ms"]),
                      fmt(r["p99_ms"]), fmt(r["cpu_us_per_req"], 1),
                      fmt(None if r["user_cpu_share"] is None else round(100 * r["user_cpu_share"]), 0),
                      "-" if r["loadgen_cpu_us_per_req"] is None else
                      f'{r["loadgen_cpu_us_per_req"]:.1f}+{r["origin_cpu_us_per_req"] or 0:.1f}',
                      fmt(r["rss_load_mib"], 1),
                      fmt(r["pss_load_mib"], 1), fmt(r["rss_idle_mib"], 1),
                      f'{r["proxy_core_busy_pct"]}/{r["load_core_busy_pct"]}/{r["other_cpu_pct"]}', fmt(r["ratio_to_origin"]),
                      fmt(r["ratio_to_nginx"])])
    widths = [max(len(row[i]) for row in table) for i in range(len(head))]
    print()
    for i, row in enumerate(table):
        print("  ".join(c.ljust(w) if j < 3 else c.rjust(w) for j, (c, w) in enumerate(zip(row, widths))))
        if i == 0:
            print("  ".join("-" * w for w in widths))

    # The targets of issue 6, from this run's own ratios.
    checks = []

    def check(name, value, goal, ok):
        checks.append({"target": name, "value": value, "goal": goal,
                       "met": None if value is None else bool(ok)})

    def rec(t, s, p):
        return index.get((t, s, p))

    def load_side_us(r):
        """CPU µs per request of the load generator and the origin (the other core), or None."""
        if not r["loadgen_cpu_us_per_req"]:
            return None
        return r["loadgen_cpu_us_per_req"] + (r["origin_cpu_us_per_req"] or 0)

    # Under PROXY_QUOTA a proxy that spends its share of a period waits for the next one: p99 is that stall, the
    # same for every proxy, so the latency targets are left to uncapped runs.
    capped = params.get("proxy_quota_pct")
    for p in ("h1", "h2"):
        pc, ng = rec("portcullis", "small", p), rec("nginx", "small", p)
        if pc and ng:
            check(f"bypass small {p}: req/s vs nginx", ratio(pc["req_per_s"], ng["req_per_s"]), ">= 1.2",
                  pc["req_per_s"] >= 1.2 * ng["req_per_s"])
            if not capped:
                check(f"bypass small {p}: p99 vs nginx", ratio(pc["p99_ms"], ng["p99_ms"]), "<= 1.0",
                      pc["p99_ms"] <= ng["p99_ms"])
        # At a fixed rate below saturation, so that p99 is the proxy's and not the load core's queue.
        pc, ng = rec("portcullis", "paced", p), rec("nginx", "paced", p)
        if pc and ng and not capped:
            check(f"bypass paced {p} ({params.get('paced_rps', '?')} req/s): p99 vs nginx",
                  ratio(pc["p99_ms"], ng["p99_ms"]), "<= 1.0", pc["p99_ms"] <= ng["p99_ms"])
        pc, ng = rec("portcullis", "64k", p), rec("nginx", "64k", p)
        if pc and ng:
            check(f"64 KiB {p}: req/s vs nginx", ratio(pc["req_per_s"], ng["req_per_s"]), ">= 1.0",
                  pc["req_per_s"] >= ng["req_per_s"])
        for r in rows:
            protected = r["scenario"].endswith("-hit") or r["scenario"] == "session"
            if r["target"] != "portcullis" or r["proto"] != p or not protected:
                continue
            byp, ng, ar = rec("portcullis", "small", p), rec("nginx", "small", p), rec(
                "nginx+auth_request", "auth_request", p)
            s = r["scenario"]
            if byp:
                v = ratio(r["req_per_s"], byp["req_per_s"])
                check(f"{s} {p}: req/s vs bypass", v, ">= 0.9", v is not None and v >= 0.9)
                if capped:
                    # The proxy's core is the bound: the ratio its own CPU per request allows.
                    r["proxy_side_bound_vs_bypass"] = ratio(byp["cpu_us_per_req"], r["cpu_us_per_req"])
                else:
                    # With the load core at its ceiling, the ratio its extra work alone allows: the client sending
                    # the credential and the origin receiving the identity headers.
                    r["load_side_bound_vs_bypass"] = ratio(load_side_us(byp), load_side_us(r))
            if ng:
                v = ratio(r["req_per_s"], ng["req_per_s"])
                check(f"{s} {p}: req/s vs nginx", v, ">= 1.1", v is not None and v >= 1.1)
            if ar:
                v = ratio(r["req_per_s"], ar["req_per_s"])
                check(f"{s} {p}: req/s vs nginx+auth_request", v, ">= 1.5", v is not None and v >= 1.5)
    pcs = [r for r in rows if r["target"] == "portcullis"]
    for s in ("small", "64k"):
        for p in ("h1", "h2"):
            pc, ha = rec("portcullis", s, p), rec("haproxy", s, p)
            if pc and ha:
                a, b = pc["rss_load_mib"], ha["rss_load_mib"]
                check(f"memory under load, {s} {p}: RSS vs HAProxy", ratio(a, b), "<= 1.0", a <= b)
    if pcs:
        idle = min(r["rss_idle_mib"] for r in pcs)
        check("idle RSS MiB", idle, "< 20", idle < 20)
    if checks:
        print("\nTargets (issue 6)" + (f", every proxy capped at {capped}% of its core (PROXY_QUOTA; p99 left to"
                                             " uncapped runs):" if capped else ":"))
        for c in checks:
            mark = {True: "met", False: "NOT met", None: "n/a"}[c["met"]]
            print(f"  {c['target']:<48} {fmt(c['value'], 3):>8}  goal {c['goal']:<7} {mark}")
    side = "proxy_side_bound_vs_bypass" if capped else "load_side_bound_vs_bypass"
    bound_rows = [r for r in rows if r.get(side)]
    if bound_rows:
        if capped:
            print("\nProtected routes against the bypass route, and the ratio the proxy's own CPU allows under the cap"
                  "\n(bypass proxy CPU us per request over this route's):")
        else:
            print("\nProtected routes against the bypass route, and the ratio the load core alone allows (bypass load"
                  "\ngenerator + origin CPU us per request over this route's):")
        for r in bound_rows:
            byp = rec("portcullis", "small", r["proto"])
            print(f'  {r["scenario"]:<14} {r["proto"]}  {ratio(r["req_per_s"], byp["req_per_s"]):.3f}  '
                  f'{"proxy" if capped else "load"}-side bound {r[side]:.3f}  (proxy CPU {r["cpu_us_per_req"]} '
                  f'against {byp["cpu_us_per_req"]} us)')
    # What holds each proxy's req/s on the bypass route: its own core (capacity: what one whole core would carry at
    # the CPU it spent per request) or the other core, where the load generator and the origin run (ceiling: what
    # that core can carry at their CPU per request). With the load core near 100% busy, req/s sits at the ceiling,
    # and the ratio of two proxies' req/s tells only how much work each makes the load generator and origin do.
    # With PROXY_QUOTA the proxy's cgroup may use only that share of its core, so its capacity is that share.
    quota = int(params.get("proxy_quota_pct", 100)) / 100
    bounds = []
    for s in ("small", "64k"):
        for p in ("h1", "h2"):
            for t in ("portcullis", "nginx", "haproxy", "caddy"):
                r = rec(t, s, p)
                side = load_side_us(r) if r else None
                if not side or not r["cpu_us_per_req"]:
                    continue
                bounds.append({"target": t, "scenario": s, "proto": p, "req_per_s": r["req_per_s"],
                               "capacity_req_per_s": round(quota * 1e6 / r["cpu_us_per_req"]),
                               "ceiling_req_per_s": round(1e6 / side),
                               "load_core_busy_pct": r["load_core_busy_pct"]})
    if bounds:
        share = "one whole proxy core" if quota == 1 else f"the proxy's cap, {quota:.0%} of a core (PROXY_QUOTA)"
        print(f"\nWhat bounds req/s: capacity = {quota:g} x 1e6 / proxy CPU us per request ({share}); ceiling = 1e6 /"
              "\n(load generator + origin CPU us per request) (the whole load core):")
        for b in bounds:
            nb = next((x for x in bounds if x["target"] == "nginx" and x["scenario"] == b["scenario"]
                       and x["proto"] == b["proto"]), None)
            vs = f'  capacity vs nginx {ratio(b["capacity_req_per_s"], nb["capacity_req_per_s"]):.2f}' if nb else ""
            print(f'  {b["scenario"]:<6} {b["proto"]}  {b["target"]:<11} {b["req_per_s"]:>8.0f} req/s  capacity '
                  f'{b["capacity_req_per_s"]:>6}  ceiling {b["ceiling_req_per_s"]:>6} (load core '
                  f'{b["load_core_busy_pct"]}% busy){vs}')
    notes = [n.strip() for n in open(notes_file) if n.strip()]
    if notes:
        print("\nNotes:")
        for n in notes:
            print(f"  - {n}")

    doc = {
        "when": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(root),
        "parameters": params,
        "results": rows,
        "targets": checks,
        "bounds": bounds,
        "notes": notes,
    }
    with open(out, "w") as f:
        json.dump(doc, f, indent=2)
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
