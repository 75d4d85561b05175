"""Regenerate opensapiens/metadata/sapiens_metadata.json from the reference metadata text.

Usage: python tools/gen_metadata.py ../shared/reference/goliath_metadata.txt
The JSON is committed; this script documents where every number came from.
"""

import ast
import json
import sys
from pathlib import Path


def parse(text: str) -> dict:
    lines = text.splitlines()
    sec = None
    out: dict = {"goliath": {"names": [], "flip": [], "sigmas": [], "groups": {}, "half_body": []},
                 "coco": {"names": [], "flip": [], "sigmas": []},
                 "wholebody": {"names": [], "flip": [], "sigmas": []},
                 "seg28": {"names": [], "palette": [], "class_weight": []},
                 "seg_face": {"names": []}}
    skel_links = []
    wb_map = []
    src34 = []
    for ln in lines:
        if ln.startswith("=== SECTION"):
            sec = int(ln.split()[2].rstrip(":"))
            continue
        if sec == 1:
            parts = ln.split("\t")
            if len(parts) == 6 and parts[0].isdigit():
                out["goliath"]["names"].append(parts[1])
                out["goliath"]["flip"].append(int(parts[2]))
                out["goliath"]["sigmas"].append(float(parts[3]))
                out["goliath"]["half_body"].append(parts[5])
            elif len(parts) == 5 and parts[0].isdigit() and parts[2] != "->":
                skel_links.append((int(parts[3]), int(parts[4])))
            elif len(parts) == 5 and parts[2] == "->":
                wb_map.append((int(parts[0]), int(parts[3])))
            for g in ("body", "foot", "left_hand", "right_hand", "extra"):
                if ln.startswith(f"{g} ("):
                    out["goliath"]["groups"][g] = ast.literal_eval(ln.split(":", 1)[1].strip())
        elif sec == 2:
            parts = ln.split("\t")
            if len(parts) == 4 and parts[0].isdigit():
                out["seg28"]["names"].append(parts[1])
                out["seg28"]["palette"].append(ast.literal_eval(parts[2]))
                out["seg28"]["class_weight"].append(float(parts[3]))
            elif len(parts) == 5 and parts[3] == "->":
                src34.append((parts[1], int(parts[4])))
            if ln.startswith("# horizontal-flip swap pairs"):
                pairs = ln.split(":", 1)[1].split()
                out["seg28"]["flip_pairs"] = [list(ast.literal_eval(p)) for p in pairs]
        elif sec == 3:
            parts = ln.split("\t")
            if len(parts) == 2 and parts[0].isdigit():
                out["seg_face"]["names"].append(parts[1])
            if ln.startswith("# flip swap pairs"):
                out["seg_face"]["flip_pairs"] = [list(ast.literal_eval(p)) for p in ln.split(":", 1)[1].split()]
        elif sec == 4:
            parts = ln.split("\t")
            if len(parts) == 5 and parts[0].isdigit():
                out["coco"]["names"].append(parts[1])
                out["coco"]["flip"].append(int(parts[2]))
                out["coco"]["sigmas"].append(float(parts[3]))
            if ln.startswith("# skeleton"):
                out["coco"]["skeleton"] = [list(p) for p in ast.literal_eval(ln.split(":", 1)[1].strip())]
        elif sec == 5:
            parts = ln.split("\t")
            if len(parts) == 4 and parts[0].isdigit():
                out["wholebody"]["names"].append(parts[1])
                out["wholebody"]["flip"].append(int(parts[2]))
                out["wholebody"]["sigmas"].append(float(parts[3]))
            if ln.startswith("# skeleton"):
                out["wholebody"]["skeleton"] = [list(p) for p in ast.literal_eval(ln.split(":", 1)[1].strip())]
    g = out["goliath"]
    g["groups"]["face"] = list(range(70, 308))
    g["skeleton"] = [list(p) for p in skel_links]
    g["wholebody_to_goliath"] = [list(p) for p in wb_map]
    out["seg28"]["source34_to_28"] = [t for _, t in src34]
    out["seg28"]["source34_names"] = [n for n, _ in src34]
    assert len(g["names"]) == 308 and len(g["skeleton"]) == 65 and len(wb_map) == 53
    assert len(out["coco"]["names"]) == 17 and len(out["wholebody"]["names"]) == 133
    assert len(out["seg28"]["names"]) == 28 and len(src34) == 34 and len(out["seg_face"]["names"]) == 19
    assert sorted(len(v) for v in g["groups"].values()) == [6, 7, 17, 20, 20, 238]
    for kp in (g, out["coco"], out["wholebody"]):
        assert all(kp["flip"][kp["flip"][i]] == i for i in range(len(kp["flip"])))
    return out


if __name__ == "__main__":
    data = parse(Path(sys.argv[1]).read_text())
    dst = Path(__file__).resolve().parents[1] / "opensapiens" / "metadata" / "sapiens_metadata.json"
    dst.write_text(json.dumps(data, separators=(",", ":")) + "\n")
    print("wrote", dst)
