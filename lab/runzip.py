"""A run as one .zip: written from a run folder, and read back as untrusted input.

`zip_run` writes the folder's files (spec, settings, data set, metrics, weights and, when
there is one, the checkpoint) under one top folder named after the run. `import_run_zip`
takes such a zip — or a run folder zipped by hand — through lab/safezip.py (size, member
count, zip bombs, traversal: never extracted by name), accepts only a run's own files
(JSON and safetensors; anything else, a pickle for one, refuses the archive), parses every
one (JSON, safetensors without pickle), builds the spec and checks that the weights and the
checkpoint's network fit it, and only then writes a new run folder (a temporary name
renamed into place). Every refusal is one line.
"""
from __future__ import annotations

import json
import os
import shutil
import zipfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors

import blocks
from lab.runs import (CHECKPOINT, CHECKPOINT_TENSORS, FILES, TMP_PREFIX, RunError, _NAME,
                      _free_name, _fsync)
from lab.safezip import SafeZip, UnsafeZipError, ZipLimits

RUN_ZIP_LIMITS = ZipLimits(max_total_bytes=1024 * 1024 * 1024, max_files=64)
JSON_FILES = ("spec.json", "settings.json", "dataset.json", CHECKPOINT)
# What zips made by hand on a Mac or Windows add; skipped without a word.
IGNORED = ("__MACOSX/", ".DS_Store", "Thumbs.db", "desktop.ini", ".lock")


def zip_run(run_dir: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Write the run folder `run_dir` as the zip `out` (a temporary name renamed onto it)."""
    src, out = Path(run_dir), Path(out)
    names = [n for n in FILES if (src / n).is_file()]
    if len(names) != len(FILES):
        raise RunError(f"{src} is not a complete run: "
                       f"{', '.join(sorted(set(FILES) - set(names)))} missing")
    if (src / CHECKPOINT).is_file():
        try:
            current = json.loads((src / CHECKPOINT).read_text(encoding="utf-8")).get("tensors")
        except (OSError, ValueError, AttributeError):
            current = None
        if isinstance(current, str) and CHECKPOINT_TENSORS.match(current) and (src / current).is_file():
            names += [current, CHECKPOINT]      # tensors before the JSON that names them
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    try:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
            for name in names:
                z.write(src / name, f"{src.name}/{name}")
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def _strip_top(names: list[str]) -> tuple[str, dict[str, str]]:
    """(top folder or "", member name -> name inside the run) for members all in one
    folder (zipped by hand) or all at the top."""
    tops = {n.split("/", 1)[0] for n in names if "/" in n}
    if len(tops) == 1 and all("/" in n for n in names):
        top = tops.pop()
        return top, {n: n.split("/", 1)[1] for n in names}
    return "", {n: n for n in names}


def _json(name: str, data: bytes):
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise RunError(f"{name} in the zip is not valid JSON ({str(e)[:80]})") from None


def _tensors(name: str, data: bytes) -> dict[str, torch.Tensor]:
    try:
        return load_safetensors(data)
    except (SafetensorError, ValueError, RuntimeError, OSError) as e:
        raise RunError(f"{name} in the zip is not a valid safetensors file "
                       f"({str(e).splitlines()[0][:80]}); refusing it") from None


def _fits(name: str, tensors: dict[str, torch.Tensor], want: dict[str, tuple]) -> None:
    got = {k: tuple(v.shape) for k, v in tensors.items()}
    if got != want:
        missing, extra = sorted(set(want) - set(got)), sorted(set(got) - set(want))
        wrong = [k for k in want if k in got and got[k] != want[k]]
        what = (f"{wrong[0]} is {list(got[wrong[0]])}, the spec makes {list(want[wrong[0]])}" if wrong
                else f"missing {missing[0]}" if missing else f"unexpected {extra[0]}")
        raise RunError(f"{name} in the zip does not fit its spec.json ({what})")


def read_run_zip(path: str | os.PathLike, limits: ZipLimits = RUN_ZIP_LIMITS) -> tuple[str, dict[str, bytes]]:
    """Check a run zip fully: (its top folder name or "", run file name -> bytes)."""
    try:
        with SafeZip(path, limits) as z:
            if z.report.unsafe:
                raise RunError(f"the zip has unsafe member names ({z.report.unsafe[0]}); refused")
            members = [i for i in z.members
                       if not any(z.name(i).startswith(p) or z.name(i).endswith("/" + p) or z.name(i) == p
                                  for p in IGNORED)]
            top, inner = _strip_top([z.name(i) for i in members])
            files: dict[str, bytes] = {}
            for info in members:
                name = inner[z.name(info)]
                if name not in FILES and name != CHECKPOINT and not CHECKPOINT_TENSORS.match(name):
                    raise RunError(f"the zip holds {z.name(info)[:80]!r}, which is not part of a run "
                                   f"(a run zip holds {', '.join(FILES)} and its checkpoint: JSON and "
                                   f"safetensors only)")
                if name in files:
                    raise RunError(f"the zip holds {name} twice")
                try:
                    files[name] = z.read(info)
                except (zipfile.BadZipFile, RuntimeError, ValueError, OSError, EOFError) as e:
                    raise RunError(f"{name} in the zip cannot be read ({str(e)[:80]})") from None
    except UnsafeZipError as e:
        raise RunError(str(e)) from None
    missing = [n for n in FILES if n not in files]
    if missing:
        raise RunError(f"the zip is not a run: {', '.join(missing)} missing")
    return top, files


def check_run_files(files: dict[str, bytes]) -> None:
    """Parse every file and check the weights (and a checkpoint's network) against the spec."""
    parsed = {n: _json(n, files[n]) for n in JSON_FILES if n in files}
    for n in ("spec.json", "settings.json", "dataset.json"):
        if not isinstance(parsed[n], dict):
            raise RunError(f"{n} in the zip must hold a JSON object")
    for i, line in enumerate(files["metrics.jsonl"].decode("utf-8", "replace").splitlines(), 1):
        if line.strip() and not isinstance(_json(f"metrics.jsonl line {i}", line.encode()), dict):
            raise RunError(f"metrics.jsonl line {i} in the zip is not an event object")
    try:
        model = blocks.build(parsed["spec.json"], device="meta")
    except blocks.SpecError as e:
        raise RunError(f"spec.json in the zip cannot be built: {e}") from None
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    _fits("weights.safetensors", _tensors("weights.safetensors", files["weights.safetensors"]), want)
    extra = [n for n in files if CHECKPOINT_TENSORS.match(n)]
    if CHECKPOINT in parsed:
        ck = parsed[CHECKPOINT]
        name = ck.get("tensors") if isinstance(ck, dict) else None
        if name not in files:
            raise RunError(f"{CHECKPOINT} in the zip names {str(name)[:60]!r}, which the zip lacks")
        tensors = _tensors(name, files[name])
        _fits(name, {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}, want)
        extra.remove(name)
    if extra:
        raise RunError(f"the zip holds {extra[0]}, which no {CHECKPOINT} names")


def import_run_zip(path: str | os.PathLike, root: str | os.PathLike,
                   limits: ZipLimits = RUN_ZIP_LIMITS) -> Path:
    """Check the run zip at `path` and write it as a new run folder under `root`; returns
    the folder. RunError (one line) for anything that is not a sound run."""
    top, files = read_run_zip(path, limits)
    check_run_files(files)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    spec_name = _json("spec.json", files["spec.json"]).get("name", "network")
    name = top if top and _NAME.match(top) and not (root / top).exists() else _free_name(root, str(spec_name))
    tmp = root / f"{TMP_PREFIX}{name}"
    tmp.mkdir()
    try:
        for file, data in files.items():
            (tmp / file).write_bytes(data)
            _fsync(tmp / file)
        os.replace(tmp, root / name)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return root / name
