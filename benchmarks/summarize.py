"""Print the tables of BENCHMARKS.md from a run_all.py result file, or from a bench_peer.py one.

python benchmarks/summarize.py benchmarks/results.json
python benchmarks/summarize.py /tmp/peer.json      # like-for-like with torchvision (issue 18)
"""

from __future__ import annotations

import json
import sys


def f(v, nd=1):
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return str(v)


def main(path: str) -> None:
    res = json.load(open(path))
    m = res["machine"]
    print(
        f"Machine: {m['cpu_model']}, {m['os_cpu_count']} vCPUs, torch {m['torch']} ({m['torch_cpu_capability']}), "
        f"Python {m['python']}; run {res['started']} .. {res['finished']}; load at start {m['loadavg_at_start']}"
    )
    print(f"Command: `{res['command']}`\n")
    modes = res["modes"]

    print("### Inference, R50-FPN, batch 1, 2 threads (median ms)\n")
    print(
        "| malloc | input (padded) | model | total | network | post | post share | GFLOPs | network GFLOP/s "
        "| / roofline | peak RSS MB |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for mode, r in modes.items():
        for size, v in r.get("model", {}).get("infer", {}).items():
            for var in ("unfused", "fused"):
                x = v[var]
                print(
                    f"| {mode} | {v['input']} ({v['padded']}) | {var} | **{f(x['total']['median_ms'])}** | "
                    f"{f(x['network']['median_ms'])} | {f(x['post']['median_ms'])} | "
                    f"{f(100 * x['post_share_of_total'], 2)}% | {v['gflops']} | {x['network_gflops']} | "
                    f"**{x.get('network_roofline_ratio')}** | {x['peak_rss_mb']} |"
                )
    print()
    print("### Roofline: F.conv2d 3x3 256->256 on 1x256x100x100 (median GFLOP/s, start / end of the run)\n")
    print("| malloc | NCHW | channels_last | oneDNN packed | roofline used |")
    print("|---|---|---|---|---|")
    for mode, r in modes.items():
        rl = r.get("model", {}).get("roofline")
        if not rl:
            continue
        runs = rl["runs"]
        nchw = " / ".join(f(x["nchw"]["gflops_median"]) for x in runs)
        cl = " / ".join(f(x["channels_last"]["gflops_median"]) for x in runs)
        pk = " / ".join(f(x.get("onednn_packed", {}).get("gflops_median")) for x in runs)
        print(f"| {mode} | {nchw} | {cl} | {pk} | **{rl['roofline_gflops']}** |")
    print()
    print("### Post-processing alone (fused model's head outputs, median ms)\n")
    print("| malloc | input | score_thresh | total | of which NMS | boxes into NMS (classes) | detections |")
    print("|---|---|---|---|---|---|---|")
    for mode, r in modes.items():
        for size, p in r.get("model", {}).get("post", {}).items():
            for case in ("default", "worst_case"):
                x = p[case]
                print(
                    f"| {mode} | {size} | {x['score_thresh']} | **{f(x['median_ms'], 2)}** "
                    f"| {f(x['nms_median_ms'], 2)} "
                    f"| {x['nms_in_boxes']} ({x['nms_in_classes']}) | {x['detections']} |"
                )
    print()
    print("### Training step, R50-FPN, 512x512, batch 2, 5 boxes per image (median ms)\n")
    print(
        "| malloc | step | forward+loss | of which matching+losses | backward | optimizer | loss share | "
        "GFLOP fwd+bwd | GFLOP/s | / roofline | peak RSS MB (process) | first step |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for mode, r in modes.items():
        t = r.get("model", {}).get("train")
        if not t:
            continue
        print(
            f"| {mode} | **{f(t['step']['median_ms'], 0)}** | {f(t['forward_loss']['median_ms'], 0)} | "
            f"{f(t['loss_computation']['median_ms'], 0)} | {f(t['backward']['median_ms'], 0)} | "
            f"{f(t['optimizer']['median_ms'], 0)} | {f(100 * t['loss_share_of_step'], 2)}% | {t['gflops_fwd_bwd']} | "
            f"{t['step_gflops']} | **{t['step_roofline_ratio']}** (roofline {t['roofline']['roofline_gflops']}) | "
            f"**{t['peak_rss_process_mb']}** | {t['first_step_ms']} |"
        )
    print()
    print("### Focal loss, logits 2 x 120000 x 80, 1% positives, reduction sum (median ms)\n")
    print(
        "| malloc | variant | forward | fwd+bwd | x naive (fwd+bwd) | peak extra MB (steady / first call) | / naive |"
    )
    print("|---|---|---|---|---|---|---|")
    for mode, r in modes.items():
        fr = r.get("focal", {}).get("results", {})
        for name in ("naive", "ours_int", "ours_dense"):
            if name not in fr:
                continue
            x = fr[name]
            print(
                f"| {mode} | {name} | {f(x['fwd_ms_median'])} | **{f(x['fwd_bwd_ms_median'])}** | "
                f"{f(x['speedup_fwd_bwd_median'])} | {f(x['peak_extra_mb'])} / {f(x['peak_extra_cold_mb'])} | "
                f"{f(x.get('mem_ratio_mb'), 3)} / {f(x.get('mem_ratio_cold_mb'), 3)} |"
            )
    print()
    print("### Matching and NMS (bench_boxes)\n")
    print("| malloc | case | ms | peak extra RSS MB |")
    print("|---|---|---|---|")
    for mode, r in modes.items():
        b = r.get("boxes")
        if not b:
            continue
        for x in b["matcher"]:
            print(f"| {mode} | matcher {x['kind']} 500 gt x 200000 anchors | {f(x['ms'])} | {f(x['peak_extra_mb'])} |")
        for x in b["nms"]:
            print(
                f"| {mode} | {x['op']} {x['boxes']} boxes, {x['classes']} classes, {x['layout']} | {f(x['ms'], 2)} | |"
            )
    print()
    if any("peer" in r for r in modes.values()):
        print("### Side by side with the torchvision peer, same session (median ms)\n")
        print(
            "Different configurations (our default R50 against torchvision with trainable BatchNorm), "
            "superseded by the like-for-like `bench_peer.py`.\n"
        )
        print("| malloc | case | ours (fused) | peer | peer / ours |")
        print("|---|---|---|---|---|")
        for mode, r in modes.items():
            p = r.get("peer")
            if not p:
                continue
            ours = r.get("model", {})
            for e in p.get("eval", []):
                size = f"{e['image_hw'][0]}x{e['image_hw'][1]}"
                o = ours.get("infer", {}).get(size, {}).get("fused")
                if o:
                    for label, a, b in (
                        ("total", o["total"]["median_ms"], e["total"]["median_ms"]),
                        ("network", o["network"]["median_ms"], e["groups_median_ms"]["network_backbone_fpn_head"]),
                        (
                            "post-processing",
                            o["post"]["median_ms"],
                            e["groups_median_ms"]["postprocess_anchors_decode_nms"],
                        ),
                    ):
                        print(f"| {mode} | eval {size} {label} | {f(a)} | {f(b)} | {f(b / a, 2)} |")
                    print(f"| {mode} | eval {size} peak RSS MB | {o['peak_rss_mb']} | {e['peak_rss_mb']} | |")
                st = e.get("postprocess_stress")
                po = ours.get("post", {}).get(size, {}).get("worst_case")
                if st and po:
                    a, b = po["median_ms"], st["postprocess_detections"]["median_ms"]
                    print(
                        f"| {mode} | post worst case {size} (score 0, {po['nms_in_boxes']} / {st['nms_input_boxes']} "
                        f"boxes into NMS) | {f(a, 2)} | {f(b, 2)} | {f(b / a, 1)} |"
                    )
            t, pt = ours.get("train"), p.get("train")
            if t and pt:
                for label, a, b in (
                    ("train step", t["step"]["median_ms"], pt["step_total"]["median_ms"]),
                    ("train forward+loss", t["forward_loss"]["median_ms"], pt["forward_with_loss"]["median_ms"]),
                    (
                        "train matching+losses",
                        t["loss_computation"]["median_ms"],
                        pt["forward_stages_median_ms"].get("compute_loss"),
                    ),
                    ("train backward", t["backward"]["median_ms"], pt["backward"]["median_ms"]),
                    ("train optimizer", t["optimizer"]["median_ms"], pt["optimizer_step"]["median_ms"]),
                ):
                    print(f"| {mode} | {label} | {f(a)} | {f(b)} | {f(b / a, 2) if b else 'n/a'} |")
                print(
                    f"| {mode} | train peak RSS MB (process) | {t['peak_rss_process_mb']} | "
                    f"{p.get('process_peak_rss_mb')} | |"
                )
        print()
    print("### Targets (issue 5)\n")
    print("| target | measured | goal | ratio to goal | met |")
    print("|---|---|---|---|---|")
    for t in res["targets"]:
        print(
            f"| {t['target']} | {t['value']} | {t.get('kind', '')} {t['goal']} | {t.get('ratio_to_goal')} | "
            f"{'yes' if t['met'] else 'no' if t['met'] is not None else 'n/a'} |"
        )


NAMES = {
    "tv": "torchvision",
    "tv_cl": "torchvision, channels_last",
    "ours": "ours (NCHW, the preset: Winograd 3x3)",
    "ours_cl": "ours, channels_last (Winograd 3x3)",
    "ours_direct": "ours, NCHW, direct convs (model.winograd: false)",
    "ours_cl_direct": "ours, channels_last, direct convs (model.winograd: false)",
    "ours_fused": "ours, channels_last, BN folded, direct convs (Predictor with model.winograd: false)",
    "ours_wino": "ours, channels_last, BN folded, Winograd 3x3 (Predictor, the default)",
}
GOAL = 1.25  # issue 18: inference and training at least 1.25x faster than torchvision like-for-like


def primary_clock(res: dict) -> str:
    """CPU time with one thread (robust to a shared machine), wall time otherwise."""
    return "cpu" if res.get("threads") == 1 else "wall"


def peer_goals(res: dict) -> list[dict]:
    """Every variant of ours against torchvision, with the issue's goal, from this run's figures."""
    key = f"tv_over_this_{primary_clock(res)}"
    out = []
    for r in res.get("infer", []):
        for v, x in r["variants"].items():
            if v.startswith("ours"):
                out.append({"what": f"inference {r['input']}, {NAMES[v]}", "value": x[key], "goal": GOAL})
    for v, x in res.get("train", {}).get("variants", {}).items():
        if v.startswith("ours"):
            out.append({"what": f"training step, {NAMES[v]}", "value": x[key], "goal": GOAL})
    for g in out:
        g["clock"] = primary_clock(res)
        g["met"] = g["value"] is not None and g["value"] >= g["goal"]
    return out


def same(x: dict) -> str:
    """`` (yes)`` / `` (no)`` where the variant's detections were compared with torchvision's."""
    agree = x.get("vs_tv_detections")
    return "" if agree is None else " (yes)" if agree["ok"] else " (no)"


def _ms(x: dict) -> str:
    return f"{f(x['median_ms'])} [{f(x['min_ms'])}-{f(x['max_ms'])}]"


def peer_markdown(res: dict) -> str:
    """The tables of a bench_peer.py result (every figure from that one run)."""
    m = res["machine"]
    lines = [
        f"Machine: {m['cpu_model']}, {m['os_cpu_count']} vCPUs, torch {m['torch']} ({m['torch_cpu_capability']}), "
        f"torchvision {res['torchvision']}, {res.get('threads')} thread(s), malloc {res.get('malloc')}; "
        f"{res['started']} .. {res['finished']}; load average at start {m['loadavg_at_start']}; "
        f"`bench_peer.py {' '.join(res['argv'])}`",
        "",
    ]
    cfg = res.get("config", {})
    if cfg:
        lines += ["| model | parameters | trainable | norm layers | frozen in the backbone |", "|---|---|---|---|---|"]
        lines += [
            f"| {NAMES[v]} | {c['params']:,} | {c['trainable_params']:,} | {', '.join(c['norm_layers'])} | "
            f"{', '.join(c['frozen_backbone_parts'])} |"
            for v, c in cfg.items()
        ]
        lines.append("")
    if res.get("infer"):
        lines += [
            "Inference, batch 1 (ms: median [min-max]; ratios: median of the per-round torchvision / this):",
            "",
            "| input | model | CPU ms | wall ms | network CPU ms | boxes into NMS | detections (= torchvision's) "
            "| torchvision / this, CPU | wall | network CPU |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in res["infer"]:
            for v, x in r["variants"].items():
                lines.append(
                    f"| {r['input']} | {NAMES[v]} | {_ms(x['cpu'])} | {_ms(x['wall'])} | "
                    f"{f(x['net_cpu']['median_ms'])} | {x['nms_in_boxes']} | {x['detections']}{same(x)} | "
                    f"**{f(x['tv_over_this_cpu'], 2)}** | {f(x['tv_over_this_wall'], 2)} | "
                    f"{f(x['tv_over_this_net_cpu'], 2)} |"
                )
        lines.append("")
    if res.get("post"):
        lines += [
            "Post-processing alone (anchors, threshold, top-k, decode, NMS, best 300) on the same head outputs:",
            "",
            "| input | score_thresh | boxes into NMS (tv / ours) | detections (tv / ours) | torchvision CPU ms "
            "| ours CPU ms | torchvision / ours, CPU | wall |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in res["post"]:
            for t, x in r["thresholds"].items():
                a, b = x["tv"], x["ours"]
                lines.append(
                    f"| {r['input']} | {t} | {a['nms_in_boxes']} / {b['nms_in_boxes']} | "
                    f"{a['detections']} / {b['detections']} | {_ms(a['cpu'])} | {_ms(b['cpu'])} | "
                    f"**{f(b['tv_over_this_cpu'], 2)}** | {f(b['tv_over_this_wall'], 2)} |"
                )
        lines.append("")
    tr = res.get("train")
    if tr:
        lines += [
            f"Training step ({tr['images']}, SGD):",
            "",
            "| model | CPU ms | wall ms | trainable params | losses of the steps | torchvision / this, CPU | wall |",
            "|---|---|---|---|---|---|---|",
        ]
        for v, x in tr["variants"].items():
            lines.append(
                f"| {NAMES[v]} | {_ms(x['cpu'])} | {_ms(x['wall'])} | {x['trainable_params']:,} | "
                f"{', '.join(f(v2, 3) for v2 in x['losses'])} | **{f(x['tv_over_this_cpu'], 2)}** | "
                f"{f(x['tv_over_this_wall'], 2)} |"
            )
        lines.append("")
    if res.get("memory"):
        lines += [
            "Peak RSS, each in a fresh process (default malloc; one call after a warm-up call):",
            "",
            "| case | model | peak RSS MB | above RSS before the call |",
            "|---|---|---|---|",
        ]
        lines += [
            f"| {x['case']} | {NAMES[x['variant']]} | {x['peak_rss_mb']} | {x['above_before_mb']} |"
            for x in res["memory"]
        ]
        lines.append("")
    goals = peer_goals(res)
    if goals:
        clock = {"cpu": "CPU time", "wall": "wall time"}[goals[0]["clock"]]
        lines += [f"| goal (issue 18) | torchvision / ours ({clock}) | goal | met |", "|---|---|---|---|"]
        lines += [
            f"| {g['what']} | {f(g['value'], 2)} | >= {g['goal']} | {'yes' if g['met'] else 'no'} |" for g in goals
        ]
    return "\n".join(lines)


if __name__ == "__main__":
    path = sys.argv[1] if len(sys.argv) > 1 else "benchmarks/results.json"
    with open(path) as fh:
        data = json.load(fh)
    if "torchvision" in data:
        print(peer_markdown(data))
    else:
        main(path)
