#!/usr/bin/env python3
"""Turns the raw samples of benches/compare/run.sh into medians and pair-by-pair ratios.

  report.py --raw raw.tsv --meta meta.tsv --json results.json --md results-DATE.md

raw.tsv: run, figure, series, key, value (or NA), note — one sample per line.
Ratios against lakegate are computed per run (peer_run / lakegate_run, both measured in
the same run, interleaved) and the median of those ratios is reported; a ratio > 1 means
the peer's number is larger (more CPU, more memory, more latency — or, for handshake
rates, more handshakes per CPU-second).
"""

import argparse
import json
import re
import statistics
from collections import defaultdict

PEERS = ["lakegate", "haproxy", "stunnel", "nginx"]
KEYNAME = {"ecdsa": "ECDSA P-256", "rsa": "RSA-2048"}

# (figure id in raw.tsv, label, unit, better, with floor series, per key)
FIGURES = [
    ("up_cpu_per_gib", "(a) upload", "server CPU-s/GiB", "lower", "plain_up"),
    ("dn_cpu_per_gib", "(a) download", "server CPU-s/GiB", "lower", "plain_dn"),
    ("hs_full", "(b) full mTLS handshakes", "per server CPU-s", "higher", None),
    ("hs_fresh", "(b) full mTLS handshakes, a new client certificate each", "per server CPU-s", "higher", None),
    ("hs_resumed", "(b) resumed handshakes", "per server CPU-s", "higher", None),
    ("hs_p99_ms", "(c) p99 handshake latency at 50% of lakegate's peak", "ms", "lower", None),
    ("idle_kib", "(d) memory per idle mTLS connection", "KiB RSS", "lower", None),
]
# panel titles for the chart (a panel is ~440 px wide)
SHORT = {
    "up_cpu_per_gib": "(a) upload, server CPU-s/GiB",
    "dn_cpu_per_gib": "(a) download, server CPU-s/GiB",
    "hs_full": "(b) full handshakes per CPU-s",
    "hs_fresh": "(b) full, new client cert, per CPU-s",
    "hs_resumed": "(b) resumed handshakes per CPU-s",
    "hs_p99_ms": "(c) p99 handshake ms @ 50% peak",
    "idle_kib": "(d) KiB RSS per idle connection",
}
SHORTKEY = {"ecdsa": "ECDSA", "rsa": "RSA"}


def num(v):
    return None if v in ("NA", "", None) else float(v)


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def fmt(v, fig=""):
    if v is None:
        return "n/a"
    if fig.startswith(("hs_full", "hs_fresh", "hs_resumed")):
        return f"{v:.0f}"
    if fig == "idle_kib":
        return f"{v:.1f}"
    if fig == "hs_p99_ms":
        return f"{v:.2f}"
    return f"{v:.3f}"


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--raw", required=True)
    p.add_argument("--meta", required=True)
    p.add_argument("--json", required=True)
    p.add_argument("--md", required=True)
    a = p.parse_args()

    meta = {}
    for line in open(a.meta):
        k, _, v = line.rstrip("\n").partition("\t")
        meta[k] = v
    # samples[(figure, series, key)][run] = value; notes likewise
    samples = defaultdict(dict)
    notes = defaultdict(dict)
    runs = set()
    for line in open(a.raw):
        f = line.rstrip("\n").split("\t")
        if len(f) < 5:
            continue
        run, fig, series, key, value = int(f[0]), f[1], f[2], f[3], f[4]
        runs.add(run)
        samples[(fig, series, key)][run] = num(value)
        notes[(fig, series, key)][run] = f[5] if len(f) > 5 else ""
    runs = sorted(runs)
    peers = [x for x in PEERS if any(s == x for (_, s, _) in samples)]
    keys = [k for k in ("ecdsa", "rsa") if any(kk == k for (_, _, kk) in samples)]
    bulk_key = next((k for (f, _, k) in samples if f == "up_cpu_per_gib"), keys[0] if keys else "ecdsa")

    # the floor, per run: AES-GCM open + plaintext relay
    for fig, _, _, _, plain in FIGURES:
        if plain:
            aead = samples.get(("aead", "floor", bulk_key), {})
            rel = samples.get((plain, "floor", bulk_key), {})
            samples[(fig, "floor", bulk_key)] = {
                r: aead[r] + rel[r]
                for r in runs
                if aead.get(r) is not None and rel.get(r) is not None
            }

    def series_of(fig, name, key):
        vals = samples.get((fig, name, key), {})
        base = samples.get((fig, "lakegate", key), {})
        per_run = [vals.get(r) for r in runs]
        ratios = [
            vals[r] / base[r]
            for r in runs
            if vals.get(r) is not None and base.get(r) not in (None, 0)
        ]
        n_na = sum(1 for r in runs if r in vals and vals[r] is None)
        return {
            "name": name,
            "median": med(per_run),
            "runs": per_run,
            "ratio_vs_lakegate": med(ratios) if ratios else None,
            "ratio_runs": ratios,
            "not_measurable_runs": n_na,
            "notes": [notes.get((fig, name, key), {}).get(r, "") for r in runs],
        }

    figures = []
    for fig, label, unit, better, plain in FIGURES:
        fkeys = keys if fig.startswith("hs_") else [bulk_key]
        for key in fkeys:
            if not any(samples.get((fig, s, key)) for s in peers):
                continue
            names = peers + (["floor"] if plain else [])
            figures.append(
                {
                    "id": f"{fig}.{key}",
                    "label": f"{label}, {KEYNAME.get(key, key)}" if fig.startswith("hs_") else label,
                    "short": SHORT[fig] + (f", {SHORTKEY.get(key, key)}" if fig.startswith("hs_") else ""),
                    "unit": unit,
                    "better": better,
                    "key": key,
                    "series": [series_of(fig, s, key) for s in names],
                }
            )
    extra = {}
    for key in keys:
        extra[f"lakegate_peak_full_hs_per_s.{key}"] = series_of("hs_full_rate", "lakegate", key)
        extra[f"p99_target_rate_per_s.{key}"] = series_of("lat_rate", "lakegate", key)
        for s in peers:
            extra[f"full_hs_per_s.{s}.{key}"] = series_of("hs_full_rate", s, key)
    for comp in ("aead", "plain_up", "plain_dn"):
        extra[f"floor_{comp}"] = series_of(comp, "floor", bulk_key)
    # The aims are stated as lakegate ÷ floor; the floor cell's bracket is floor ÷ lakegate.
    for fig, _, _, _, plain in FIGURES:
        if plain:
            lg = samples.get((fig, "lakegate", bulk_key), {})
            fl = samples.get((fig, "floor", bulk_key), {})
            per = [lg[r] / fl[r] if lg.get(r) is not None and fl.get(r) else None for r in runs]
            extra[f"lakegate_over_floor.{fig}"] = {"median": med(per), "runs": per}
    extra["loadavg_1min_at_run_start"] = [samples.get(("loadavg", "all", "-"), {}).get(r) for r in runs]

    doc = {
        "date": meta.get("date"),
        "runs": len(runs),
        "machine": {k: v for k, v in meta.items() if not k.startswith("probe.")},
        "sanity_probes": {k[6:]: v for k, v in meta.items() if k.startswith("probe.")},
        "ratio_definition": "per run: peer value / lakegate value (same run, interleaved); median over runs. >1 = peer's number is larger.",
        "figures": figures,
        "extra": extra,
    }
    with open(a.json, "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")

    # ---- Markdown ----
    m = meta
    out = []
    out.append(f"# Side-by-side mTLS termination benchmark, {m.get('date')}\n")
    out.append(f"Command: `{m.get('command')}`  \n")
    out.append(f"Machine: {m.get('cpu')}, {m.get('memory')}, kernel {m.get('kernel')}, TCP congestion control {m.get('tcp_cc')}, open files {m.get('nofile')}; loopback only; load average {m.get('loadavg')}; measured wall time {m.get('wall')}.  \n")
    out.append(f"Software: lakegate {m.get('lakegate')} (rustls {m.get('rustls')}); HAProxy {m.get('haproxy')}; stunnel {m.get('stunnel')}; nginx {m.get('nginx')}; OpenSSL {m.get('openssl')}; {m.get('python')}.  \n")
    out.append(f"Parameters: {m.get('params')}; negotiated suite {m.get('suite')} (TLS 1.3 only on every server).\n")
    out.append("")
    out.append(f"Each cell: median of {len(runs)} runs, and in brackets the median over runs of (peer / lakegate) measured in the same run. "
               "`floor` = aws-lc-rs AES-GCM open of the same bytes + HAProxy `mode tcp` (no TLS) relaying them, per run.\n")
    hdr = "| figure | better | " + " | ".join(peers) + " | floor |"
    out.append(hdr)
    out.append("|" + "---|" * (len(peers) + 3))
    for fg in figures:
        cells = []
        by = {s["name"]: s for s in fg["series"]}
        fid = fg["id"].split(".")[0]
        for s in peers + ["floor"]:
            if s not in by:
                cells.append("")
                continue
            x = by[s]
            if x["median"] is None:
                cells.append("n/a" + (" (not resumed)" if fid == "hs_resumed" else ""))
                continue
            c = fmt(x["median"], fid)
            if s != "lakegate" and x["ratio_vs_lakegate"] is not None:
                c += f" ({x['ratio_vs_lakegate']:.2f}×)"
            if x["not_measurable_runs"]:
                c += f" [{x['not_measurable_runs']} run(s) n/a]"
            cells.append(c)
        out.append(f"| {fg['label']} [{fg['unit']}] | {fg['better']} | " + " | ".join(cells) + " |")
    out.append("")
    out.append("![chart](chart.svg)\n")

    # where lakegate is behind
    behind = []
    for fg in figures:
        for s in fg["series"]:
            if s["name"] in ("lakegate", "floor") or s["ratio_vs_lakegate"] is None:
                continue
            r = s["ratio_vs_lakegate"]
            if (fg["better"] == "lower" and r < 1) or (fg["better"] == "higher" and r > 1):
                behind.append(f"- {fg['label']}: {s['name']} {fmt(s['median'], fg['id'].split('.')[0])} vs lakegate "
                              f"{fmt(next(x['median'] for x in fg['series'] if x['name'] == 'lakegate'), fg['id'].split('.')[0])} {fg['unit']} (ratio {r:.2f})")
    out.append("## Where lakegate is behind a peer\n")
    out.extend(behind or ["- nowhere in this run"])
    out.append("")

    out.append("## Context\n")
    out.append("| quantity | median | runs |")
    out.append("|---|---|---|")
    for k, v in extra.items():
        if isinstance(v, dict):
            out.append(f"| {k} | {fmt(v['median'], 'hs_full_rate' if 'per_s' in k else '')} | {' '.join(fmt(x, 'hs_full_rate' if 'per_s' in k else '') for x in v['runs'])} |")
        else:
            out.append(f"| {k} | | {' '.join('n/a' if x is None else f'{x:.2f}' for x in v)} |")
    out.append("")
    out.append("## Every sample\n")
    out.append("| figure | series | key | value per run | notes per run |")
    out.append("|---|---|---|---|---|")
    for (fig, s, key), vals in sorted(samples.items()):
        if fig == "loadavg":
            continue
        vs = " / ".join("NA" if vals.get(r) is None else fmt(vals[r], fig) for r in runs)
        ns = " / ".join(notes.get((fig, s, key), {}).get(r, "") or "" for r in runs)
        out.append(f"| {fig} | {s} | {key} | {vs} | {ns.replace('|', '/')} |")
    out.append("")
    out.append("## Notes\n")
    idle_n = m.get("idle_n") or (re.findall(r"IDLE_N=(\d+)", m.get("params", "")) or ["?"])[0]
    out.append(f"- (d) uses N = {idle_n} idle connections, not 10,000: open files are capped at "
               f"{m.get('nofile')} per process and a terminator holds two descriptors per connection "
               "(client + upstream), so 10,000 do not fit in one server process; N fits for every server "
               "(HAProxy maxconn 9600). RSS is VmRSS summed over the server's processes (nginx: master + "
               "worker), fresh instance, after one warm-up connection, before and after; `upstream_conns` "
               "in the samples is what the upstream counted.")
    out.append("- (a), (d) and the floor use the first key type only; the record layer does not depend on the "
               "server key. The download floor uses the AES-GCM *open* cost (GCM seal costs the same; the tool "
               "measures open).")
    out.append("- (b) `server_core_busy` < 100 % means the single client core, not the server, set the rate; "
               "handshakes per server CPU-second do not depend on that. (c)'s target is half of lakegate's "
               "rate in the same run and key type; `achieved` below the target means the server fell behind.")
    out.append("- A resumed figure is only reported when >= 90 % of the run's handshakes resumed.")
    out.append("")
    out.append("## Sanity probes (Python ssl client; run before measuring)\n")
    for k, v in doc["sanity_probes"].items():
        out.append(f"- {k}: {v}")
    out.append("")
    with open(a.md, "w") as f:
        f.write("\n".join(out))


if __name__ == "__main__":
    main()
