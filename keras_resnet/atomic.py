"""Whole-file writes: a kill or a full disk leaves the previous file, never a truncated one."""

import json
import os


def atomic_save(save_fn, path):
    """Writes with `save_fn(tmp)` (a per-process name beside `path`, keeping its
    extension) then renames it over `path`; the temporary file never outlives a failure."""
    base, name = os.path.split(os.fspath(path))
    stem, dot, ext = name.partition(".")
    tmp = os.path.join(base, f"{stem}.tmp-{os.getpid()}{dot}{ext}")
    try:
        save_fn(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_text(path, text):
    with open(path, "w") as f:
        f.write(text)


def write_bytes_atomic(path, data):
    def write(tmp):
        with open(tmp, "wb") as f:
            f.write(data)
    atomic_save(write, path)


def write_json_atomic(path, value):
    atomic_save(lambda tmp: write_text(tmp, json.dumps(value, indent=2, sort_keys=True, default=str)), path)
