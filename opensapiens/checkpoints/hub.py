"""Official checkpoint names -> files on the Hugging Face Hub, downloaded once and then found offline.

Names read ``sapiens-{task}[-{keypoints}]-{size}[-{format}]``:
    sapiens-pose-308-1b (= sapiens-pose-1b), sapiens-pose-133-2b, sapiens-pose-17-0.3b,
    sapiens-seg-1b, sapiens-depth-2b, sapiens-normal-0.3b, sapiens-pretrain-1b,
and ``-torchscript`` / ``-bfloat16`` select the official "lite" exports of the same weights.
The ``sapiens-`` prefix is optional ("pose-1b" works).

Sapiens2 names read ``sapiens2-{task}-{size}``: pose (308 keypoints), seg (29 classes), normal and pointmap at 0.4b,
0.8b, 1b and 5b; pretrain also at 0.1b and 1b-4k (4096 x 3072 inputs through a window tokenizer). Their repos are
searched for the official file (root, task folder, anywhere listed), then for ``model.safetensors`` or the shards of
``model.safetensors.index.json``: Hugging Face transformers' files, which hold the same official keys
(tests/test_transformers_parity.py). A local save_pretrained folder loads as its files do.

``sapiens-nano`` is the small multi-task model shipped inside the package (docs/bundled_model.md).

Lookup order: an existing path; ``$OPENSAPIENS_CHECKPOINTS/<file>`` (default ``~/.cache/opensapiens``); the Hugging
Face cache (offline); a Hub download (online).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

SIZES = ("0.3b", "0.6b", "1b", "2b")

# (task, keypoints) -> {size: file stem}; values from the official docs (see reference/sapiens_v1_*.md).
_STEMS: dict[tuple[str, int | None], dict[str, str]] = {
    ("pose", 308): {s: f"sapiens_{s}_goliath_best_goliath_AP_{n}" for s, n in
                    (("0.3b", 573), ("0.6b", 609), ("1b", 639))},
    ("pose", 133): {s: f"sapiens_{s}_coco_wholebody_best_coco_wholebody_AP_{n}" for s, n in
                    zip(SIZES, (620, 695, 727, 745))},
    ("pose", 17): {s: f"sapiens_{s}_coco_best_coco_AP_{n}" for s, n in zip(SIZES, (796, 812, 821, 822))},
    ("seg", None): {s: f"sapiens_{s}_goliath_best_goliath_mIoU_{n}" for s, n in
                    zip(SIZES, ("7673_epoch_194", "7777_epoch_178", "7994_epoch_151", "8179_epoch_181"))},
    ("depth", None): {s: f"sapiens_{s}_render_people_epoch_{n}" for s, n in zip(SIZES, (100, 70, 88, 25))},
    ("normal", None): {s: f"sapiens_{s}_normal_render_people_epoch_{n}" for s, n in zip(SIZES, (66, 200, 115, 70))},
    ("pretrain", None): {s: f"sapiens_{s}_epoch_{n}" for s, n in zip(SIZES, (1600, 1600, 173, 660))},
}


@dataclass(frozen=True)
class HubFile:
    name: str  # canonical name, e.g. sapiens-pose-308-1b
    task: str  # pose | seg | depth | normal | pretrain
    size: str
    repo_id: str
    filename: str
    subfolder: str | None = None

    @property
    def url(self) -> str:
        sub = f"{self.subfolder}/" if self.subfolder else ""
        return f"https://huggingface.co/{self.repo_id}/blob/main/{sub}{self.filename}"


SIZES2 = ("0.4b", "0.8b", "1b", "5b")
TASKS2 = ("pose", "seg", "normal", "pointmap", "pretrain")
_NAME2 = re.compile(r"^sapiens2[-_](pose|seg|normal|pointmap|pretrain)[-_](0\.1b|0\.4b|0\.8b|1b[-_]4k|1b|5b)$")
_NAME = re.compile(r"^(?:sapiens[-_])?(pose|seg|depth|normal|pretrain)(?:[-_](308|133|17))?[-_](0\.3b|0\.6b|1b|2b)"
                   r"(?:[-_](torchscript|bfloat16))?$")


def parse_name(name: str) -> HubFile | None:
    """The Hub file behind an official model name, or None if ``name`` is not one."""
    if m := _NAME2.match(name.strip().lower()):
        task, size = m.groups()
        size = size.replace("_", "-")
        if size in ("0.1b", "1b-4k") and task != "pretrain":
            raise FileNotFoundError(f"{name}: no official Sapiens2 {task} checkpoint exists for size {size} "
                                    f"(available: {', '.join(SIZES2)})")
        return HubFile(f"sapiens2-{task}-{size}", task, size, f"facebook/sapiens2-{task}-{size}",
                       f"sapiens2_{size.replace('-', '_')}_{task}.safetensors")
    m = _NAME.match(name.strip().lower())
    if not m:
        return None
    task, kp, size, fmt = m.group(1), m.group(2), m.group(3), m.group(4)
    if task != "pose" and kp:
        return None
    kps = int(kp or 308) if task == "pose" else None
    stems = _STEMS[(task, kps)]
    if size not in stems:
        raise FileNotFoundError(f"{name}: no official {task}{'-' + str(kps) if kps else ''} checkpoint exists for "
                                f"size {size} (available: {', '.join(stems)})")
    stem = stems[size]
    canonical = f"sapiens-{task}{'-' + str(kps) if kps else ''}-{size}{'-' + fmt if fmt else ''}"
    if task == "pose" and kps in (17, 133):  # hosted in the third-party repo the official docs link to
        sub = (f"sapiens_lite_host/{fmt}" if fmt else "sapiens_host") + f"/pose/checkpoints/sapiens_{size}"
        filename = f"{stem}_{fmt}.pt2" if fmt else f"{stem}.pth"
        return HubFile(canonical, task, size, "noahcao/sapiens-pose-coco", filename, sub)
    if task == "pretrain" and not fmt:
        stem += "_clean"
    repo = f"facebook/sapiens-{task}-{size}" + (f"-{fmt}" if fmt else "")
    filename = f"{stem}_{fmt}.pt2" if fmt else f"{stem}.pth"
    return HubFile(canonical, task, size, repo, filename)


BUNDLED = Path(__file__).resolve().parents[1] / "assets" / "sapiens-nano.safetensors"
BUNDLED_NAMES = ("sapiens-nano", "nano", "bundled")


def local_dir() -> Path:
    return Path(os.environ.get("OPENSAPIENS_CHECKPOINTS") or Path.home() / ".cache" / "opensapiens").expanduser()


def resolve_checkpoint(name_or_path: str | os.PathLike) -> Path:
    """A local file for a path or an official model name; downloads through ``huggingface_hub`` when online."""
    path = Path(name_or_path).expanduser()
    if path.exists():
        return path
    if path.name == str(name_or_path) and (local_dir() / path.name).is_file():  # a bare file name, where we keep them
        return local_dir() / path.name
    if str(name_or_path).lower() in BUNDLED_NAMES:
        if not BUNDLED.is_file():
            raise FileNotFoundError(f"the bundled model is missing from this installation ({BUNDLED})")
        return BUNDLED
    hub = parse_name(str(name_or_path))
    if hub is None and path.name == str(name_or_path):  # an official file's own name: found or fetched as its model
        hub = next((h for h in (parse_name(f"{o.name}{fmt}") for o in official_names()
                                for fmt in ("", "-torchscript", "-bfloat16"))
                    if h is not None and h.filename == path.name), None)
    if hub is None:
        close = _close_names(str(name_or_path))
        hint = f"did you mean {' or '.join(close)}? " if close else ""
        raise FileNotFoundError(f"{name_or_path}: no such file (nor in {local_dir()}, $OPENSAPIENS_CHECKPOINTS), and "
                                f"not an official model name ({hint}e.g. sapiens-pose-1b, sapiens-seg-0.3b, "
                                "sapiens-depth-2b, sapiens-normal-1b, sapiens-pretrain-0.6b; see `opensapiens models`)")
    local = local_dir() / hub.filename
    if local.is_file():
        return local
    from huggingface_hub import hf_hub_download

    # Sapiens2's repo layout is known from its docs' local paths (pose/sapiens2_1b_pose.safetensors), not from the
    # Hub: the file at the root, in its task's folder, or (listed online) anywhere; the cache first, for offline use
    names = [hub.filename] + ([f"{hub.task}/{hub.filename}"] if hub.name.startswith("sapiens2-") else [])
    path, error = _fetch(hub.repo_id, names, hub.subfolder)
    if path is not None:
        return path
    if hub.name.startswith("sapiens2-"):
        if (found := _listed_file(hub)) is not None:
            return Path(hf_hub_download(hub.repo_id, found))
        # transformers' save_pretrained files: the official key layout under its own names, whole or in shards
        if (path := _fetch(hub.repo_id, ["model.safetensors"])[0]) is not None:
            return path
        path, shard_error = _fetch_sharded(hub.repo_id)
        if path is not None:
            return path
        if shard_error is not None:
            raise FileNotFoundError(f"{hub.name}: the repo's model.safetensors.index.json was found but {shard_error}")
    also = " (nor transformers' model.safetensors or model.safetensors.index.json)" \
        if hub.name.startswith("sapiens2-") else ""
    raise FileNotFoundError(
        f"{hub.name}: could not find or download {hub.filename}{also} ({type(error).__name__}: {error}).\n"
        f"Download it from {hub.url} and put it at {local} (or set OPENSAPIENS_CHECKPOINTS to its folder), "
        f"or pass the file's path instead of the name.") from error


def _listed_file(hub: HubFile) -> str | None:
    """The repo's one file named ``hub.filename`` in any folder (Sapiens2's layout is known from its docs' local
    paths, e.g. ``pose/sapiens2_1b_pose.safetensors``, not from the Hub), else None (offline, or none or several)."""
    from huggingface_hub import HfApi

    try:
        files = HfApi().list_repo_files(hub.repo_id)
    except Exception:  # noqa: BLE001 - offline or gated: the caller reports the download's own error
        return None
    found = [f for f in files if f.rsplit("/", 1)[-1] == hub.filename]
    return found[0] if len(found) == 1 else None


def _fetch(repo_id: str, names: list[str], subfolder: str | None = None) -> tuple[Path | None, Exception | None]:
    """The first of ``names`` in the repo, from the Hugging Face cache (offline machines, no round trip), else
    downloaded; else (None, the first download's error, which tells the user why, not a cache miss)."""
    from huggingface_hub import hf_hub_download

    error: Exception | None = None
    for offline in (True, False):
        for name in names:
            try:
                return Path(hf_hub_download(repo_id, name, subfolder=subfolder, local_files_only=offline)), None
            except Exception as e:  # noqa: BLE001 - offline, gated repo, renamed file...
                if not offline and error is None:
                    error = e
    return None, error


def _fetch_sharded(repo_id: str) -> tuple[Path | None, str | None]:
    """A sharded save's ``model.safetensors.index.json`` with every shard it lists beside it (in the Hugging Face
    cache's snapshot folder), fetched as ``_fetch`` does; (None, None) when the repo has no index, (None, what
    failed) when a shard cannot be had."""
    from .reader import CheckpointError, shard_index

    index, _ = _fetch(repo_id, ["model.safetensors.index.json"])
    if index is None:
        return None, None
    try:
        shards = shard_index(index)[1]
    except CheckpointError:
        return index, None  # the reader names what is wrong with it
    for shard in shards:
        path, error = _fetch(repo_id, [shard])
        if path is None:
            return None, f"its shard {shard} could not be had ({type(error).__name__}: {error})"
    return index, None


def _close_names(name: str) -> list[str]:
    """Official names (the full ones and the short ones ``parse_name`` takes) spelled like ``name``."""
    import difflib

    names = [o.name for o in official_names()]
    for short in (f"sapiens-{t}-{a}" for t in ("pose", "seg", "depth", "normal", "pretrain")
                  for a in ("0.3b", "0.6b", "1b", "2b")):
        try:
            if parse_name(short) is not None:
                names.append(short)
        except FileNotFoundError:  # a size that task was not released in
            pass
    return difflib.get_close_matches(name.lower(), list(dict.fromkeys(names)), n=3)


def official_names() -> list[HubFile]:
    """Every official checkpoint we know, for ``opensapiens models`` and the README table."""
    out = []
    for (task, kps), stems in _STEMS.items():
        for size in stems:
            out.append(parse_name(f"sapiens-{task}{'-' + str(kps) if kps else ''}-{size}"))
    for task in TASKS2:
        for size in (("0.1b",) if task == "pretrain" else ()) + SIZES2 + (("1b-4k",) if task == "pretrain" else ()):
            out.append(parse_name(f"sapiens2-{task}-{size}"))
    return out
