#!/usr/bin/env python3
"""Per-visit tables from an ncu report's SASS source page (issue 10's backward comparisons).

Input: the text ncu writes for one profiled kernel (or several) with
    ncu -i REPORT.ncu-rep --page source --csv --print-source sass > X.sass.csv
and optionally its raw page (`ncu -i REPORT.ncu-rep --page raw --csv > X.raw.csv`).
`--visits N` divides the executed counts by the number of (q tile x kv tile) visits of the
launch (D64 dense B4 H16 L4096 with tiles of 128: 65536; causal: 33792), so two kernels of
the same tile compare per visit (docs/performance.md, session 16 and session 22 (bwd64n)).

Prints, per kernel in the file:
  1. executed warp instructions per visit by SASS class, with each class's share of the
     warp-stall samples;
  2. shared-memory wavefronts per visit by class (ncu's "L1 Wavefronts Shared" and its ideal
     count: the excess is bank conflicts), and the instructions with the most excess;
  3. the code cut into segments at waits and barriers (WARPGROUP.DEPBAR, BAR, SYNCS try-wait,
     MEMBAR, the first HGMMA of a run): per segment the executed instructions per visit, the
     main opcodes and the share of stall samples (with --cycles C, the SM-active cycles per
     visit that share stands for);
  4. with --raw, the key metrics of the raw page (duration, cycles, tensor pipe, IPC, stall
     reasons, shared-memory wavefronts and bank conflicts, registers, shared memory).
Columns are found by name, so the script tolerates ncu versions that add or reorder them;
a column it cannot find is reported as missing rather than guessed.
"""
import argparse
import csv
import re
import sys
from collections import OrderedDict, defaultdict

CLASSES = [
    ("wgmma", re.compile(r"^(HGMMA|WARPGROUP)")),
    ("mufu", re.compile(r"^MUFU")),
    ("fp32", re.compile(r"^(FFMA|FADD|FMUL|FSEL|FMNMX|FSETP|FCHK|FSWZADD|FMNMX)")),
    ("convert", re.compile(r"^(F2FP|F2F|I2F|F2I|I2FP|F2IP)")),
    ("lds", re.compile(r"^(LDS|LDSM)\b")),
    ("sts", re.compile(r"^STS\b")),
    ("stsm", re.compile(r"^STSM")),
    ("global", re.compile(r"^(LDG|STG|LDGSTS|RED|ATOM|ATOMG|LD|ST)\b")),
    ("local", re.compile(r"^(LDL|STL)")),
    ("tma/bulk", re.compile(r"^(UTMA|UBLK)")),
    ("uniform", re.compile(r"^U")),
    ("bar", re.compile(r"^BAR")),
    ("syncs", re.compile(r"^SYNCS")),
    ("fence", re.compile(r"^(MEMBAR|FENCE|DEPBAR|ERRBAR|CCTL)")),
    ("branch", re.compile(r"^(BRA|BSSY|BSYNC|YIELD|EXIT|CALL|RET|WARPSYNC|NOP|JMP|BREAK|BMOV)")),
    ("warp/special", re.compile(r"^(SHFL|VOTE|S2R|S2UR|CS2R|R2UR|MATCH|REDUX|ELECT|R2B|B2R)")),
    ("int", re.compile(r"^(IMAD|IADD|LOP|SHF|LEA|ISETP|SEL|MOV|PRMT|IABS|IMNMX|POPC|FLO|BREV|PLOP|P2R|R2P|VIADD|VIMNMX|IDP|HADD|HMUL|HFMA|BMSK|SGXT|LOP3|I)")),
]


def opcode(src):
    s = src.strip()
    s = re.sub(r"^@!?U?P[T0-9]+\s+", "", s)
    return s.split(" ")[0].rstrip(";") if s else ""


def klass(op):
    for name, rx in CLASSES:
        if rx.match(op):
            return name
    return "other"


def num(x):
    x = (x or "").strip().replace(",", "")
    if x in ("", "-", "n/a", "N/A"):
        return 0.0
    try:
        return float(x)
    except ValueError:
        return 0.0


def find_col(header, *names, exclude=()):
    """The index of the first column whose name (without '#', case-insensitive) equals one of
    `names`, else the first that contains one of them and none of `exclude`."""
    clean = [h.strip().lstrip("#").strip().lower() for h in header]
    for n in names:
        if n.lower() in clean:
            return clean.index(n.lower())
    for i, h in enumerate(clean):
        if any(n.lower() in h for n in names) and not any(e.lower() in h for e in exclude):
            return i
    return None


def read_kernels(path):
    """[(label, header, rows)] from a source-page CSV (one block per kernel)."""
    blocks, label, header, rows = [], "", None, []
    with open(path, newline="", errors="replace") as f:
        for row in csv.reader(f):
            if not row or all(not c.strip() for c in row):
                continue
            low = [c.strip().lstrip("#").strip().lower() for c in row]
            if "source" in low and any("address" in c for c in low):
                if header is not None and rows:
                    blocks.append((label, header, rows))
                header, rows = row, []
                continue
            if header is None or len(row) < 2:
                label = " ".join(c for c in row if c.strip())[:160] or label
                continue
            if len(row) < len(header) // 2:
                # a kernel's title line between blocks
                if rows:
                    blocks.append((label, header, rows))
                    header, rows = header, []
                label = " ".join(c for c in row if c.strip())[:160]
                continue
            rows.append(row)
    if header is not None and rows:
        blocks.append((label, header, rows))
    return blocks


BOUNDARY = re.compile(r"^(WARPGROUP\.DEPBAR|BAR\.|SYNCS\.PHASECHK|MEMBAR|SYNCS\.ARRIVE)")


def table(label, header, rows, visits, cycles, top):
    c_src = find_col(header, "Source")
    c_addr = find_col(header, "Address")
    c_exec = find_col(header, "Instructions Executed", exclude=("thread", "predicated"))
    c_samp = find_col(header, "Warp Stall Sampling (All Samples)", "Warp Stall Sampling (All Cycles)")
    c_wf = find_col(header, "L1 Wavefronts Shared", exclude=("ideal", "excessive"))
    c_wfi = find_col(header, "L1 Wavefronts Shared Ideal")
    stall_cols = [
        (i, h) for i, h in enumerate(header)
        if re.search(r"stall", h, re.I) and i not in (c_samp,) and "sampling" not in h.lower()
    ]
    print(f"=== {label or '(kernel)'}: {len(rows)} SASS lines")
    for name, c in [("Source", c_src), ("Instructions Executed", c_exec),
                    ("Warp Stall Sampling (All Samples)", c_samp),
                    ("L1 Wavefronts Shared", c_wf), ("L1 Wavefronts Shared Ideal", c_wfi)]:
        if c is None:
            print(f"  (column '{name}' not found)")
    if c_src is None or c_exec is None:
        print("  header:", header)
        return
    v = float(visits) if visits else 1.0
    per = "per visit" if visits else "total"
    lines = []
    for r in rows:
        src = r[c_src] if c_src < len(r) else ""
        op = opcode(src)
        lines.append({
            "addr": r[c_addr] if c_addr is not None and c_addr < len(r) else "",
            "src": src.strip(), "op": op, "k": klass(op),
            "exec": num(r[c_exec]) if c_exec < len(r) else 0.0,
            "samp": num(r[c_samp]) if c_samp is not None and c_samp < len(r) else 0.0,
            "wf": num(r[c_wf]) if c_wf is not None and c_wf < len(r) else 0.0,
            "wfi": num(r[c_wfi]) if c_wfi is not None and c_wfi < len(r) else 0.0,
            "stalls": {h: num(r[i]) for i, h in stall_cols if i < len(r)},
        })
    tot_exec = sum(x["exec"] for x in lines)
    tot_samp = sum(x["samp"] for x in lines) or 1.0
    # 1. classes
    by = OrderedDict((n, [0.0, 0.0, defaultdict(float)]) for n, _ in CLASSES)
    by["other"] = [0.0, 0.0, defaultdict(float)]
    for x in lines:
        b = by[x["k"]]
        b[0] += x["exec"]
        b[1] += x["samp"]
        b[2][x["op"].split(".")[0]] += x["exec"]
    print(f"  executed warp instructions {per}: {tot_exec / v:.1f} (total {tot_exec:.0f})")
    print(f"  | class | instr {per} | stall samples | main opcodes ({per}) |")
    print("  |---|---|---|---|")
    for n, (e, s, ops) in by.items():
        if e == 0 and s == 0:
            continue
        main = ", ".join(f"{o} {c / v:.0f}" for o, c in sorted(ops.items(), key=lambda t: -t[1])[:6])
        print(f"  | {n} | {e / v:.1f} | {100 * s / tot_samp:.1f}% | {main} |")
    # 2. shared memory
    if c_wf is not None:
        print(f"  shared-memory wavefronts {per} (ideal; excess = bank conflicts):")
        sm = defaultdict(lambda: [0.0, 0.0, 0.0])
        for x in lines:
            if x["wf"] or x["wfi"]:
                s = sm[x["op"]]
                s[0] += x["wf"]
                s[1] += x["wfi"]
                s[2] += x["exec"]
        for op, (wf, wfi, e) in sorted(sm.items(), key=lambda t: -t[1][0]):
            print(f"    {op:28s} instr {e / v:8.1f}  wavefronts {wf / v:9.1f}  ideal {wfi / v:9.1f}  excess {(wf - wfi) / v:8.1f}")
        worst = sorted(lines, key=lambda x: -(x["wf"] - x["wfi"]))[:top]
        worst = [x for x in worst if x["wf"] - x["wfi"] > 0]
        if worst:
            print("    most excess:")
            for x in worst:
                print(f"      {x['addr']} {x['src'][:70]:70s} wf {x['wf'] / v:.2f} ideal {x['wfi'] / v:.2f}")
    # 3. segments
    segs, cur = [], None
    prev_h = False
    for x in lines:
        is_h = x["op"].startswith("HGMMA")
        start = bool(BOUNDARY.match(x["op"])) or (is_h and not prev_h) or cur is None
        if start:
            cur = {"first": x["addr"], "lines": []}
            segs.append(cur)
        cur["lines"].append(x)
        prev_h = is_h
    print(f"  segments (cut at waits, barriers, HGMMA runs; {per}; shown: >= 0.5% of samples or >= 4 instr {per}):")
    print(f"  | first address | first instruction | instr {per} | main opcodes | samples |" + (" ~cycles |" if cycles else ""))
    print("  |---|---|---|---|---|" + ("---|" if cycles else ""))
    for s in segs:
        e = sum(x["exec"] for x in s["lines"])
        sp = sum(x["samp"] for x in s["lines"])
        if sp / tot_samp < 0.005 and e / v < 4:
            continue
        ops = defaultdict(float)
        for x in s["lines"]:
            ops[x["op"].split(".")[0]] += x["exec"]
        main = ", ".join(f"{o} {c / v:.0f}" for o, c in sorted(ops.items(), key=lambda t: -t[1])[:5])
        cyc = f" {cycles * sp / tot_samp:.0f} |" if cycles else ""
        print(f"  | {s['first']} | {s['lines'][0]['src'][:48]} | {e / v:.1f} | {main} | {100 * sp / tot_samp:.1f}% |{cyc}")
    # stall reasons per class, if the page has per-reason columns
    if stall_cols:
        print("  stall-reason columns (sum over all lines, share of their total):")
        tot = defaultdict(float)
        for x in lines:
            for h, val in x["stalls"].items():
                tot[h] += val
        allv = sum(tot.values()) or 1.0
        for h, val in sorted(tot.items(), key=lambda t: -t[1])[:16]:
            print(f"    {h}: {100 * val / allv:.1f}%")


RAW_KEYS = [
    r"^gpu__time_duration\.sum$", r"^sm__cycles_elapsed\.(avg|max)$", r"^sm__cycles_active\.avg$",
    r"^smsp__cycles_active\.avg$", r"sm__cycles_elapsed\.avg\.per_second$",
    r"pipe_tensor.*pct_of_peak_sustained_(active|elapsed)$", r"^sm__inst_executed\.avg\.per_cycle_active$",
    r"^smsp__inst_executed\.sum$", r"^sm__inst_executed\.sum$", r"^smsp__issue_active\.avg\.pct_of_peak_sustained_active$",
    r"^smsp__warps_active\.avg\.per_cycle_active$", r"^smsp__warps_eligible\.avg\.per_cycle_active$",
    r"^smsp__average_warp_latency_per_inst_issued\.ratio$", r"^smsp__average_warps_issue_stalled_.*_per_issue_active\.ratio$",
    r"^l1tex__data_pipe_lsu_wavefronts_mem_shared.*\.sum$", r"^l1tex__data_bank_conflicts_pipe_lsu_mem_shared.*\.sum$",
    r"^smsp__sass_inst_executed_op_shared.*\.sum$", r"^launch__registers_per_thread$", r"^launch__shared_mem_per_block.*$",
    r"^launch__grid_size$", r"^launch__block_size$", r"^sm__warps_active\.avg\.pct_of_peak_sustained_active$",
    r"^l1tex__throughput\.avg\.pct_of_peak_sustained_active$", r"^dram__throughput\.avg\.pct_of_peak_sustained_elapsed$",
    r"^lts__throughput\.avg\.pct_of_peak_sustained_elapsed$", r"^sm__pipe_shared_cycles_active.*", r"^smsp__inst_executed_pipe_.*\.sum$",
]


def raw(path, visits, sms):
    with open(path, newline="", errors="replace") as f:
        rows = [r for r in csv.reader(f) if r]
    hi = next((i for i, r in enumerate(rows) if any(c.strip() == "Kernel Name" for c in r)), None)
    if hi is None:
        print(f"=== raw {path}: no header row")
        return
    header = rows[hi]
    data = [r for r in rows[hi + 1:] if len(r) == len(header)]
    units = data[0] if data and not any(re.match(r"^\d", c) for c in data[0][3:10]) else None
    if units:
        data = data[1:]
    rx = [re.compile(k) for k in RAW_KEYS]
    kn = header.index("Kernel Name")
    for r in data:
        print(f"=== raw: {r[kn][:100]}")
        for i, h in enumerate(header):
            if any(x.search(h) for x in rx):
                u = f" {units[i]}" if units else ""
                extra = ""
                if visits and ("wavefronts" in h or "bank_conflicts" in h or h.endswith("inst_executed.sum")) and h.endswith(".sum"):
                    extra = f"   ({num(r[i]) / visits:.1f} per visit)"
                if visits and h in ("sm__cycles_active.avg", "sm__cycles_elapsed.avg", "sm__cycles_elapsed.max"):
                    extra = f"   ({num(r[i]) * sms / visits:.0f} per visit at {sms} SMs)"
                print(f"  {h} = {r[i]}{u}{extra}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("sass_csv", nargs="?")
    ap.add_argument("--visits", type=float, default=0, help="visits of the launch (per-visit numbers)")
    ap.add_argument("--cycles", type=float, default=0, help="SM-active cycles per visit (segments' ~cycles)")
    ap.add_argument("--raw", help="the raw page's CSV")
    ap.add_argument("--sms", type=int, default=132)
    ap.add_argument("--top", type=int, default=8)
    ap.add_argument("--kernel", type=int, default=None, help="only the kernel block with this index")
    a = ap.parse_args()
    if a.raw:
        raw(a.raw, a.visits, a.sms)
    if a.sass_csv:
        blocks = read_kernels(a.sass_csv)
        if not blocks:
            print(f"{a.sass_csv}: no source-page block found", file=sys.stderr)
            return 2
        for i, (label, header, rows) in enumerate(blocks):
            if a.kernel is None or a.kernel == i:
                table(f"[{i}] {label}", header, rows, a.visits, a.cycles, a.top)
    return 0


if __name__ == "__main__":
    sys.exit(main())
