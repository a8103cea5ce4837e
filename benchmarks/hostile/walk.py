"""The probe's generated and file-borne classes (issue 32, item 7).

- **request fields**: every field of the request schema (``answer_trt.schema``) with values
  made from its kind and bounds (wrong JSON types, one past each bound, NaN and infinities,
  null where it is not nullable), on every surface: the Python API, ``POST /v1/generate``,
  ``answer-trt generate`` (two values a field), then every field of A1111's txt2img body
  (``serving.models.A1111_FIELDS``) and of OpenAI's images body.
- **replay and PNG metadata**: ``generate --from-png`` on PNGs made here (wrong types and
  depths in answer-trt's record, A1111 infotext with impossible values, a 20000 x 20000
  header, a text bomb, files that are not PNGs).
- **model folders**: ``build --model`` on copies of ``tiny`` with one config value broken.
- **LoRA and variants**: ``build --lora`` with broken adapter files and weights.

Every input here is a refusal: one line (one JSON error for HTTP), exit 2 (4xx), no
traceback, nothing created or changed. The functions take the probe module (``p``) for its
helpers and its result list; ``probe.py`` calls them.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import zlib
from pathlib import Path
from typing import Any

NAN, INF = float("nan"), float("inf")


# --- request fields -------------------------------------------------------------------


def bad_values(kind: str, low: float | None, high: float | None, choices: tuple[str, ...] | None,
               nullable: bool) -> list[tuple[str, Any]]:
    """(label, value) pairs the field must refuse, from its schema kind and bounds."""
    values: list[tuple[str, Any]] = []
    if kind == "int":
        values += [("'2'", "2"), ("2.5", 2.5), ("true", True), ("[1]", [1])]
        values.append((f"{int(low) - 1}", int(low) - 1) if low is not None else ("-10**30", -10**30))
        values.append((f"{int(high) + 1}", int(high) + 1) if high is not None else ("10**30", 10**30))
    elif kind == "float":
        values += [("NaN", NAN), ("Infinity", INF), ("-Infinity", -INF), ("'1'", "1"), ("true", True)]
        if low is not None:
            values.append((f"{low - 1:g}", low - 1))
        if high is not None:
            values.append((f"{high + 1:g}", high + 1))
    elif kind == "str":
        values += [("5", 5), ("[]", []), ("{}", {"a": 1})]
        if choices:
            values += [("'nope'", "nope"), ("''", "")]
    elif kind == "ints":
        values += [("'1,2'", "1,2"), ("[-1]", [-1]), ("[2**64]", [2**64]), ("[1.5]", [1.5]), ("[]", []),
                   ("['a']", ["a"]), ("[true]", [True]), ("5", 5), ("300 seeds", list(range(300)))]
    if not nullable:
        values.append(("null", None))
    return values


def request_fields(p: Any, w: Any, pipe: Any, port: int, log: Any) -> None:
    cls = "request fields"
    from answer_trt.schema import info
    from answer_trt.schema import request_fields as schema_fields

    g = pipe.generate
    for f in schema_fields():
        fi = info(f)
        for label, value in bad_values(fi.kind, fi.low, fi.high, fi.choices, fi.nullable):
            name = f"{f.name}={label}"
            keywords = {"steps": 1} if f.name == "prompt" else {"steps": 1, f.name: value}
            prompt = value if f.name == "prompt" else "a"
            _api(p, w, cls, f"API {name}", lambda prompt=prompt, keywords=keywords: g(prompt, **keywords))
            body = {"prompt": "a", "steps": 1, f.name: value}
            p.http_case(cls, port, log, f"HTTP {name}", "POST", "/v1/generate", _json(body), "bad")
    # the CLI: two values a flag (a wrong type, one past a bound), as subprocesses
    for f in schema_fields():
        fi = info(f)
        if not fi.cli:
            continue
        flag = "--" + f.name.replace("_", "-")
        picks = {"int": ["x", str(int(fi.high) + 1) if fi.high is not None else "1e3"],
                 "float": ["x", "nan" if fi.high is None else f"{fi.high + 1:g}"],
                 "str": ["", "nope"] if fi.choices else [],
                 "ints": ["1,,2", "1,-2"]}[fi.kind]
        for value in picks:
            box = w.sandbox()
            p.run_case(cls, f"CLI {flag} {value!r}", w.gen(box / "x.png", flag, value), "user", w.env,
                       [w.engines, w.cache], box)
    _a1111(p, cls, port, log)
    _openai(p, cls, port, log)


def _json(obj: Any) -> bytes:
    return json.dumps(obj).encode()  # NaN and Infinity as Python writes them: the server must refuse them


def _api(p: Any, w: Any, cls: str, name: str, call: Any) -> None:
    from answer_trt.errors import UserInputError

    before = p.snap(w.engines, w.cache)
    try:
        call()
        outcome, clean, why = "returned", False, "accepted a bad input"
    except UserInputError as exc:
        text = str(exc)
        outcome, clean, why = f"UserInputError: {text[:160]}", "\n" not in text.strip(), ""
        if not clean:
            why = "message not one line"
    except Exception as exc:  # noqa: BLE001
        outcome, clean, why = f"{type(exc).__name__}: {str(exc)[:160]}", False, f"raised {type(exc).__name__}"
    changed = p.diff(before, p.snap(w.engines, w.cache))
    if clean and changed:
        clean, why = False, f"changed {changed[:3]}"
    p.record(cls, name, name, outcome=outcome, clean=clean, why=why, changed=changed)


_BY_TYPE: dict[str, list[tuple[str, Any]]] = {
    "bool": [("'yes'", "yes"), ("2", 2)],
    "int": [("'1'", "1"), ("1.5", 1.5)],
    "float": [("'x'", "x"), ("NaN", NAN)],
    "str": [("5", 5), ("[]", [])],
    "dict": [("[]", []), ("'x'", "x")],
    "list": [("'x'", "x"), ("[1]", [1])],
}
# Honoured A1111 fields: values A1111's own bounds or ours refuse.
_A1111_HONOURED: dict[str, list[tuple[str, Any]]] = {
    "prompt": [("5", 5), ("null", None), ("[]", [])],
    "negative_prompt": [("5", 5), ("{}", {})],
    "seed": [("'1'", "1"), ("1.5", 1.5), ("2**70", 2**70), ("-2", -2), ("true", True)],
    "batch_size": [("0", 0), ("10**6", 10**6), ("'1'", "1")],
    "n_iter": [("0", 0), ("10**6", 10**6), ("1.5", 1.5)],
    "steps": [("0", 0), ("-1", -1), ("'2'", "2"), ("10**6", 10**6)],
    "cfg_scale": [("NaN", NAN), ("'7'", "7"), ("1e309", INF), ("-1e9", -1e9)],
    "width": [("33", 33), ("0", 0), ("10**9", 10**9), ("'512'", "512")],
    "height": [("33", 33), ("-64", -64), ("1.5", 1.5)],
    "sampler_name": [("'???'", "???"), ("5", 5)],
    "sampler_index": [("'Euler b'", "Euler b"), ("[]", [])],
    "scheduler": [("'???'", "???"), ("5", 5)],
    "override_settings": [("[]", []), ("unknown setting", {"no_such_setting": 1}),
                          ("clip skip 99", {"CLIP_stop_at_last_layers": 99}),
                          ("another checkpoint", {"sd_model_checkpoint": "other.safetensors"}),
                          ("clip skip 'x'", {"CLIP_stop_at_last_layers": "x"})],
}


def _a1111(p: Any, cls: str, port: int, log: Any) -> None:
    from typing import get_origin

    from answer_trt.serving.models import A1111_FIELDS

    route = "/sdapi/v1/txt2img"
    for name, spec in A1111_FIELDS.items():
        if spec.use == "honoured":
            values = _A1111_HONOURED.get(name, [])
        else:
            annotation = get_origin(spec.annotation) or spec.annotation
            values = list(_BY_TYPE.get(getattr(annotation, "__name__", ""), []))
            if spec.use == "refused":  # a value that changes A1111's picture, which we cannot draw
                values.append(("not neutral", _not_neutral(spec.annotation, spec.neutral)))
        for label, value in values:
            body = {"prompt": "a", "steps": 1, name: value}
            p.http_case(cls, port, log, f"A1111 {name}={label}", "POST", route, _json(body), "bad")
    p.http_case(cls, port, log, "A1111 unknown field", "POST", route, _json({"prompt": "a", "stepz": 1}), "bad")
    p.http_case(cls, port, log, "A1111 seed -1 draws one", "POST", route, _json({"prompt": "a", "steps": 1,
                                                                                  "seed": -1}), "ok")


def _not_neutral(annotation: Any, neutral: tuple[Any, ...]) -> Any:
    from typing import get_origin

    kind = get_origin(annotation) or annotation
    for candidate in {bool: (True,), int: (7, 64), float: (0.5,), str: ("x",), list: (["a style"],),
                      dict: ({"a": 1},)}.get(kind, ("x",)):
        if candidate not in neutral:
            return candidate
    return "x"


def _openai(p: Any, cls: str, port: int, log: Any) -> None:
    route = "/v1/images/generations"
    cases: list[tuple[str, Any]] = [
        ("prompt", None), ("prompt", 5), ("prompt", []),
        ("n", 0), ("n", "1"), ("n", 1.5), ("n", 10**6), ("n", True),
        ("size", "0x0"), ("size", "33x33"), ("size", "axb"), ("size", 5), ("size", "99999x99999"), ("size", "64x"),
        ("response_format", "url"), ("response_format", "xml"), ("response_format", 5),
        ("model", "dall-e-9"), ("model", 5), ("output_format", "jpeg"), ("stream", True), ("stream", "yes"),
        ("quality", 5), ("style", []), ("user", {"a": 1}), ("background", 5), ("moderation", 5),
    ]
    for name, value in cases:
        p.http_case(cls, port, log, f"OpenAI {name}={value!r}"[:60], "POST", route,
                    _json({"prompt": "a", name: value} if name != "prompt" else {"prompt": value}), "bad")
    for label, body in [("unknown field", {"prompt": "a", "stepz": 1}),
                        ("seeds beside n", {"prompt": "a", "n": 2, "seeds": [1, 2, 3]}),
                        ("steps -1", {"prompt": "a", "steps": -1}),
                        ("guidance_scale NaN", {"prompt": "a", "guidance_scale": NAN})]:
        p.http_case(cls, port, log, f"OpenAI {label}", "POST", route, _json(body), "bad")


# --- replay and PNG metadata --------------------------------------------------------------


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_bytes(width: int, height: int, texts: dict[str, str] | None = None, ztxt: dict[str, bytes] | None = None,
              pixels: bool = True) -> bytes:
    """A grey RGB PNG written by hand (so its header may claim any size), with tEXt chunks
    ``texts`` and zTXt chunks ``ztxt`` (already-compressed payloads)."""
    head = _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    text = b"".join(_chunk(b"tEXt", k.encode("latin-1") + b"\0" + v.encode("latin-1", "replace"))
                    for k, v in (texts or {}).items())
    text += b"".join(_chunk(b"zTXt", k.encode("latin-1") + b"\0\0" + v) for k, v in (ztxt or {}).items())
    raw = b"".join(b"\0" + b"\x80" * (3 * width) for _ in range(height)) if pixels else b""
    return b"\x89PNG\r\n\x1a\n" + head + text + _chunk(b"IDAT", zlib.compress(raw)) + _chunk(b"IEND", b"")


def replay(p: Any, w: Any) -> None:
    cls = "replay and PNG metadata"
    good = w.root / "replay-source.png"
    proc = p.cli(w.gen(good), w.env)
    if proc.returncode != 0:
        p.record(cls, "a PNG to replay", "", outcome=proc.stderr[-300:], clean=False, why="could not make it")
        return
    from PIL import Image

    with Image.open(good) as image:
        record = json.loads(image.info["answer-trt"])
    size = int(record.get("width") or 32)

    def with_record(**changes: Any) -> bytes:
        return png_bytes(size, size, {"answer-trt": json.dumps({**record, **changes})})

    def a1111(text: str) -> bytes:
        return png_bytes(size, size, {"parameters": text})

    base = "a red circle\nSteps: 2, Sampler: Euler, CFG scale: 7, Seed: 1, Size: 32x32"
    bomb = zlib.compress(b"x" * 200_000_000, 9)
    cases: dict[str, bytes | str] = {
        "record batch null": with_record(batch=None),
        "record batch '2'": with_record(batch="2"),
        "record steps 10**6": with_record(steps=10**6),
        "record seed -1": with_record(seed=-1),
        "record seed 2**70": with_record(seed=2**70),
        "record prompt 5": with_record(prompt=5),
        "record prompt null": with_record(prompt=None),
        "record method 'x'": with_record(method="x"),
        "record guidance_scale 'NaN'": with_record(guidance_scale="NaN"),
        "record seeds {}": with_record(seeds={"a": 1}),
        "record clip_skip 99": with_record(clip_skip=99),
        "record scheduler 'Euler b'": with_record(scheduler="Euler b"),
        "record inner mode with drift_tau": with_record(method="answer", mode="inner", drift_tau=0.5),
        "record not JSON": png_bytes(size, size, {"answer-trt": "{nope"}),
        "record a list": png_bytes(size, size, {"answer-trt": "[1, 2]"}),
        "record 100000 levels deep": png_bytes(size, size, {"answer-trt": "[" * 100_000 + "]" * 100_000}),
        "A1111 Steps: -1": a1111(base.replace("Steps: 2", "Steps: -1")),
        "A1111 Size: 0x0": a1111(base.replace("Size: 32x32", "Size: 0x0")),
        "A1111 CFG scale: nan": a1111(base.replace("CFG scale: 7", "CFG scale: nan")),
        "A1111 Seed: 10**25": a1111(base.replace("Seed: 1", "Seed: " + "9" * 25)),
        "A1111 Sampler: Foo": a1111(base.replace("Sampler: Euler", "Sampler: Foo")),
        "A1111 Clip skip: 99": a1111(base + ", Clip skip: 99"),
        "A1111 Steps: two": a1111(base.replace("Steps: 2", "Steps: two")),
        "header 20000x20000": png_bytes(20000, 20000, {"answer-trt": json.dumps(record)}, pixels=False),
        "zTXt bomb 200 MB": png_bytes(size, size, ztxt={"answer-trt": bomb}),
        "no metadata": png_bytes(size, size),
        "truncated PNG": good.read_bytes()[:200],
        "a JPEG named .png": b"\xff\xd8\xff\xe0" + b"\0" * 100,
        "empty file": b"",
        "a folder": "dir",
        "a FIFO": "fifo",
        "a link to /dev/zero": "zero",
    }
    for name, content in cases.items():
        box = w.sandbox()
        src = box / "in.png"
        if content == "dir":
            src.mkdir()
        elif content == "fifo":
            os.mkfifo(src)
        elif content == "zero":
            src.symlink_to("/dev/zero")
        else:
            assert isinstance(content, bytes)
            src.write_bytes(content)
        args = ["generate", "--from-png", str(src), "--engines", str(w.engines), "-o", str(box / "out.png")]
        p.run_case(cls, name, args, "user", w.env, [w.engines, w.cache], box, timeout=120)
    # a prompt with terminal escapes, from a PNG: refused or drawn, never printed raw
    box = w.sandbox()
    src = box / "in.png"
    src.write_bytes(with_record(prompt="a\x1b]0;owned\x07 \x1b[31mred\x9b circle", steps=1, method="foo"))
    mark = len(p.RESULTS)
    p.run_case(cls, "escapes in a refused record's prompt", ["generate", "--from-png", str(src), "--engines",
                                                              str(w.engines), "-o", str(box / "o.png")],
               "user", w.env, [w.engines, w.cache], box)
    result = p.RESULTS[mark]
    if "\x1b" in result["stderr"] or "\x9b" in result["stderr"]:
        result["clean"], result["why"] = False, "raw escape sequence printed"
    box = w.sandbox()
    p.run_case(cls, "afterwards: replay of a good PNG", ["generate", "--from-png", str(good), "--engines",
                                                         str(w.engines), "-o", str(box / "o.png")], "ok", w.env,
               [w.engines], box)


# --- model folders ----------------------------------------------------------------------


def model_folders(p: Any, w: Any) -> None:
    cls = "model folders"
    from answer_trt.models.source import resolve_model

    tiny = resolve_model("tiny").path

    def edit(rel: str, **changes: Any) -> Any:
        def apply(folder: Path) -> None:
            path = folder / rel
            path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))
        return apply

    def write(rel: str, text: str | bytes) -> Any:
        def apply(folder: Path) -> None:
            path = folder / rel
            path.unlink()
            if isinstance(text, bytes):
                path.write_bytes(text)
            else:
                path.write_text(text)
        return apply

    def link(rel: str, target: str) -> Any:
        def apply(folder: Path) -> None:
            (folder / rel).unlink()
            (folder / rel).symlink_to(target)
        return apply

    def weights(component: str, keep: int) -> Any:
        def apply(folder: Path) -> None:
            for path in (folder / component).glob("*.safetensors"):
                path.write_bytes(path.read_bytes()[:keep])
        return apply

    scheduler = "scheduler/scheduler_config.json"
    cases: dict[str, Any] = {
        "scheduler num_train_timesteps 0": edit(scheduler, num_train_timesteps=0),
        "scheduler num_train_timesteps 1e9": edit(scheduler, num_train_timesteps=10**9),
        "scheduler prediction_type 'x'": edit(scheduler, prediction_type="x"),
        "scheduler beta_schedule 'nope'": edit(scheduler, beta_schedule="nope"),
        "scheduler beta_start -1": edit(scheduler, beta_start=-1.0),
        "scheduler timestep_spacing 'sideways'": edit(scheduler, timestep_spacing="sideways"),
        "scheduler class unknown": edit(scheduler, _class_name="NoSuchScheduler"),
        "model_index.json not JSON": write("model_index.json", "{nope"),
        "model_index.json a list": write("model_index.json", "[1]"),
        "model_index.json a link to /dev/zero": link("model_index.json", "/dev/zero"),
        "model_index.json 70 MB": write("model_index.json", json.dumps({"pad": "x" * 70_000_000})),
        "unet config.json missing": lambda f: (f / "unet" / "config.json").unlink(),
        "unet config a link to /dev/urandom": link("unet/config.json", "/dev/urandom"),
        "unet sample_size -1": edit("unet/config.json", sample_size=-1),
        "vae scaling_factor 0": edit("vae/config.json", scaling_factor=0),
        "vae scaling_factor NaN": edit("vae/config.json", scaling_factor=NAN),
        "tokenizer model_max_length 1e30": edit("tokenizer/tokenizer_config.json", model_max_length=1e30),
        "tokenizer model_max_length -1": edit("tokenizer/tokenizer_config.json", model_max_length=-1),
        "unet weights truncated": weights("unet", 1000),
        "text encoder weights empty": weights("text_encoder", 0),
        "text encoder num_hidden_layers 0": edit("text_encoder/config.json", num_hidden_layers=0),
        "not a model (a folder of text files)": lambda f: [shutil.rmtree(f), f.mkdir(), (f / "a.txt").write_text("x")],
    }
    for name, change in cases.items():
        box = w.sandbox()
        folder = box / "model"
        shutil.copytree(tiny, folder)
        try:
            change(folder)
        except Exception as exc:  # noqa: BLE001
            p.record(cls, name, name, outcome=f"probe could not make it: {exc!r}", clean=False, why="probe")
            continue
        out = box / "engines"
        # model_index.json names the scheduler class (diffusers' rule), and 1e30 is transformers' "no limit"
        expect = "ok|user" if name in ("scheduler class unknown", "tokenizer model_max_length 1e30") else "user"
        watch = [w.engines, w.cache] if expect == "user" else [w.engines]  # a build that runs takes its lock
        p.run_case(cls, name, ["build", "--model", str(folder), "--out", str(out)], expect, w.env,
                   watch, box, owned=lambda path, f=str(folder): path.startswith(f), timeout=300)
        result = p.RESULTS[-1]
        if out.exists() and result["clean"] and expect == "user":
            result["clean"], result["why"] = False, "an engines folder was made"
    box = w.sandbox()
    newline = box / "model\nx"
    shutil.copytree(tiny, newline)
    p.run_case(cls, "a model path with a newline", ["build", "--model", str(newline), "--out", str(box / "e")],
               "ok|user", w.env, [w.engines], box, timeout=300)


# --- LoRA and variants ------------------------------------------------------------------


def loras(p: Any, w: Any) -> None:
    cls = "LoRA and variants"
    from safetensors.torch import load_file, save_file

    from answer_trt.models.source import resolve_model
    from tests.lora_files import make_lora

    tiny = resolve_model("tiny").path
    good = make_lora(tiny, w.root / "lora", seed=1)
    tensors = load_file(good)

    def poisoned(value: float) -> Path:
        changed = dict(tensors)
        key = next(iter(changed))
        changed[key] = changed[key].clone()
        changed[key].view(-1)[0] = value
        path = w.root / f"lora-{value}.safetensors"
        save_file(changed, path)
        return path

    foreign = w.root / "foreign.safetensors"
    save_file({"lora_unet_input_blocks_99_1_proj_in.lora_down.weight": tensors[next(iter(tensors))]}, foreign)
    truncated = w.root / "truncated.safetensors"
    truncated.write_bytes(good.read_bytes()[:500])
    huge_header = w.root / "huge-header.safetensors"
    huge_header.write_bytes(struct.pack("<Q", 2**62) + b"{}")
    empty = w.root / "empty.safetensors"
    empty.write_bytes(b"")
    pickle = w.root / "adapter.ckpt"
    pickle.write_bytes(b"\x80\x04K\x01.")
    fifo = w.root / "fifo.safetensors"
    os.mkfifo(fifo)
    many = [str(good)] * 65
    cases: list[tuple[str, list[str]]] = [
        ("a NaN weight inside", ["--lora", str(poisoned(NAN))]),
        ("an inf weight inside", ["--lora", str(poisoned(INF))]),
        ("another model's keys", ["--lora", str(foreign)]),
        ("truncated", ["--lora", str(truncated)]),
        ("header length 2**62", ["--lora", str(huge_header)]),
        ("empty file", ["--lora", str(empty)]),
        ("a pickle", ["--lora", str(pickle)]),
        ("a FIFO", ["--lora", str(fifo)]),
        ("a folder", ["--lora", str(w.root)]),
        ("missing", ["--lora", str(w.root / "none.safetensors")]),
        ("scale nan", ["--lora", f"{good}:nan"]),
        ("scale 1e309", ["--lora", f"{good}:1e309"]),
        ("scale -inf", ["--lora", f"{good}:-inf"]),
        ("scale 'x'", ["--lora", f"{good}:x"]),
        ("65 LoRAs", [arg for path in many for arg in ("--lora", path)]),
        ("variant fp16 (absent)", ["--variant", "fp16"]),
        ("variant '../x'", ["--variant", "../x"]),
        ("variant with a newline", ["--variant", "a\nb"]),
    ]
    for name, extra in cases:
        box = w.sandbox()
        out = box / "engines"
        p.run_case(cls, name, ["build", "--model", "tiny", "--out", str(out), *extra], "user", w.env,
                   [w.engines, w.cache], box, timeout=300)
        result = p.RESULTS[-1]
        if out.exists() and result["clean"]:
            result["clean"], result["why"] = False, "an engines folder was made"
